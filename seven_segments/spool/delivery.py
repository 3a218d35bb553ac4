"""``seven-segments spool PATH --deliver``: what dead writers left in a spool folder, sent.

``deliver`` has no sender of its own: for each target it makes a buffered engine on the folder (the
client's, with its batching, retry policy, splitting of refused requests and masking of tokens),
which takes the dead writers' files over as any client made on the folder does; then it flushes
and closes that engine, and reads what happened from its counts and its ``on_error`` calls.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterator, List, NamedTuple, NoReturn, Optional, Sequence, TextIO, Tuple

from ..errors import InvalidRequest, SevenSegmentsError
from ..protocol import DEFAULT_TARGET
from ..transport import TransientError, Transport
from .facade import Spool
from .format import RECOVER_CHUNK, Record, is_command
from .report import SpoolFile, inspect

__all__ = ["Delivery", "deliver", "deliver_and_report"]


class Delivery(NamedTuple):
    """What ``deliver`` did."""

    #: Commands the API applied (or had applied already).
    delivered: int
    #: One line per command the API refused for good (confirmed: not sent again), with no secret.
    refused: List[str]
    #: Commands still in the files this run took over (the API was down, or answered "retry").
    kept: int
    #: Why sending stopped (the last request's error), or None.
    failure: Optional[str]
    #: Files of live processes, left to them, and the commands they hold.
    live_files: int
    live_commands: int


class _EveryTarget(Spool):
    """A spool whose ``recover`` takes the files of every target (``deliver --target``)."""

    def recover(self, every_target: bool = True, chunk_size: int = RECOVER_CHUNK) -> Iterator[List[Tuple[Record, bytes]]]:
        """Every dead writer's records, whatever target its files name."""
        return super().recover(True, chunk_size)


class _Outcome(NamedTuple):
    """What one engine made on the folder for one target did."""

    delivered: int
    kept: int
    failure: Optional[str]


def _targets(dead: Sequence[SpoolFile], target: Optional[str], default_target: str) -> List[str]:
    """The targets to deliver to, the default one first (it takes the files that name none)."""
    if target:
        return [target]
    named = sorted({entry.target for entry in dead if entry.target and entry.target != default_target})
    return [default_target, *named]


class _SaidInTheSummary(logging.Filter):
    """Leaves out the engine's warnings while ``deliver`` runs: what they say (commands kept in the
    spool, given up on, refused) is in its summary lines. Errors still pass, and so do the spool's
    own warnings (damaged files), which come from other loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno != logging.WARNING


#: The logger the buffered engine writes to.
_ENGINE_LOGGER = logging.getLogger("seven_segments")


def deliver(
    folder: str,
    target: Optional[str] = None,
    *,
    default_target: str = DEFAULT_TARGET,
    timeout: float = 10.0,
    retry_deadline: float = 30.0,
) -> Delivery:
    """Deliver what the spool at ``folder`` holds in the files of dead writers: each file's commands
    to the target its header names (``default_target`` for a file that names none: version 1), or
    all of them to ``target`` when given. For each target, a buffered engine is made on the folder
    (it takes the files over, as any client does), flushed and closed: bulk requests of at most
    1,000 commands, each retried on passing failures for ``retry_deadline`` seconds, a request
    refused as a whole (400, 413) split until the command at fault is alone. Applied and refused
    commands are confirmed (so removed); the others stay. Records that are no command are skipped
    (``is_command``). Files of live processes are left alone. Raises ``SpoolError`` when ``folder``
    is not a spool folder."""
    before = inspect(folder)  # raises for a missing folder, rather than making one
    live = [entry for entry in before.files if entry.alive]
    dead = [entry for entry in before.files if not entry.alive]
    refused: List[str] = []
    outcomes: List[_Outcome] = []
    quiet = _SaidInTheSummary()
    _ENGINE_LOGGER.addFilter(quiet)
    try:
        for where in _targets(dead, target, default_target):
            waiting = sum(entry.commands for entry in dead if target or (entry.target or default_target) == where)
            outcomes.append(_deliver_to(folder, where, bool(target), timeout, retry_deadline, refused, waiting))
    finally:
        _ENGINE_LOGGER.removeFilter(quiet)
    delivered = sum(outcome.delivered for outcome in outcomes)
    kept = sum(outcome.kept for outcome in outcomes)
    failures = [outcome.failure for outcome in outcomes if outcome.failure is not None]
    failed = "; ".join(failures) if failures else None
    return Delivery(delivered, refused, kept, failed, len(live), sum(entry.commands for entry in live))


def _deliver_to(
    folder: str, where: str, every_target: bool, timeout: float, retry_deadline: float, refused: List[str], waiting: int
) -> _Outcome:
    """Make a buffered engine for ``where`` on the folder, flush it and close it (see ``deliver``);
    lines for the commands it refused are added to ``refused``. When ``where`` is no URL (a file
    naming a target that is none), nothing is taken: its ``waiting`` commands stay."""
    from .._buffered.engine import BufferedEngine
    from .._buffered.limits import Limits

    try:
        transport = _StopsAtAFailure(where, timeout=timeout, gzip=True)
    except ValueError as error:
        return _Outcome(0, waiting, str(error))

    def on_error(error: SevenSegmentsError, commands: List[Dict[str, Any]]) -> None:
        reasons = list(getattr(error, "errors", ()) or ())
        for index, command in enumerate(commands):
            because = [reasons[index]] if len(reasons) == len(commands) else reasons
            refused.append(_refusal(command, because or [str(error)], transport.scrub))

    spool = (_EveryTarget if every_target else Spool)(folder, target=where, accepts=is_command)
    engine = BufferedEngine("", transport, Limits(retry_deadline=retry_deadline, timeout=timeout), on_error, spool=spool)
    try:
        _flush_unless_stopped(engine, transport.stopped)
        # Flushed, or stopped: what was not delivered is let go of, or queued, and stays in the spool.
        engine.close(0)
    finally:
        transport.close()
    stats, figures = engine.stats(), engine.figures()
    kept = spool.close()
    failure = transport.failure or (transport.scrub(figures.last_error) if kept and figures.last_error else None)
    return _Outcome(int(stats["sent"]), kept, failure)


def _flush_unless_stopped(engine: Any, stopped: "threading.Event") -> None:
    """``engine.flush()`` on a thread of its own, until it returns or ``stopped`` is set."""

    def flush() -> None:
        try:
            engine.flush(None)
        finally:
            stopped.set()

    threading.Thread(target=flush, name="seven-segments-deliver", daemon=True).start()
    stopped.wait()


class _StopsAtAFailure(Transport):
    """The engine's transport for ``deliver``: a request that fails for another reason than the
    commands it holds (a redirect, the token refused, 404, an unexpected status) stops the delivery
    to its target, and everything stays in the spool for a run with the right target or token. (A
    client's engine fails such commands for good; a 400 or 413 is still split until the command at
    fault is alone.) Requests after that fail at once, as passing failures, until the engine closes."""

    def __init__(self, target: str, *, timeout: float, gzip: bool) -> None:
        super().__init__(target, timeout=timeout, gzip=gzip)
        #: Set when the delivery stops: a failure, or the flush returned (see ``_flush_unless_stopped``).
        self.stopped = threading.Event()
        #: Why it stopped ("" when it did not fail), safe to quote.
        self.failure = ""

    def post(self, path: str, body: bytes, **options: Any) -> Any:
        """``Transport.post``, turning a failure of the whole request into a stop."""
        if self.failure:
            raise TransientError(self.failure)
        try:
            return super().post(path, body, **options)
        except InvalidRequest as error:
            if error.status in (400, 413):
                raise
            self._stop(error)
        except SevenSegmentsError as error:
            self._stop(error)

    def _stop(self, error: SevenSegmentsError) -> NoReturn:
        self.failure = self.scrub(str(error))  # its str quotes the server's errors
        self.stopped.set()
        raise TransientError(self.failure) from None


def _refusal(command: Dict[str, Any], reasons: Sequence[str], scrub: Any) -> str:
    """One line for a refused command: its name and command_id (never its token), and the reasons."""
    name, command_id = "command", None
    if isinstance(command, dict):
        name = str(command.get("name") or name)
        body = command.get("data")
        if isinstance(body, dict):
            command_id = body.get("command_id")
    label = f"{name} {command_id}" if isinstance(command_id, str) else name
    because = "; ".join(scrub(reason) for reason in reasons) or "no reason given"
    return f"{label} refused: {because}"


def deliver_and_report(
    folder: str,
    target: Optional[str],
    *,
    default_target: str,
    timeout: float,
    retry_deadline: float,
    out: TextIO,
    err: TextIO,
) -> bool:
    """``deliver``, then its lines: each refusal and the failure on ``err``, the summary on ``out``.
    True when everything taken over was delivered."""
    done = deliver(folder, target, default_target=default_target, timeout=timeout, retry_deadline=retry_deadline)
    for line in done.refused:
        err.write(f"spool: {line}\n")
    if done.failure is not None:
        err.write(f"spool: {done.failure}; {done.kept} commands kept in {folder}\n")
    elif done.kept:
        err.write(f"spool: {done.kept} commands not delivered (the API asked to retry them), kept in {folder}\n")
    out.write(f"delivered {done.delivered} commands, {len(done.refused)} refused, {done.kept} kept\n")
    if done.live_files:
        out.write(f"left {done.live_files} files of live processes ({done.live_commands} commands)\n")
    return done.failure is None and not done.kept and not done.refused

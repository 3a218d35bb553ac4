"""One run of ``seven-segments import``: each input read, checked, queued and confirmed in turn."""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from typing import IO, Any, Callable, Dict, List, NamedTuple, Optional

from .confirm import Confirmer, Mark
from .formats import CSV, JSON_LINES, CsvRows, LineError
from .progress import Counts, Progress
from .reading import LOOK_BYTES, InputBroken, LineQueuer, ShortInput
from .sources import STDIN, Source, file_identity, id_prefix
from .state import Checkpoint, StateError, StateFiles

__all__ = ["Options", "ImportJob", "UsageProblem", "EXIT_OK", "EXIT_NOT_ALL_ARRIVED"]

EXIT_OK = 0
#: Some line was rejected (by the checks or the API), or not delivered (the import stopped).
EXIT_NOT_ALL_ARRIVED = 1

#: Rejects shown on standard error per input (all of them go to the rejects file).
SHOWN_REJECTS = 20
#: The commands queued and not yet delivered stay under this many per request in flight, and under
#: about WINDOW_BYTES of their lines (the engine holds a few times that in memory).
WINDOW_PER_REQUEST = 2000
WINDOW_BYTES = 32 << 20
#: Requests in flight by default: the engine's ``DEFAULT_MAX_IN_FLIGHT``, written out so that the
#: command line does not import the engine.
IMPORT_MAX_IN_FLIGHT = 32
#: The token of a dry run without ``$SEVEN_SEGMENTS_TOKEN``: it is never sent; only its length counts
#: (a command's size includes it), that of the usual UUID.
_DRY_RUN_TOKEN = "00000000-0000-0000-0000-000000000000"


def _as_it_is(text: str) -> str:
    return text


class UsageProblem(Exception):
    """A bad argument or state (exit status 2): the message names it."""


class Options(NamedTuple):
    """What ``seven-segments import`` was asked to do (see ``importer.add_arguments``)."""

    inputs: List[str]
    target: str
    timeout: float
    format: Optional[str] = None
    source_id: Optional[str] = None
    state: Optional[str] = None
    restart: bool = False
    dry_run: bool = False
    max_errors: int = 1000
    max_in_flight: int = IMPORT_MAX_IN_FLIGHT
    retry_deadline: float = 300.0
    progress_interval: float = 10.0
    confirm_interval: float = 0.5


def _format_of(name: str, given: Optional[str]) -> str:
    if given is not None:
        return given
    base = name[:-3] if name.endswith(".gz") else name
    return CSV if base.lower().endswith(".csv") else JSON_LINES


class ImportJob:
    """The import of one input."""

    def __init__(self, name: str, options: Options, token: Optional[str], out: IO[str], err: IO[str]) -> None:
        self.options = options
        self.name = name
        self.token = token
        self.out = out
        self.err = err
        self.counts = Counts()
        self.stopped: Optional[str] = None
        self._shown = 0
        self._lock = threading.Lock()
        self._client: Any = None
        self._confirmer: Optional[Confirmer] = None
        self._state: Optional[StateFiles] = None
        self._checkpoint = Checkpoint("")
        self._scrub: Callable[[str], str] = _as_it_is

    @property
    def _label(self) -> str:
        """How reports name the input."""
        return "<stdin>" if self.name == STDIN else self.name

    # Setting up ---------------------------------------------------------------------------------

    def _state_base(self) -> str:
        options = self.options
        if self.name == STDIN:
            assert options.source_id is not None
            return os.path.join(options.state or ".", "stdin-" + options.source_id)
        if options.state is not None:
            return os.path.join(options.state, os.path.basename(self.name))
        return self.name

    def _identity(self) -> str:
        if self.options.source_id is not None:
            return "source:" + self.options.source_id
        try:
            if not stat.S_ISREG(os.stat(self.name).st_mode):  # hashing would read it all: nothing left to import
                raise UsageProblem(
                    f"{self.name} is not a regular file (a pipe?): it cannot be read twice, to hash its content and to "
                    "import it; give --source-id NAME, as for standard input"
                )
            return file_identity(self.name)
        except OSError as error:
            raise UsageProblem(f"{self.name} cannot be read: {error.strerror or error}") from None

    def _prepare_state(self) -> Optional[str]:
        """Lock the input's state, load or reset its checkpoint; the ``command_id`` prefix, or None when
        the checkpoint says the input was imported already."""
        identity = self._identity()
        state = self._state = StateFiles(self._state_base())
        try:
            state.lock()
            checkpoint = None if self.options.restart else state.load()
            if checkpoint is None:
                state.remove()
                state.rejects.clear()
                checkpoint = Checkpoint(identity)
            elif checkpoint.identity != identity:
                what = "--source-id differs from" if identity.startswith("source:") or checkpoint.identity.startswith(
                    "source:") else "its content changed since"
                raise UsageProblem(
                    f"{self._label}: {what} the import its checkpoint {state.checkpoint_path} records: run with "
                    "--restart to import it as a new input (with new command ids: lines imported before would "
                    "be applied again), or with that import's --source-id"
                )
            elif not checkpoint.finished:
                state.rejects.keep_up_to(checkpoint.line)
        except StateError as error:
            raise UsageProblem(str(error)) from None
        except OSError as error:
            where = os.path.dirname(state.checkpoint_path) or "."
            raise UsageProblem(
                f"the state of {self._label} cannot be kept in {where} ({error.strerror or error}); give --state DIR"
            ) from None
        self._checkpoint = checkpoint
        return None if checkpoint.finished else id_prefix(identity)

    def _make_client(self, prefix: str) -> None:
        from ..client import SevenSegments

        options = self.options
        assert self._state is not None and self.token is not None
        confirmer = Confirmer(None, self._state, self._checkpoint, prefix, self._reject, options.confirm_interval)
        window = WINDOW_PER_REQUEST * options.max_in_flight
        client = SevenSegments(
            self.token, target=options.target, buffered=True, timeout=options.timeout,
            retry_deadline=options.retry_deadline, max_in_flight=options.max_in_flight,
            # The reader waits for room only every LOOK_BYTES read, and every line it queues counts
            # at least a byte of them: what it queues between two looks always fits.
            max_queue_size=4 * window + LOOK_BYTES, max_queue_bytes=1 << 30, shutdown_timeout=5.0,
            on_error=confirmer.on_error, gzip=True,
        )
        confirmer._client = client
        self._client, self._confirmer = client, confirmer
        self._scrub = client._transport.scrub

    # Rejects ------------------------------------------------------------------------------------

    def _reject(self, line: int, reason: str, details: Dict[str, Any]) -> None:
        """Report a rejected line: on standard error (the first few), in the rejects file."""
        reason = self._scrub(reason)
        with self._lock:
            if self._state is not None:
                self._state.rejects.write({"file": self._label, "line": line, "reason": reason, **details})
            if self._shown < SHOWN_REJECTS:
                self._shown += 1
                self.err.write(f"import: {self._label}:{line}: {reason}\n")
                if self._shown == SHOWN_REJECTS:
                    where = self._state.rejects.path if self._state is not None else "the summary"
                    self.err.write(f"import: {self._label}: further rejected lines are only counted in {where}\n")

    # Running ------------------------------------------------------------------------------------

    def run(self) -> int:
        """Import the input; the exit status of its result."""
        options = self.options
        if self.name == STDIN and not options.dry_run and options.source_id is None:
            raise UsageProblem(
                "standard input (-) needs --source-id NAME: it names the input's lines in their command ids, so "
                "that a second run skips what the first delivered"
            )
        try:
            return self._open_and_run()
        finally:
            if self._state is not None:
                self._state.rejects.close()
                self._state.unlock()

    def _open_and_run(self) -> int:
        prefix = "dry-run"
        if not self.options.dry_run:
            found = self._prepare_state()
            if found is None:
                return self._already_done()
            prefix = found
            self._make_client(prefix)
        else:
            from ..client import SevenSegments

            self._client = SevenSegments(self.token or _DRY_RUN_TOKEN, enabled=False)
        try:
            source = Source(self.name)
        except OSError as error:
            raise UsageProblem(f"{self._label} cannot be read: {error.strerror or error}") from None
        try:
            return self._run(source, prefix)
        finally:
            source.close()

    def _already_done(self) -> int:
        checkpoint = self._checkpoint
        self.counts = Counts(checkpoint.line, checkpoint.delivered + checkpoint.rejected, checkpoint.delivered,
                             checkpoint.rejected, checkpoint.blank)
        self.out.write(f"{self._label}: imported already (its checkpoint says so); --restart sends it again, with the "
                       "same command ids: the API applies none of its lines twice\n")
        self._summary(0.0)
        return EXIT_OK if checkpoint.rejected == 0 else EXIT_NOT_ALL_ARRIVED

    def _run(self, source: Source, prefix: str) -> int:
        start = self._checkpoint.line
        progress = Progress(self._label, source.size, source.position, self.options.progress_interval,
                            stream=self.err, dry_run=self.options.dry_run, start_line=start)
        progress.update(self._current(Mark(start, 0, 0, 0)))  # the counts the run starts from
        confirmer = self._confirmer
        if confirmer is not None:
            confirmer.start()
        interrupted = True
        queuer = LineQueuer(
            self._client, None if confirmer is None else confirmer.own_id, self._reject,
            look=lambda mark, size: self._look(mark, size, progress), too_many=self._too_many,
        )
        try:
            try:
                if _format_of(self.name, self.options.format) == CSV:
                    last = queuer.csv_rows(self._csv_rows(source), start, prefix)
                else:
                    last = queuer.json_lines(source.stream, start, prefix)
            except InputBroken as broken:
                self.stopped = f"it cannot be read past line {broken.mark.line}: {broken.reason}"
                last = broken.mark
            except ShortInput as short:
                raise UsageProblem(
                    f"{self._label} has {short.lines} lines, fewer than the {start} its checkpoint confirms: it is "
                    "not the input that import read; use --restart, or give the same input"
                ) from None
            if confirmer is not None:
                confirmer.mark = last
            interrupted = False
        finally:
            if confirmer is not None:
                confirmer.stop(wait=not interrupted)
                if interrupted:
                    self._close_interrupted(confirmer)
        if confirmer is not None:
            finished = self.stopped is None and not confirmer.failed
            confirmer.confirm(finished=finished)
            self._client.close()
            if confirmer.failure is not None:
                line, why = confirmer.failure
                self.stopped = f"line {line} and others were not delivered ({why})"
        self._current(last)
        progress.close()
        self._summary(progress.elapsed)
        if self.stopped is not None:
            return EXIT_NOT_ALL_ARRIVED
        return EXIT_OK if self.counts.rejected == 0 else EXIT_NOT_ALL_ARRIVED

    def _close_interrupted(self, confirmer: Confirmer) -> None:
        """Stop sending at once: what is not confirmed is sent again by the next run, so the client's
        warning that it was "lost" would mislead."""
        library = logging.getLogger("seven_segments")
        level = library.level
        library.setLevel(logging.CRITICAL)
        try:
            self._client.close(timeout=1.0)
        finally:
            library.setLevel(level)
        self.err.write(f"import: {self._label}: the next run resumes after line {confirmer.checkpoint.line}\n")

    def _current(self, mark: Mark) -> Counts:
        """The counts of the input: what the checkpoint counted before this run, and this run's."""
        base = self._checkpoint
        confirmer = self._confirmer
        if confirmer is None:
            refused, delivered = 0, 0
        else:
            refused = confirmer.refused
            stats = self._client.stats()
            delivered = base.delivered + stats["sent"]
            if confirmer.checkpoint.line >= mark.line:  # all confirmed: the checkpoint's exact counts
                delivered = confirmer.checkpoint.delivered
        self.counts = Counts(
            read=mark.line, accepted=base.delivered + base.rejected + mark.accepted, delivered=delivered,
            rejected=base.rejected + mark.rejected + refused, blank=base.blank + mark.blank,
        )
        return self.counts

    def _look(self, mark: Mark, size: int, progress: Progress) -> bool:
        """Every ``reading.LOOK_BYTES`` read: publish the mark, show progress, wait for room in the queue; False to stop."""
        confirmer = self._confirmer
        progress.update(self._current(mark))
        if confirmer is None:
            return True
        confirmer.mark = mark
        # As many lines as keep the requests in flight busy, and no more than WINDOW_BYTES of them.
        line_size = size / max(1, mark.line - self._checkpoint.line)
        window = max(16, min(WINDOW_PER_REQUEST * self.options.max_in_flight, int(WINDOW_BYTES / line_size)))
        while True:
            if confirmer.failed:
                return False
            if self._checkpoint.rejected + mark.rejected + confirmer.refused > self.options.max_errors:
                self.stopped = f"more than --max-errors {self.options.max_errors} lines were rejected"
                return False
            if self._client.stats()["pending"] <= window:
                return True
            time.sleep(0.005)
            progress.update(self._current(mark))

    def _too_many(self, rejected: int) -> bool:
        refused = 0 if self._confirmer is None else self._confirmer.refused
        if self._checkpoint.rejected + rejected + refused > self.options.max_errors:
            self.stopped = f"more than --max-errors {self.options.max_errors} lines were rejected"
            return True
        return False

    def _csv_rows(self, source: Source) -> CsvRows:
        try:
            return CsvRows(source.stream)
        except LineError as error:
            raise UsageProblem(f"{self._label}: {error}") from None

    def _summary(self, seconds: float) -> None:
        counts = self.counts
        verb = "checked" if self.options.dry_run else "delivered"
        done = counts.accepted if self.options.dry_run else counts.delivered
        text = f"{self._label}: {counts.read} lines, {done} {verb}, {counts.rejected} rejected"
        if counts.blank:
            text += f", {counts.blank} blank"
        if counts.rejected and self._state is not None:
            text += f" (see {self._state.rejects.path})"
        if seconds > 0:
            read = counts.read - self._checkpoint.line
            text += f"; {seconds:.1f} s, {read / seconds:,.0f} lines/s"
        self.out.write(text + "\n")
        if self.stopped is not None:
            if "--max-errors" in self.stopped:
                advice = "raise --max-errors (or fix the input) and run again to resume"
            elif self.stopped.startswith("it cannot be read"):
                advice = "the lines before it were delivered or rejected"
            else:
                advice = "run the same command again to resume"
            self.out.write(f"{self._label}: stopped: {self.stopped}; {advice}\n")


def run(options: Options, token: Optional[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Import every input in turn; the exit status (the worst of theirs)."""
    if not options.dry_run and not token:
        raise UsageProblem("no company token: set $SEVEN_SEGMENTS_TOKEN (import takes it from there only)")
    if options.source_id is not None and len(options.inputs) > 1:
        raise UsageProblem("--source-id names one input: give one input with it")
    if options.inputs.count(STDIN) > 1:
        raise UsageProblem("standard input (-) can be read once only")
    if options.state is not None and not options.dry_run:
        names = [os.path.basename(name) for name in options.inputs if name != STDIN]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise UsageProblem(f"--state would keep the state of several inputs named {twice[0]!r} in one place")
        if not os.path.isdir(options.state):
            raise UsageProblem(f"--state {options.state!r} is not a folder")
    status = EXIT_OK
    for name in options.inputs:
        job = ImportJob(name, options, token, out, err)
        status = max(status, job.run())
        if job.stopped is not None and job._confirmer is not None and job._confirmer.failed:
            break  # the API is not taking commands: the next inputs would fail too
    return status

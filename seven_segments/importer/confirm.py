"""Which lines of an import are confirmed: delivered or rejected, every one up to a line.

The buffered client does not say when one command arrived, but ``flush()`` waits for everything
queued before it. So a thread of its own (:class:`Confirmer`) repeatedly notes the last line the
reader has handed over, flushes, and, when nothing failed but refusals, moves the checkpoint to that
line; meanwhile the reader keeps queueing, so the requests in flight never run dry. A command the
API refuses for good arrives through ``on_error`` (:meth:`Confirmer.on_error`) and is a rejected
line; any other failure (the API unreachable past the retry deadline, a bad token) stops the
import and leaves the checkpoint before it: the next run sends those lines again, and their
``command_id`` keeps the API from applying any of them twice.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from ..cli import TOKEN_ENV
from ..errors import AuthenticationError, InvalidRequest, SevenSegmentsError
from ..process_hooks import keep_signals_off_this_thread
from .state import Checkpoint, StateFiles

__all__ = ["Mark", "Confirmer", "Rejected"]

#: How long ``flush`` may return before ``on_error`` heard of what failed (the pump reports right after).
_REPORT_WAIT = 30.0

#: A refusal naming this field (the company token, which the client adds) is no fault of the line.
_TOKEN_FIELD = "company_id"

#: ``reject(line, reason, details)``: how the import reports a rejected line.
Rejected = Callable[[int, str, Dict[str, Any]], None]


class Mark(NamedTuple):
    """The reader's progress: every line up to ``line`` was queued, rejected or blank; counts of this run."""

    line: int
    accepted: int
    rejected: int
    blank: int


class _CommandLines:
    """Which line of the source a command is: the number in a ``command_id`` the import made
    (``prefix-N``), or the line whose own ``command_id`` the reader queued (until it is confirmed)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix + "-"
        self._lock = threading.Lock()
        self._own_ids: Dict[str, int] = {}
        self._own_order: Deque[Tuple[int, str]] = deque()

    def own(self, line: int, command_id: str) -> None:
        """``line`` goes with its own ``command_id``."""
        with self._lock:
            self._own_ids[command_id] = line
            self._own_order.append((line, command_id))

    def line_of(self, command_id: Any) -> int:
        """The line ``command_id`` was made for; 0 when none is known."""
        if isinstance(command_id, str):
            if command_id.startswith(self._prefix):
                try:
                    return int(command_id[len(self._prefix):])
                except ValueError:
                    pass
            with self._lock:
                line = self._own_ids.get(command_id)
            if line is not None:
                return line
        return 0

    def confirmed(self, line: int) -> None:
        """Every line up to ``line`` is confirmed: forget their own ids."""
        with self._lock:
            while self._own_order and self._own_order[0][0] <= line:
                self._own_ids.pop(self._own_order.popleft()[1], None)


class _Heard:
    """What ``on_error`` heard (on the client's worker thread) and confirming has not yet accounted for:
    the lines the API refused, how many commands it reported, and the first line that failed otherwise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refused_lines: List[int] = []
        #: Lines refused in all, and those a saved checkpoint counts.
        self.refused = 0
        self.refused_confirmed = 0
        #: Commands ``on_error`` heard of.
        self.reported = 0
        #: The first line that failed other than by a refusal, and why.
        self.failure: Optional[Tuple[int, str]] = None

    def refuse(self, line: int) -> None:
        """The API refused ``line`` for good."""
        with self._lock:
            self._refused_lines.append(line)
            self.refused += 1

    def fail(self, line: int, why: str) -> None:
        """``line`` failed other than by a refusal (the first such line is kept)."""
        with self._lock:
            if self.failure is None or line < self.failure[0]:
                self.failure = (line, why)

    def count(self, commands: int) -> None:
        """``on_error`` heard of this many more commands."""
        with self._lock:
            self.reported += commands

    def settle(self, line: int) -> bool:
        """Account for the refusals up to ``line``; False (nothing settled) when a line up to it failed."""
        with self._lock:
            if self.failure is not None and self.failure[0] <= line:
                return False
            self.refused_confirmed += sum(1 for refused in self._refused_lines if refused <= line)
            self._refused_lines = [refused for refused in self._refused_lines if refused > line]
            return True


class Confirmer:
    """Moves the checkpoint of one source forward while the reader queues its lines."""

    def __init__(
        self,
        client: Any,
        state: StateFiles,
        base: Checkpoint,
        prefix: str,
        reject: Rejected,
        interval: float,
    ) -> None:
        self._client = client
        self._state = state
        self._base = base
        self._reject = reject
        self._interval = interval
        self._lines = _CommandLines(prefix)
        self._heard = _Heard()
        #: Set by the reader (a whole tuple: read and replaced atomically).
        self.mark = Mark(base.line, 0, 0, 0)
        #: The last checkpoint saved (owned by whoever runs ``confirm``: the thread, then the closer).
        self.checkpoint = base
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # The reader's side --------------------------------------------------------------------------

    def own_id(self, line: int, command_id: str) -> None:
        """The reader is about to queue ``line`` with its own ``command_id``."""
        self._lines.own(line, command_id)

    @property
    def failed(self) -> bool:
        """True once a line failed other than by a refusal: the reader stops."""
        return self._heard.failure is not None

    @property
    def failure(self) -> Optional[Tuple[int, str]]:
        """The first line that failed other than by a refusal, and why; None while none did."""
        return self._heard.failure

    @property
    def refused(self) -> int:
        """How many lines the API refused in this run."""
        return self._heard.refused

    # on_error (the client's worker thread) ------------------------------------------------------

    def on_error(self, error: SevenSegmentsError, commands: List[Dict[str, Any]]) -> None:
        """The client's ``on_error``: refusals become rejected lines, other failures stop the import."""
        refusal = isinstance(error, InvalidRequest) and not isinstance(error, AuthenticationError)
        reasons = list(error.errors) if refusal and len(error.errors) == len(commands) else None
        for index, command in enumerate(commands):
            data = command.get("data") or {}
            line = self._lines.line_of(data.get("command_id"))
            reason = reasons[index] if reasons is not None else str(error)
            if refusal and _TOKEN_FIELD in reason:  # the token, not the line: every line would be refused
                self._heard.fail(line, f"the API refused the company token: {reason}; is ${TOKEN_ENV} right?")
            elif refusal:
                self._reject(line, f"refused by the API: {reason}", {"command": command})
                self._heard.refuse(line)
            else:
                self._heard.fail(line, f"{type(error).__name__}: {error}")
        self._heard.count(len(commands))

    # Confirming -------------------------------------------------------------------------------

    def start(self) -> None:
        """Confirm in the background until ``stop``."""
        self._thread = threading.Thread(target=self._run, name="seven-segments-import-confirm", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Let the thread end after its round (the caller then runs the last round itself); with
        ``wait=False`` (interrupted), do not wait for that round: whatever it saves is true still."""
        self._stop.set()
        if wait and self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        keep_signals_off_this_thread()
        while not self._stop.wait(self._interval):
            if self.mark.line > self.checkpoint.line and not self.failed:
                self.confirm(finished=False)

    def _wait_for_reports(self) -> None:
        """``flush`` settles its waiters just before ``on_error`` hears of the failures: wait for it."""
        stats = self._client.stats()
        lost = stats["failed"] + stats["dropped"]
        end = time.monotonic() + _REPORT_WAIT
        while self._heard.reported < lost and time.monotonic() < end:
            time.sleep(0.005)

    def confirm(self, finished: bool) -> bool:
        """Flush, then save the checkpoint at the reader's mark taken before; True when it moved.

        ``finished``: the mark is the source's last line (the checkpoint then says so)."""
        mark = self.mark
        delivered_all = self._client.flush()
        if not delivered_all:
            self._wait_for_reports()
        if not self._heard.settle(mark.line):
            return False
        self._lines.confirmed(mark.line)
        refused_confirmed = self._heard.refused_confirmed
        base = self._base
        checkpoint = Checkpoint(
            base.identity,
            line=mark.line,
            delivered=base.delivered + mark.accepted - refused_confirmed,
            rejected=base.rejected + mark.rejected + refused_confirmed,
            blank=base.blank + mark.blank,
            finished=finished,
        )
        self._state.save(checkpoint)
        self.checkpoint = checkpoint
        return True

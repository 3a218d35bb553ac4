"""Telling the user about losses: ``on_error`` in bounded chunks, rate-limited warnings.

Failed commands are handed over as the bytes they were queued as, and decoded to dicts only
chunk by chunk (at most ``CHUNK`` commands per ``on_error`` call), so reporting 200,000 commands at
exit never holds more than one chunk of dicts. Chunks wait in a queue that the pump drains, and
that a closer which gave up on the pump drains too: each chunk is taken by exactly one of them.
Commands dropped at the call wait in a queue of their own, which a running pump reports a chunk at
a time, spending at most ``DROP_REPORT_SHARE`` of its time on it (``drain_paced``): a full queue that
drops commands as fast as a caller makes them must not leave the pump no time to deliver. Meanwhile
the drops wait, bounded (``settlement.Drops``); past the bound, the caller that drops reports a chunk
itself.
The commands passed to ``on_error`` never carry the company token. The commands one ``bulk`` answer
refused are reported together too (``refused``), each with its own reason.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import deque
from typing import Any, Deque, Dict, Optional, Sequence, Tuple

from ..clock import Clock
from ..errors import InvalidRequest, SevenSegmentsError
from ..protocol import PATH_BULK
from ..types import ErrorCallback

__all__ = ["Reporter", "CHUNK", "DROP_REPORT_SHARE", "DROP_WARNING_INTERVAL", "refusal_summary"]

logger = logging.getLogger("seven_segments")

#: Commands per ``on_error`` call, at most.
CHUNK = 1000
#: The share of a running pump's time spent passing dropped commands to ``on_error``, at most.
DROP_REPORT_SHARE = 0.25
#: A warning about dropped commands is logged at most this often (seconds).
DROP_WARNING_INTERVAL = 10.0

Items = Sequence[bytes]

#: A refusal's reason when the server gave none.
NO_REASON = "refused, with no reason given"
#: A warning about refused commands quotes this many of their distinct reasons, each cut to
#: ``_REASON_SHOWN`` characters.
_REASONS_SHOWN = 3
_REASON_SHOWN = 200


def refusal_summary(reasons: Sequence[str]) -> str:
    """The first few distinct ``reasons`` of refused commands, each with how many commands it refused
    (one line for a warning, however many commands there were)."""
    counts: Dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    shown = [
        '"' + (reason if len(reason) <= _REASON_SHOWN else reason[: _REASON_SHOWN - 3] + "...") + '"'
        + f" ({count} command{'s' if count > 1 else ''})"
        for reason, count in list(counts.items())[:_REASONS_SHOWN]
    ]
    others = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {others} other reason{'s' if others > 1 else ''}" if others else "")


def _decode(item: bytes) -> Dict[str, Any]:
    """The command for ``on_error``; one that cannot be decoded (bytes that are no command, a bug)
    is still reported, as ``{"name": None, "data": None, "undecodable": "<error type>"}``, never skipping
    the others of its chunk, and never with its bytes (they may hold the token)."""
    try:
        command: Dict[str, Any] = json.loads(item)
        command["data"].pop("company_id", None)
        return command
    except Exception as error:
        return {"name": None, "data": None, "undecodable": type(error).__name__}


class Reporter:
    """``on_error`` calls and loss warnings of one engine."""

    def __init__(self, on_error: Optional[ErrorCallback], clock: Clock) -> None:
        self.on_error = on_error
        self._clock = clock
        self._chunks: Deque[Tuple[SevenSegmentsError, Items]] = deque()
        #: Chunks of commands dropped at the call (see the module), and when a running pump reports
        #: the next one.
        self._drop_chunks: Deque[Tuple[SevenSegmentsError, Items]] = deque()
        self.drops_due_at = -math.inf
        self._drop_warning_at = -float("inf")
        self._drops_unwarned: Dict[str, int] = {}
        #: ``on_error`` calls under way (on the pump, or on a closer helping it).
        self.busy = 0
        #: Guards ``busy`` and the drop warnings (written by the pump and by callers that drop).
        self._lock = threading.Lock()

    def failed(self, error: SevenSegmentsError, items: Items) -> None:
        """Queue ``items`` (encoded commands) for ``on_error`` with ``error``, in chunks."""
        self._queue(self._chunks, error, items)

    def dropped_commands(self, error: SevenSegmentsError, items: Items) -> int:
        """Queue commands dropped at the call for ``on_error`` with ``error``, in chunks (see
        ``drain_paced``); how many chunks."""
        return self._queue(self._drop_chunks, error, items)

    def _queue(self, chunks: "Deque[Tuple[SevenSegmentsError, Items]]", error: SevenSegmentsError, items: Items) -> int:
        if self.on_error is None or not items:
            return 0
        for start in range(0, len(items), CHUNK):
            chunks.append((error, items[start : start + CHUNK]))
        return -(-len(items) // CHUNK)

    @property
    def drops_waiting(self) -> bool:
        """Chunks of dropped commands wait for ``on_error``."""
        return bool(self._drop_chunks)

    def refused(self, items: Sequence[bytes], reasons: Sequence[str], status: int = 200) -> None:
        """Queue commands the server refused for good for ``on_error``, in chunks: each with an
        ``InvalidRequest`` (``status``: 200 for a ``bulk`` answer's refusals, 400 or 413 for commands
        refused alone) whose ``errors[i]`` is the reason for the chunk's command ``i``."""
        if self.on_error is None or not items:
            return
        for start in range(0, len(items), CHUNK):
            part = reasons[start : start + CHUNK]
            what = "the command was refused" if len(part) == 1 else f"{len(part)} commands were refused"
            error = InvalidRequest(f"{PATH_BULK}: {what}", status=status, errors=part)
            self._chunks.append((error, items[start : start + CHUNK]))

    def drain(self, until: Optional[float] = None, drop_chunks: float = math.inf, failures: bool = True) -> None:
        """Call ``on_error`` for every queued chunk of failures (none unless ``failures``), then for at
        most ``drop_chunks`` chunks of dropped commands (outside every lock; its exceptions are logged),
        taking none after ``until`` (on this clock)."""
        if failures:
            self._report(self._chunks, math.inf, until)
        self._report(self._drop_chunks, drop_chunks, until)

    def drain_paced(self) -> None:
        """A running pump's turn: every chunk of failures, and one of dropped commands when it is due,
        so that at most ``DROP_REPORT_SHARE`` of the pump's time goes to them."""
        self._report(self._chunks, math.inf, None)
        started = self._clock()
        if not self._drop_chunks or started < self.drops_due_at:
            return
        self._report(self._drop_chunks, 1, None)
        ended = self._clock()
        self.drops_due_at = ended + (ended - started) * (1 - DROP_REPORT_SHARE) / DROP_REPORT_SHARE

    def _report(self, chunks: "Deque[Tuple[SevenSegmentsError, Items]]", most: float, until: Optional[float]) -> None:
        callback = self.on_error
        while most > 0 and (until is None or self._clock() < until):
            try:
                error, items = chunks.popleft()
            except IndexError:
                return
            most -= 1
            if callback is None:
                continue
            with self._lock:
                self.busy += 1
            try:
                callback(error, [_decode(item) for item in items])  # decoded here only: what is reported
            except BaseException:  # even SystemExit: delivery must live on
                logger.exception("seven_segments: the on_error callback raised")
            finally:
                with self._lock:
                    self.busy -= 1

    def clock(self) -> float:
        """Now, on the engine's clock."""
        return self._clock()

    def abandon(self) -> int:
        """Forget the chunks not reported yet (``on_error`` did not keep up); how many commands they held."""
        count = 0
        for chunks in (self._chunks, self._drop_chunks):
            while True:
                try:
                    count += len(chunks.popleft()[1])
                except IndexError:
                    break
        return count

    @property
    def pending(self) -> bool:
        """True while chunks wait for ``on_error`` or are being reported."""
        return bool(self._chunks) or bool(self._drop_chunks) or self.busy > 0

    def dropped(self, count: int, reason: str) -> None:
        """Warn about ``count`` commands dropped for ``reason`` (rate-limited: at most one warning per
        ``DROP_WARNING_INTERVAL``, giving each reason its own count). From the pump or a caller."""
        now = self._clock()
        with self._lock:
            self._drops_unwarned[reason] = self._drops_unwarned.get(reason, 0) + count
            if now - self._drop_warning_at < DROP_WARNING_INTERVAL:
                return
            self._drop_warning_at = now
        self.flush_drop_warnings()

    def flush_drop_warnings(self) -> None:
        """Log the drops not warned about yet, each with its own reason (at close, or when due)."""
        with self._lock:
            unwarned, self._drops_unwarned = self._drops_unwarned, {}
        for reason, count in unwarned.items():
            if count:
                logger.warning("seven_segments: dropped %d commands: %s", count, reason)

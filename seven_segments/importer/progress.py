"""Progress of an import on standard error: a ``tqdm`` bar on a terminal when ``tqdm`` is installed,
else one plain line every ``interval`` seconds; and the final summary of each input."""

from __future__ import annotations

import importlib
import sys
import time
from typing import IO, Any, Callable, Optional, Tuple

__all__ = ["Progress", "Counts"]


class Counts:
    """What one input's import did so far (this run and the runs it resumes)."""

    __slots__ = ("read", "accepted", "delivered", "rejected", "blank")

    def __init__(self, read: int = 0, accepted: int = 0, delivered: int = 0, rejected: int = 0, blank: int = 0) -> None:
        self.read = read
        self.accepted = accepted
        self.delivered = delivered
        self.rejected = rejected
        self.blank = blank


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Shows one input's progress; ``update`` is cheap to call often (it acts at most every 0.1 s)."""

    def __init__(
        self, label: str, size: Optional[int], position: Callable[[], Optional[int]], interval: float,
        stream: IO[str] = sys.stderr, dry_run: bool = False, start_line: int = 0,
    ) -> None:
        self._start_line = start_line
        self._start_accepted = -1
        self._start_delivered = 0
        self._label = label
        self._size = size
        self._position = position
        self._interval = interval
        self._stream = stream
        self._dry_run = dry_run
        self._started = time.monotonic()
        self._next_line = self._started + interval
        self._next_check = 0.0
        self._first_position = position() or 0
        #: Where and when this run's own reading began (the lines a resumed run skips are read first,
        #: fast: counted in, they made the time left look almost none).
        self._work_from: Optional[Tuple[int, float]] = None
        self._bar: Any = None
        if _is_terminal(stream):
            try:
                tqdm = importlib.import_module("tqdm")  # optional: a bar only when it is installed
            except ImportError:
                pass
            else:
                self._bar = tqdm.tqdm(
                    total=size, initial=self._first_position, unit="B", unit_scale=True, desc=label, file=stream,
                    leave=False, dynamic_ncols=True,
                )

    def update(self, counts: Counts, force: bool = False) -> None:
        """Show ``counts`` if it is time to."""
        if self._start_accepted < 0:  # the first counts are those the run started with
            self._start_accepted = counts.accepted
            self._start_delivered = counts.delivered
        now = time.monotonic()
        if now < self._next_check and not force:
            return
        self._next_check = now + 0.1
        position = self._position()
        if self._work_from is None and counts.read > self._start_line and position is not None:
            self._work_from = (position, now)
        if self._bar is not None:
            if position is not None:
                self._bar.update(position - self._bar.n)
            self._bar.set_postfix_str(self._counts_text(counts), refresh=True)
            return
        if now < self._next_line and not force:
            return
        self._next_line = now + self._interval
        self._stream.write(f"import: {self._label}: {self._counts_text(counts)}{self._rates(counts, position, now)}\n")
        self._stream.flush()

    def _counts_text(self, counts: Counts) -> str:
        text = f"read {counts.read}, accepted {counts.accepted}, "
        if not self._dry_run:
            text += f"delivered {counts.delivered}, "
        return text + f"rejected {counts.rejected}"

    def _rates(self, counts: Counts, position: Optional[int], now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        read = counts.read - self._start_line
        text = f", {read / elapsed:,.0f} lines/s" if read > 0 else ""
        if position is not None and self._size and self._work_from is not None and self._size > self._work_from[0]:
            # The share of this run's work done: bytes read, discounted by what is not delivered yet.
            first, since = self._work_from
            share = (position - first) / (self._size - first)
            if not self._dry_run:
                accepted = counts.accepted - self._start_accepted
                share *= (counts.delivered - self._start_delivered) / accepted if accepted > 0 else 1.0
            if share > 0:
                taken = max(now - since, 1e-9)
                text += f", {100.0 * position / self._size:.0f}% read, about {_duration(taken * (1 - share) / share)} left"
        return text

    def close(self) -> None:
        """Remove the bar (the summary follows)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def elapsed(self) -> float:
        """Seconds since this input started."""
        return time.monotonic() - self._started


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

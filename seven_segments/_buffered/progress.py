"""How delivery is going: how long the oldest command has waited, and how the last requests ended.

Written by the pump only (never by a caller: ``track`` pays nothing for it), read by ``stats()`` and
``health()`` from any thread. The pump numbers the commands it takes in order; here it notes, for each
step that took some, the first number it gave and when (one mark per ``resolution`` at most, so that
a long outage holds a few thousand marks, not one per command). The oldest command not settled yet
was taken at the time of the last mark at or before its number: its age is known to within
``resolution``, never under-estimated.

Commands not taken yet (still in the incoming queue) arrived after the pump last saw that queue
empty (``drained_at``); while the pump is alive that is a moment ago, and when it is stuck or died the
age grows from there. ``inf`` means the pump went idle with nothing queued: the first command queued
then starts a pump, which notes the moment (``Core.start``).
"""

from __future__ import annotations

import bisect
import math
import time
from collections import deque
from typing import Any, Deque, Sequence, Tuple

__all__ = ["Progress", "MARK_RESOLUTION"]

#: The coarsest a take-time mark may be (seconds); finer for short ``stall_warning_after``.
MARK_RESOLUTION = 1.0


class Progress:
    """The pump's record of delivery progress (one per engine core)."""

    def __init__(self, stall_warning_after: float) -> None:
        self.resolution = min(MARK_RESOLUTION, stall_warning_after / 10)
        #: (first sequence number taken in a step, when), oldest first; pruned as commands settle.
        self._marks: Deque[Tuple[int, float]] = deque()
        #: When the pump last saw the incoming queue empty (``inf``: idle, nothing queued since).
        self.drained_at = math.inf
        #: When the oldest command let go of into the spool in an outage was taken (``inf``: none).
        self.let_go_since = math.inf
        #: Requests in a row that ended without an answer, and the last such error (scrubbed).
        self.failed_in_a_row = 0
        self.last_error = ""
        #: When the pump last saw commands dropped at the call.
        self.dropped_at = -math.inf
        #: When commands last failed for good (refused, or not delivered in time), and why (scrubbed).
        self.failed_at = -math.inf
        self.last_failure = ""
        #: Answered requests in a row whose every command was refused (a token the API does not know).
        self.refused_in_a_row = 0

    # The pump -----------------------------------------------------------------------------------

    def taken(self, first_seq: int, now: float) -> None:
        """Commands numbered from ``first_seq`` on were taken at ``now``."""
        marks = self._marks
        if marks and now - marks[-1][1] < self.resolution:
            return  # counted from the previous mark: at most ``resolution`` older than they are
        marks.append((first_seq, now))

    def taken_at(self, seq: int) -> float:
        """When command ``seq`` (not settled yet) was taken, to within ``resolution`` (``inf``: unknown)."""
        marks = list(self._marks)
        index = bisect.bisect_right([first for first, _ in marks], seq) - 1
        return marks[index][1] if index >= 0 else math.inf

    def settled_before(self, first_unsettled: float) -> None:
        """Every command numbered below ``first_unsettled`` has settled: forget their marks."""
        marks = self._marks
        if first_unsettled == math.inf:
            marks.clear()
            return
        while len(marks) > 1 and marks[1][0] <= first_unsettled:
            marks.popleft()

    def let_go(self, seqs: Sequence[int]) -> None:
        """Commands let go of into the spool (an outage): they still wait, from when they were taken."""
        self.let_go_since = min(self.let_go_since, self.taken_at(min(seqs)))

    def answered(self, all_refused: bool = False) -> None:
        """A request was answered (``all_refused``: refusing every command it carried)."""
        self.failed_in_a_row = 0
        self.refused_in_a_row = self.refused_in_a_row + 1 if all_refused else 0

    def failed_for_good(self, now: float, why: str) -> None:
        """Commands failed for good at ``now`` (``why``: safe to quote; "" to keep the last reason)."""
        self.failed_at = now
        if why:
            self.last_failure = why

    def failed(self, error: str) -> None:
        """A request ended without an answer (``error``: why, safe to quote)."""
        self.failed_in_a_row += 1
        self.last_error = error

    # Readers (any thread) -----------------------------------------------------------------------

    def oldest_age(self, now: float, held: int, waiting: int, head: Any) -> float:
        """Seconds the oldest command not delivered has waited (0 when none).

        ``held``: commands the pump holds (waiting, retrying, in flight); ``waiting``: commands in the
        incoming queue, not taken yet; ``head``: that queue's first item, if any (a command tuple
        carries its timestamp: a second bound, the closer one unless the caller gave an older
        timestamp, as a backfill does).
        """
        oldest = self.let_go_since
        if held:
            try:
                oldest = min(oldest, self._marks[0][1])
            except IndexError:  # settled meanwhile
                pass
        if waiting > 0 and self.drained_at < math.inf:
            arrived = self.drained_at
            if type(head) is tuple and len(head) >= 6:
                waited = time.time() - head[4]
                if 0 <= waited < now - arrived:
                    arrived = now - waited
            oldest = min(oldest, arrived)
        return 0.0 if oldest == math.inf else max(0.0, now - oldest)

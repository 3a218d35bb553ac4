"""Watching delivery: how long the oldest command has waited, and the stall warnings.

Read from any thread (``stats()``, ``health()``) and looked at by the pump once per step.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Deque

from .limits import Limits
from .settlement import Settlement
from .stall import Say, StallAlarm
from .store import Store

__all__ = ["Watch"]

logger = logging.getLogger("seven_segments")


class Watch:
    """The age of the oldest command not delivered, the commands waiting, and the stall alarm."""

    def __init__(self, incoming: "Deque[Any]", settlement: Settlement, store: Store, limits: Limits) -> None:
        self._incoming = incoming
        self._settlement = settlement
        self._store = store
        self._stall_warning_after = limits.stall_warning_after
        self.stall = StallAlarm(limits.stall_warning_after)

    def oldest_pending(self, now: float) -> float:
        """Seconds the oldest command not delivered yet has waited (0 when none); from any thread."""
        incoming = self._incoming
        settlement = self._settlement
        waiting = len(incoming) - settlement.counts.tickets_queued
        head = None
        if waiting > 0:
            try:
                head = incoming[0]
            except IndexError:
                waiting = 0
        return settlement.progress.oldest_age(now, settlement.budget.held, waiting, head)

    def waiting(self) -> int:
        """Commands not delivered yet: held, queued, and kept on disk in an outage."""
        settlement = self._settlement
        counts = settlement.counts
        return settlement.budget.held + max(0, len(self._incoming) - counts.tickets_queued) + counts.kept

    def look(self, now: float, first_unsettled: Callable[[], float]) -> float:
        """Forget the marks of what settled; warn when delivery stalls or resumes (see ``StallAlarm``).
        Returns how long the pump may sleep before it must look again."""
        progress = self._settlement.progress
        held = self._settlement.budget.held
        if progress.let_go_since < math.inf and not self._store.has_kept and not self._store.reading_back:
            progress.let_go_since = math.inf
        progress.settled_before(first_unsettled() if held else math.inf)
        age = self.oldest_pending(now)
        said = self.stall.look(now, age)
        if said is not None:
            self._say(said, now, age)
        if not held and not self._incoming:
            return math.inf  # only commands kept on disk wait: they need no pump awake
        return self.stall.next_look(now, age)

    def _say(self, said: Say, now: float, age: float) -> None:
        if said is Say.RESUMED:
            logger.warning(
                "seven_segments: delivery resumed after a stall of %.1f s; %d commands wait, the oldest for %.1f s",
                now - self.stall.since,
                self.waiting(),
                age,
            )
            return
        logger.warning(
            "seven_segments: delivery is %sstalled: %d commands wait, the oldest for %.1f s (stall_warning_after=%g s);"
            " last error: %s",
            "still " if said is Say.STILL else "",
            self.waiting(),
            age,
            self._stall_warning_after,
            self._settlement.progress.last_error or "none (no request failed)",
        )

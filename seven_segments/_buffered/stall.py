"""When to say that delivery is stalled, and that it resumed: pure decisions over plain values.

Delivery is stalled once the oldest command not delivered has waited more than ``stall_warning_after``
seconds. The pump looks at each step (and wakes for it: see :meth:`StallAlarm.next_look`): the first
look past the bound says so, then at most once per ``repeat`` while it lasts (while the oldest is past
the bound: a backlog under it is no stall to repeat); it has resumed once the
oldest waits less than half the bound (so that an age hovering at the bound does not say so at every
step), which is said once.
"""

from __future__ import annotations

import enum
import math
from typing import Optional

__all__ = ["StallAlarm", "Stall", "Say", "REPEAT_SECONDS"]

#: While delivery stays stalled, the warning is repeated at most this often (seconds).
REPEAT_SECONDS = 60.0


class Stall(enum.Enum):
    """Whether delivery is stalled."""

    FLOWING = "flowing"
    STALLED = "stalled"


class Say(enum.Enum):
    """What a look finds worth a log line."""

    STALLED = "stalled"  # it just stalled
    STILL = "still"  # still stalled, a while after the last line
    RESUMED = "resumed"  # it resumed


class StallAlarm:
    """The stall state of one engine (touched by its pump only)."""

    def __init__(self, after: float, repeat: float = REPEAT_SECONDS) -> None:
        self.after = after
        self.repeat = repeat
        self.state = Stall.FLOWING
        self.since = 0.0  # when it stalled
        self._said_at = -math.inf

    def look(self, now: float, age: float) -> Optional[Say]:
        """The oldest command not delivered has waited ``age`` seconds at ``now``: what to say, if anything."""
        if self.state is Stall.FLOWING:
            if age <= self.after:
                return None
            self.state = Stall.STALLED
            self.since = now - (age - self.after)
            self._said_at = now
            return Say.STALLED
        if age < self.after / 2:
            self.state = Stall.FLOWING
            return Say.RESUMED
        if age > self.after and now - self._said_at >= self.repeat:  # under the bound: no "still stalled"
            self._said_at = now
            return Say.STILL
        return None

    def next_look(self, now: float, age: float) -> float:
        """Seconds until a look could say something new, the pump not woken meanwhile (``inf``: never)."""
        if self.state is Stall.STALLED:
            return max(0.0, self._said_at + self.repeat - now)
        if age <= 0:
            return math.inf  # nothing waits: the next command taken wakes the pump anyway
        return max(0.0, self.after - age) + min(0.01, self.after / 100)  # just past the bound

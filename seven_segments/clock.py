"""A monotonic clock that test-time freezing cannot stop.

``freezegun`` replaces ``time.monotonic`` and ``time.perf_counter`` wherever it finds them; an
application that tests itself under ``freeze_time`` would then see our deadlines and flush timers never
expire, and ``flush()``/``close()`` would hang. Deadlines and timers here use the clock below instead;
event timestamps still use ``time.time()`` and so follow a frozen clock, as users expect.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["Clock", "monotonic"]

#: A function returning seconds on a monotonic scale.
Clock = Callable[[], float]


def _make_monotonic() -> Clock:
    if hasattr(time, "clock_gettime") and hasattr(time, "CLOCK_MONOTONIC"):
        clock_gettime = time.clock_gettime
        clock_id = time.CLOCK_MONOTONIC

        def monotonic() -> float:
            return clock_gettime(clock_id)

        return monotonic
    # Held in a closure, where freezegun's module scan does not look.
    real_monotonic = time.monotonic
    return lambda: real_monotonic()


#: Seconds on a monotonic scale, real even under ``freezegun.freeze_time``.
monotonic: Clock = _make_monotonic()

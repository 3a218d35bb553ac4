"""The retry policy of buffered delivery, in one place.

- A request that fails in passing (connection error, timeout, 429, 500/502/503/504) puts its whole
  batch back in line, not before the backoff (tenacity's ``wait_exponential`` plus ``wait_random``
  jitter, see ``transport.Backoff``) and never before ``Retry-After``; meanwhile the in-flight window
  shrinks to one request (``window.py``).
- Commands answered ``retry`` (or missing from ``results``) go back in line at once when the same
  answer settled others, after a backoff when it settled none.
- A batch whose next try would start more than ``retry_deadline`` after its first one fails with
  ``ServiceUnavailable``; so does a ``Retry-After`` that reaches past that deadline.
- 413 cuts the batch in halves, sent at once; a single command answered 413, and every other
  refusal (400, 401, 403, 404, unexpected statuses), fails for good.
- At close, nothing is retried past the close deadline: what is still in line then is given up.

The pump asks; it never sleeps inside a retry: it schedules the batch and sleeps until the earliest
moment it knows.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from ..transport import Backoff
from .batching import Batch

__all__ = ["RetryPolicy", "BACKOFF_INITIAL", "BACKOFF_MAX"]

#: Exponential backoff: the first retry after about this many seconds, at most this far apart.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 30.0


class RetryPolicy:
    """When a batch is tried again, or given up on."""

    def __init__(self, retry_deadline: float, backoff: Optional[Callable[[int], float]] = None) -> None:
        self.retry_deadline = retry_deadline
        #: ``backoff(n)``: seconds to wait after the ``n``-th failure in a row.
        self.backoff = backoff if backoff is not None else Backoff(BACKOFF_INITIAL, BACKOFF_MAX).for_attempt

    def after_transient(self, batch: Batch, now: float, retry_after: Optional[float]) -> Optional[float]:
        """The batch failed as a whole, in passing: when to send it again, or None to give up."""
        delay = self.backoff(batch.attempts + 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        again = now + delay
        if again >= batch.since + self.retry_deadline:
            return None
        return again

    def after_retry_results(self, batch: Batch, now: float, progress: bool) -> Optional[Tuple[int, float]]:
        """Some commands were answered ``retry``: ``(attempts, not_before)`` for them, or None to give up."""
        if now - batch.since >= self.retry_deadline:
            return None
        if progress:
            return 0, now
        attempts = batch.attempts + 1
        again = now + self.backoff(attempts)
        if again >= batch.since + self.retry_deadline:
            return None
        return attempts, again

"""The buffered pump's questions to the client's one retry policy (``seven_segments/retrying.py``).

The rules are stated there, once: the backoff (0.1 s initial, 30 s at most, with jitter), never
sooner than ``Retry-After``, commands answered ``retry`` sent again at once after progress, no try
past ``retry_deadline`` after a batch's first one (nor for a ``Retry-After`` beyond it). Here a batch's
history is put to those strategies as tenacity's call state.

The pump asks; it never sleeps inside a retry: it schedules the batch and sleeps until the earliest
moment it knows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Tuple

from ..transport import TransientError
from .batching import Batch

if TYPE_CHECKING:  # retrying.py loads tenacity: imported at the first retry, not with the client
    from ..retrying import Policy

__all__ = ["RetryPolicy", "BACKOFF_INITIAL", "BACKOFF_MAX"]

#: Exponential backoff: the first retry after about this many seconds, at most this far apart
#: (the same numbers as ``retrying.BACKOFF_INITIAL``/``BACKOFF_MAX``, kept here for the importers of
#: this module, which must not load tenacity).
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 30.0


class RetryPolicy:
    """When a batch is tried again, or given up on (``retrying.batch_policy``, asked by the pump)."""

    def __init__(self, retry_deadline: float, backoff: Optional[Callable[[int], float]] = None) -> None:
        self.retry_deadline = retry_deadline
        #: ``backoff(n)``: seconds to wait after the ``n``-th failure in a row (None: the default backoff).
        self.backoff = backoff
        self._policy: Optional[Policy] = None

    def _ask(
        self, batch: Batch, now: float, failure: Optional[BaseException] = None, answer: object = None
    ) -> Optional[float]:
        """When the batch may be sent again after ``failure`` or ``answer`` (at ``now``, its
        ``attempts`` + 1 failures in a row), or None to give up."""
        from .. import retrying  # tenacity, loaded at the first retry

        if self._policy is None:
            self._policy = retrying.batch_policy(self.retry_deadline, self.backoff)
        return self._policy.next_try(retrying.batch_state(batch.attempts + 1, batch.since, now, failure=failure, answer=answer))

    def after_transient(self, batch: Batch, now: float, retry_after: Optional[float]) -> Optional[float]:
        """The batch failed as a whole, in passing: when to send it again, or None to give up."""
        return self._ask(batch, now, failure=TransientError("failed in passing", retry_after=retry_after))

    def after_retry_results(self, batch: Batch, now: float, progress: bool) -> Optional[Tuple[int, float]]:
        """Some commands were answered ``retry``: ``(attempts, not_before)`` for them, or None to give up."""
        from ..retrying import RetryResults

        again = self._ask(batch, now, answer=RetryResults(progress))
        if again is None:
            return None
        return (0 if progress else batch.attempts + 1), again

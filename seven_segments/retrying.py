"""The client's one retry policy, written as tenacity's strategies.

Every retry the client makes (the buffered pump's batches, blocking calls such as ``track`` with
``blocking=True``, ``get_html`` and ``export``) is decided by a ``wait`` and a ``stop`` computed from
the attempt and its answer (a ``tenacity.RetryCallState``):

- A passing failure (connection error, timeout, 429, 500/502/503/504: a ``TransientError``) is tried
  again after an exponential backoff with jitter (``backoff``: tenacity's ``wait_exponential`` plus
  ``wait_random``; the pump's starts at ``BACKOFF_INITIAL``, 0.1 s, and waits at most
  ``BACKOFF_MAX``, 30 s), and never sooner than the answer's ``Retry-After`` (``wait_retry_after``).
- Commands answered ``retry`` (or missing from ``results``) go back at once when the same answer
  settled others (it made progress), after the backoff when it settled none
  (``wait_none_after_progress``).
- No try is made that would start at or past the deadline (``stop_before_deadline``): the batch or
  the call gives up with ``ServiceUnavailable`` instead; so does a ``Retry-After`` that reaches past
  the deadline. The deadline is read anew at every decision, so a close can bring it forward. For a
  batch it is ``retry_deadline`` after its first try; for a blocking call, the call's deadline.
- A close that must end on time (``cut_attempts_at_deadline``) cuts each attempt to the time left,
  and makes none with less than ``MIN_ATTEMPT_SECONDS`` left (its answer could not arrive).
- Elsewhere, not timing: a passing failure also shrinks the pump's in-flight window to one request
  (``_buffered/window.py``); 413 cuts a batch in halves, sent at once, and a single command answered
  413, like every other refusal (400, 401, 403, 404, unexpected statuses), fails for good
  (``_buffered/answers.py``, ``_buffered/pump.py``); at close nothing is retried past the close
  deadline: what is still in line then is given up (``_buffered/pump.py``).

The two users ask the same ``Policy``. The pump never sleeps: it describes a batch as a call state
(``batch_state``: the failures in a row, the first try's moment, the answer and when it came, on
its own, fake-able clock) and asks ``Policy.next_try``: a moment, or None to give up
(``_buffered/retry.py``). A blocking call runs tenacity's ``Retrying`` loop with the same strategies
(``retry_blocking``, behind ``transport.call_with_retries``).

This module imports tenacity, so it is itself imported only when something must be retried: a
client whose calls succeed at once never loads either.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Optional, TypeVar

import tenacity
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .clock import Clock
from .errors import ServiceUnavailable
from .transport import TransientError

__all__ = [
    "BACKOFF_INITIAL", "BACKOFF_MAX", "MIN_ATTEMPT_SECONDS", "Policy", "RetryResults", "backoff", "batch_policy",
    "batch_state", "retry_blocking", "stop_before_deadline", "wait_none_after_progress", "wait_once",
    "wait_per_attempt", "wait_retry_after",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: The pump's exponential backoff: the first retry after about this many seconds, at most this far apart.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 30.0
#: A retry with less time than this before its deadline is not made (its answer could not arrive).
MIN_ATTEMPT_SECONDS = 0.05

#: A moment read from a call state (on the caller's clock): when it is now, or the deadline.
Moment = Callable[[tenacity.RetryCallState], float]


def backoff(initial: float, maximum: float) -> wait_base:
    """Exponential backoff with jitter: about ``initial`` seconds after the first failure, doubling
    after each one, at most ``maximum``, plus up to ``initial`` seconds at random (so that clients
    failing together do not come back together)."""
    return tenacity.wait_exponential(multiplier=initial, max=maximum) + tenacity.wait_random(0, initial)


class wait_per_attempt(wait_base):
    """A backoff given as a function: ``seconds(n)`` after the ``n``-th failure in a row."""

    def __init__(self, seconds: Callable[[int], float]) -> None:
        self.seconds = seconds

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return float(self.seconds(retry_state.attempt_number))


def retry_after(retry_state: tenacity.RetryCallState) -> Optional[float]:
    """The ``Retry-After`` (seconds) of the failure that ended the attempt; None when it named none."""
    outcome = retry_state.outcome
    if outcome is None or not outcome.failed:
        return None
    error = outcome.exception()
    return error.retry_after if isinstance(error, TransientError) else None


class wait_retry_after(wait_base):
    """``floor``'s wait, or the answer's ``Retry-After`` when that is longer: never sooner than asked."""

    def __init__(self, floor: wait_base) -> None:
        self.floor = floor

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        wait = float(self.floor(retry_state))
        asked = retry_after(retry_state)
        return wait if asked is None else max(wait, asked)


class RetryResults(NamedTuple):
    """An answer that asked to retry some commands: ``progress`` when it settled others."""

    progress: bool


def made_progress(retry_state: tenacity.RetryCallState) -> bool:
    """Whether the attempt's answer settled some commands (a result with a true ``progress``)."""
    outcome = retry_state.outcome
    if outcome is None or outcome.failed:
        return False
    return getattr(outcome.result(), "progress", False) is True


class wait_none_after_progress(wait_base):
    """No wait after an answer that made progress (what is left goes back at once); ``inner``'s otherwise."""

    def __init__(self, inner: wait_base) -> None:
        self.inner = inner

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return 0.0 if made_progress(retry_state) else float(self.inner(retry_state))


class wait_once(wait_base):
    """``inner``'s wait, drawn once per attempt: the stop and the sleep then agree on a jittered wait
    (tenacity asks them in either order, depending on its version). One per loop or thread."""

    def __init__(self, inner: wait_base) -> None:
        self.inner = inner
        # The state itself is kept, not its id(): a new state could take a freed one's id.
        self._state: Optional[tenacity.RetryCallState] = None
        self._attempt = 0
        self._wait = 0.0

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        if retry_state is not self._state or retry_state.attempt_number != self._attempt:
            self._wait = float(self.inner(retry_state))
            self._state, self._attempt = retry_state, retry_state.attempt_number
        return self._wait


class stop_before_deadline(stop_base):
    """Stop when the next try would start at or past ``deadline``: ``now`` plus ``wait``. Both moments
    are read anew at every decision (a close brings a deadline forward)."""

    def __init__(self, deadline: Moment, wait: wait_base, now: Moment) -> None:
        self.deadline = deadline
        self.wait = wait
        self.now = now

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.now(retry_state) + self.wait(retry_state) >= self.deadline(retry_state)


class Policy:
    """A wait and a stop that agree (the stop counts the very wait the sleep takes)."""

    def __init__(self, wait: wait_base, deadline: Moment, now: Moment) -> None:
        self.now = now
        #: tenacity's ``wait`` and ``stop``, ready for ``tenacity.Retrying``.
        self.wait = wait_once(wait)
        self.stop: stop_base = stop_before_deadline(deadline, self.wait, now)

    def next_try(self, retry_state: tenacity.RetryCallState) -> Optional[float]:
        """When the next try may start (on the ``now`` scale), or None to give up: the pump's question."""
        if self.stop(retry_state):
            return None
        return self.now(retry_state) + self.wait(retry_state)


def answered_at(retry_state: tenacity.RetryCallState) -> float:
    """When the attempt's answer came (``outcome_timestamp``): the moment a batch's decision is made."""
    moment = retry_state.outcome_timestamp
    return retry_state.start_time if moment is None else moment


def after_first_try(seconds: float) -> Moment:
    """The deadline ``seconds`` after the first try (``start_time``)."""
    return lambda retry_state: retry_state.start_time + seconds


def batch_policy(retry_deadline: float, seconds: Optional[Callable[[int], float]] = None) -> Policy:
    """The pump's policy: ``seconds(n)`` after the ``n``-th failure in a row (default: ``backoff``
    from 0.1 to 30 s), never before ``Retry-After``, none after progress, until ``retry_deadline``
    after the batch's first try."""
    floor = backoff(BACKOFF_INITIAL, BACKOFF_MAX) if seconds is None else wait_per_attempt(seconds)
    return Policy(wait_none_after_progress(wait_retry_after(floor)), after_first_try(retry_deadline), answered_at)


#: The loop a batch's state nominally belongs to (the pump has none: it never sleeps here).
_NO_LOOP = tenacity.Retrying()


def batch_state(
    failures: int, first_try: float, now: float, *, failure: Optional[BaseException] = None, answer: Any = None
) -> tenacity.RetryCallState:
    """A batch's history as tenacity's call state: ``failures`` in a row (this one included), its
    first try at ``first_try``, and this attempt's ``failure`` (raised) or ``answer`` (returned),
    which came at ``now``; all moments on the pump's clock."""
    retry_state = tenacity.RetryCallState(_NO_LOOP, None, (), {})
    retry_state.attempt_number = failures
    retry_state.start_time = first_try
    outcome = tenacity.Future(failures)
    if failure is not None:
        outcome.set_exception(failure)
    else:
        outcome.set_result(answer)
    retry_state.outcome, retry_state.outcome_timestamp = outcome, now
    return retry_state


def attempt_timeout(timeout: float, left: float, cut_attempts_at_deadline: bool) -> Optional[float]:
    """The time an attempt may take with ``left`` seconds before the deadline: ``timeout``, or with
    ``cut_attempts_at_deadline`` what is left of it; None when too little is left to try."""
    if not cut_attempts_at_deadline:
        return timeout
    if left < MIN_ATTEMPT_SECONDS:
        return None
    return min(timeout, left)


def retry_blocking(
    attempt: Callable[[float], T],
    failure: TransientError,
    *,
    what: str,
    deadline: Callable[[], float],
    timeout: float,
    wait: wait_base,
    sleep: Callable[[float], None],
    clock: Clock,
    started: float,
    on_retry: Optional[Callable[[TransientError, float], None]] = None,
    cut_attempts_at_deadline: bool = False,
) -> T:
    """``transport.call_with_retries`` after its first attempt (at ``started``) ended in ``failure``:
    tenacity's ``Retrying`` loop, waiting ``wait`` (never before ``Retry-After``) until ``deadline()``;
    then ``ServiceUnavailable`` (the last status and errors)."""
    policy = Policy(wait_retry_after(wait), lambda _: deadline(), lambda _: clock())
    replay, last, tries = [failure], [failure], [0]

    def one_attempt() -> T:
        tries[0] += 1
        if replay:
            raise replay.pop()  # the first attempt, made by the caller, replayed for tenacity's bookkeeping
        allowed = attempt_timeout(timeout, deadline() - clock(), cut_attempts_at_deadline)
        if allowed is None:  # the deadline came forward during the wait (a close): no hurried try
            raise last[0]
        try:
            return attempt(allowed)
        except TransientError as error:
            last[0] = error
            raise

    def before_sleep(retry_state: tenacity.RetryCallState) -> None:
        delay = policy.wait(retry_state)
        logger.debug("%s; retrying in %.3g s (attempt %d)", last[0].reason, delay, retry_state.attempt_number)
        if on_retry is not None:
            on_retry(last[0], delay)

    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type(TransientError), stop=policy.stop,
                                 wait=policy.wait, sleep=sleep, before_sleep=before_sleep, reraise=True)
    try:
        return retrying(one_attempt)
    except TransientError as error:
        reason = error.reason if error.reason.startswith(what) else f"{what}: {error.reason}"
        gave_up = ServiceUnavailable(
            f"{reason}; gave up after {tries[0]} attempts in {clock() - started:.1f} s", status=error.status,
            errors=error.errors,
        )
    raise gave_up  # outside the except block: no chain to the attempts' exceptions

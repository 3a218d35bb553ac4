"""The one retry policy (seven_segments/retrying.py): its strategies, the pump's question and the
blocking loop, on a fake clock; no socket, no thread, no sleep."""

from __future__ import annotations

from typing import Any, List, Optional

import pytest
import tenacity

from seven_segments._buffered.batching import Batch
from seven_segments._buffered.retry import RetryPolicy
from seven_segments.errors import InvalidRequest, ServiceUnavailable
from seven_segments.retrying import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    MIN_ATTEMPT_SECONDS,
    Policy,
    RetryResults,
    backoff,
    batch_policy,
    batch_state,
    stop_before_deadline,
    wait_none_after_progress,
    wait_once,
    wait_per_attempt,
    wait_retry_after,
)
from seven_segments.transport import Backoff, TransientError, call_with_retries


class FakeClock:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failed(attempt: int, retry_after: Optional[float] = None, now: float = 0.0) -> tenacity.RetryCallState:
    return batch_state(attempt, 0.0, now, failure=TransientError("HTTP 503", status=503, retry_after=retry_after))


# -- the strategies ---------------------------------------------------------------------------------


def test_the_backoff_doubles_from_its_initial_wait_up_to_its_maximum_with_jitter_on_top() -> None:
    wait = backoff(0.1, 1.0)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)]:
        for _ in range(20):
            assert base <= wait(failed(attempt)) <= base + 0.1


def test_the_wait_is_never_shorter_than_the_answers_retry_after() -> None:
    wait = wait_retry_after(wait_per_attempt(lambda attempt: 1.0))
    assert wait(failed(1)) == 1.0
    assert wait(failed(1, retry_after=0.5)) == 1.0
    assert wait(failed(1, retry_after=7.0)) == 7.0


def test_an_answer_that_made_progress_is_followed_at_once_one_that_made_none_after_the_backoff() -> None:
    wait = wait_none_after_progress(wait_per_attempt(lambda attempt: 2.0 * attempt))
    assert wait(batch_state(3, 0.0, 1.0, answer=RetryResults(progress=True))) == 0.0
    assert wait(batch_state(3, 0.0, 1.0, answer=RetryResults(progress=False))) == 6.0
    assert wait(failed(3)) == 6.0


def test_the_strategies_combine_with_tenacitys_own() -> None:
    wait = wait_per_attempt(lambda attempt: 1.0) + tenacity.wait_fixed(0.5)
    assert wait(failed(1)) == 1.5
    clock = FakeClock()
    stop = stop_before_deadline(lambda _: 200.0, wait, lambda _: clock()) | tenacity.stop_after_attempt(3)
    assert not stop(failed(1)) and stop(failed(3))
    clock.now = 198.5
    assert stop(failed(1))


def test_the_deadline_is_read_at_every_decision_so_a_close_brings_it_forward() -> None:
    clock, deadline = FakeClock(), [200.0]
    stop = stop_before_deadline(lambda _: deadline[0], wait_per_attempt(lambda attempt: 1.0), lambda _: clock())
    assert not stop(failed(1))
    deadline[0] = 100.5  # a close
    assert stop(failed(1))


def test_a_jittered_wait_is_drawn_once_per_attempt_so_the_stop_and_the_sleep_agree() -> None:
    draws = iter([1.0, 5.0, 2.0])
    wait = wait_once(wait_per_attempt(lambda attempt: next(draws)))
    first = failed(1)
    assert wait(first) == wait(first) == 1.0
    first.attempt_number = 2
    assert wait(first) == 5.0
    assert wait(failed(2)) == 2.0  # another state, another draw


# -- the pump's question ----------------------------------------------------------------------------


def test_the_pump_sends_again_after_the_backoff_and_gives_up_when_the_next_try_would_pass_the_deadline() -> None:
    policy = batch_policy(10.0, lambda attempt: 0.5 * attempt)
    assert policy.next_try(batch_state(2, 0.0, 1.0, failure=TransientError("503"))) == 2.0
    assert policy.next_try(batch_state(1, 0.0, 9.4, failure=TransientError("503"))) == 9.9
    assert policy.next_try(batch_state(1, 0.0, 9.5, failure=TransientError("503"))) is None


def test_a_retry_after_past_the_deadline_gives_up_at_once() -> None:
    policy = batch_policy(10.0, lambda attempt: 0.1)
    assert policy.next_try(batch_state(1, 0.0, 1.0, failure=TransientError("429", retry_after=8.0))) == 9.0
    assert policy.next_try(batch_state(1, 0.0, 1.0, failure=TransientError("429", retry_after=9.0))) is None


def test_retry_results_with_progress_go_back_at_once_until_the_deadline() -> None:
    policy = batch_policy(10.0, lambda attempt: 3.0)
    assert policy.next_try(batch_state(1, 0.0, 9.9, answer=RetryResults(True))) == 9.9
    assert policy.next_try(batch_state(1, 0.0, 10.0, answer=RetryResults(True))) is None
    assert policy.next_try(batch_state(1, 0.0, 6.9, answer=RetryResults(False))) == 9.9
    assert policy.next_try(batch_state(1, 0.0, 7.0, answer=RetryResults(False))) is None


def test_the_pumps_default_backoff_starts_at_a_tenth_of_a_second_and_stops_growing_at_thirty() -> None:
    assert (BACKOFF_INITIAL, BACKOFF_MAX) == (0.1, 30.0)
    policy = RetryPolicy(retry_deadline=3600.0)
    first = policy.after_transient(Batch(range(1, 2), [b"x"], since=0.0), now=1.0, retry_after=None)
    late = policy.after_transient(Batch(range(1, 2), [b"x"], since=0.0, attempts=40), now=1.0, retry_after=None)
    assert first is not None and 1.1 <= first <= 1.2
    assert late is not None and 31.0 <= late <= 31.1


def test_the_pumps_retry_policy_counts_attempts_again_from_zero_after_progress() -> None:
    policy = RetryPolicy(retry_deadline=10.0, backoff=lambda attempt: 1.0)
    batch = Batch(range(1, 3), [b"x", b"y"], since=0.0, attempts=4)
    assert policy.after_retry_results(batch, now=2.0, progress=True) == (0, 2.0)
    assert policy.after_retry_results(batch, now=2.0, progress=False) == (5, 3.0)


# -- blocking calls: tenacity's loop ----------------------------------------------------------------


class Script:
    """An attempt that fails as told, then succeeds; it notes the time each attempt was given."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.timeouts: List[float] = []

    def __call__(self, timeout: float) -> str:
        self.timeouts.append(timeout)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def call(script: Script, clock: FakeClock, deadline: float, **options: Any) -> str:
    return call_with_retries(
        script, what="bulk", deadline=lambda: deadline, timeout=2.0, backoff=Backoff(0.1, 1.0), sleep=clock.sleep,
        clock=clock, **options,
    )


def test_a_call_that_succeeds_at_once_never_sleeps() -> None:
    clock = FakeClock()
    assert call(Script(), clock, deadline=105.0) == "ok" and clock.slept == []


def test_a_blocking_call_retries_passing_failures_after_the_backoff_and_never_before_retry_after() -> None:
    clock, noted = FakeClock(), []
    script = Script(TransientError("bulk: HTTP 503"), TransientError("bulk: HTTP 429", retry_after=2.5))
    assert call(script, clock, deadline=110.0, on_retry=lambda error, delay: noted.append(delay)) == "ok"
    assert 0.1 <= clock.slept[0] <= 0.2 and clock.slept[1] == 2.5
    assert noted == clock.slept  # on_retry hears the wait the loop sleeps


def test_a_blocking_call_gives_up_when_the_next_try_would_start_past_the_deadline() -> None:
    clock = FakeClock()
    script = Script(*[TransientError("bulk: HTTP 503", status=503, errors=["down"]) for _ in range(100)])
    with pytest.raises(ServiceUnavailable) as raised:
        call(script, clock, deadline=103.0)
    assert 103.0 - 1.1 <= clock.now < 103.0  # stopped when the next wait (at most 1.1 s) would pass it
    assert raised.value.status == 503 and raised.value.errors == ("down",)
    assert f"gave up after {len(script.timeouts)} attempts" in str(raised.value) and raised.value.__context__ is None


def test_a_blocking_call_gives_up_at_once_on_a_retry_after_past_its_deadline() -> None:
    clock = FakeClock()
    with pytest.raises(ServiceUnavailable, match="gave up after 1 attempts"):
        call(Script(TransientError("bulk: HTTP 429", retry_after=10.0)), clock, deadline=105.0)
    assert clock.slept == []


def test_other_errors_pass_through() -> None:
    with pytest.raises(InvalidRequest):
        call(Script(TransientError("bulk: HTTP 503"), InvalidRequest("bulk: refused")), FakeClock(), deadline=105.0)


def test_at_a_close_attempts_are_cut_to_the_time_left_and_none_is_made_with_too_little_left() -> None:
    clock, deadline = FakeClock(), [101.0]
    script = Script(TransientError("bulk: HTTP 503"), TransientError("bulk: HTTP 503"))

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if len(clock.slept) == 2:
            deadline[0] = clock.now + MIN_ATTEMPT_SECONDS / 2  # the close came forward during the wait

    with pytest.raises(ServiceUnavailable):
        call_with_retries(
            script, what="bulk", deadline=lambda: deadline[0], timeout=2.0, backoff=Backoff(0.1, 0.1), sleep=sleep,
            clock=clock, cut_attempts_at_deadline=True,
        )
    assert script.timeouts[0] == pytest.approx(1.0)  # cut to the second left, not the 2 s timeout
    assert 0.8 <= script.timeouts[1] <= 0.9
    assert len(script.timeouts) == 2  # no hurried third try with a few milliseconds left


def test_a_policy_asks_its_wait_once_for_the_stop_and_the_answer() -> None:
    clock, draws = FakeClock(), iter([3.0, 50.0])
    policy = Policy(wait_per_attempt(lambda attempt: next(draws)), lambda _: 110.0, lambda _: clock())
    assert policy.next_try(failed(1)) == 103.0

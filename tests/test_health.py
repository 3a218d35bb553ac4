"""How long the oldest command waits, the stall warning, ``health()``, and a background thread that dies.

The decisions are driven with a fake clock (the pump step by step, as in _buffered/test_delivery.py); one
real-time test runs a client against the local server with short settings.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, List

import pytest

from seven_segments import Health, SevenSegments
from seven_segments._buffered import engine as engine_module
from seven_segments._buffered.progress import Progress
from seven_segments._buffered.retry import RetryPolicy
from seven_segments._buffered.stall import REPEAT_SECONDS, Say, StallAlarm
from seven_segments.health import FAILING_REQUESTS, Figures, assess
from seven_segments.testing import LocalServer
from seven_segments.transport import TransientError

from .conftest import TOKEN, wait_until
from ._buffered.test_delivery import Harness


def _stall_lines(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if "stalled" in r.getMessage() or "resumed" in r.getMessage()]


# The stall alarm --------------------------------------------------------------------------------


def test_the_alarm_says_a_stall_once_then_once_a_minute_and_its_end_once() -> None:
    alarm = StallAlarm(300.0)
    assert alarm.look(0.0, 299.0) is None
    assert alarm.next_look(0.0, 299.0) == pytest.approx(1.0, abs=0.02)
    assert alarm.look(1.5, 300.5) is Say.STALLED
    assert alarm.since == pytest.approx(1.0)
    assert [alarm.look(1.5 + t, 300.5 + t) for t in (1, 30, 59)] == [None, None, None]
    assert alarm.next_look(30.0, 329.0) == pytest.approx(1.5 + REPEAT_SECONDS - 30.0)
    assert alarm.look(61.5, 360.5) is Say.STILL
    assert alarm.look(62.0, 200.0) is None  # still more than half the bound: not over yet
    # A backlog that stays under the bound (delivery flowing, slowly) is not said to be "still stalled"
    # once a minute, as health() says "ok" meanwhile; the repeat is kept for when it passes the bound.
    assert alarm.look(62.0 + REPEAT_SECONDS, 200.0) is None
    assert alarm.look(63.0 + REPEAT_SECONDS, 301.0) is Say.STILL
    assert alarm.look(63.0, 0.0) is Say.RESUMED
    assert alarm.look(64.0, 0.0) is None and alarm.next_look(64.0, 0.0) == math.inf


# How old the oldest command is --------------------------------------------------------------------


def test_progress_counts_from_when_a_command_was_taken_never_less() -> None:
    progress = Progress(stall_warning_after=300.0)  # marks at most one a second
    progress.taken(1, 100.0)
    progress.taken(5, 100.4)  # within the resolution: counted from the mark before
    progress.taken(9, 102.0)
    assert progress.oldest_age(110.0, held=12, waiting=0, head=None) == pytest.approx(10.0)
    progress.settled_before(9)  # 1..8 settled
    assert progress.oldest_age(110.0, held=4, waiting=0, head=None) == pytest.approx(8.0)
    progress.settled_before(math.inf)
    assert progress.oldest_age(110.0, held=0, waiting=0, head=None) == 0.0


def test_commands_not_taken_count_from_when_the_pump_last_emptied_the_queue_or_their_timestamp() -> None:
    progress = Progress(stall_warning_after=300.0)
    assert progress.oldest_age(50.0, held=0, waiting=3, head=None) == 0.0  # idle: the call starts a pump
    progress.drained_at = 20.0  # the pump's last look; then it died or hangs
    backfill = ("crm/events", {}, "view", {}, 1000.0, "id")  # a timestamp from long ago: not a bound
    assert progress.oldest_age(50.0, held=0, waiting=3, head=backfill) == pytest.approx(30.0)
    recent = ("crm/events", {}, "view", {}, time.time() - 5.0, "id")
    assert progress.oldest_age(50.0, held=0, waiting=3, head=recent) == pytest.approx(5.0, abs=0.5)


def test_the_pump_warns_when_delivery_stalls_then_once_a_minute_and_once_when_it_resumes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    run = Harness(stall_warning_after=300.0, retry_deadline=3600.0)
    run.pump.outcomes.policy = RetryPolicy(3600.0, backoff=lambda attempt: 1.0)
    run.track(10)
    run.step()
    run.clock.now += 0.5
    run.step()
    assert run.pump.watch.oldest_pending(run.clock.now) == pytest.approx(0.5)
    caplog.set_level(logging.WARNING, logger="seven_segments")
    for _ in range(3):  # the API is down: every attempt fails, for 300 s
        run.answer(min(run.launched), None, TransientError("bulk: connection refused"))
        run.step()
        run.clock.now += 100.0
        run.step()
    lines = _stall_lines(caplog)
    assert len(lines) == 1, lines
    assert "10 commands wait, the oldest for 300.5 s (stall_warning_after=300 s); last error: bulk: connection refused" in lines[0]
    delay = run.step()  # the pump wakes to look again, within a minute
    assert 0 < delay <= REPEAT_SECONDS
    run.clock.now += REPEAT_SECONDS
    run.step()
    assert len(_stall_lines(caplog)) == 2 and "still stalled" in _stall_lines(caplog)[1]
    run.answer(min(run.launched))
    run.step()
    lines = _stall_lines(caplog)
    assert len(lines) == 3 and "delivery resumed" in lines[2] and "0 commands wait" in lines[2]
    assert run.pump.watch.oldest_pending(run.clock.now) == 0.0


# The rules of health() ---------------------------------------------------------------------------


def _figures(**changes: Any) -> Figures:
    base = Figures(
        enabled=True, closed=False, pending=0, oldest_pending_seconds=0.0, queue_fill=0.0, retrying=0,
        requests_failed_in_a_row=0, seconds_since_drop=math.inf, last_error="", stall_warning_after=300.0,
    )
    return base._replace(**changes)


@pytest.mark.parametrize(
    "changes, status, words",
    [
        ({}, "ok", "nothing pending"),
        ({"pending": 5, "oldest_pending_seconds": 0.2}, "ok", "delivering: 5 commands pending"),
        ({"enabled": False, "closed": True}, "ok", "disabled"),
        ({"closed": True}, "failing", "closed"),
        ({"pending": 7, "oldest_pending_seconds": 301.0, "last_error": "bulk: HTTP 503"}, "failing",
         "delivery is stalled: 7 commands wait, the oldest for 301 s (stall_warning_after=300 s); last error: bulk: HTTP 503"),
        ({"requests_failed_in_a_row": FAILING_REQUESTS, "last_error": "boom"}, "failing", "the last 3 requests failed; last error: boom"),
        ({"seconds_since_drop": 12.0}, "degraded", "dropped 12 s ago"),
        ({"seconds_since_drop": 61.0}, "ok", "nothing pending"),
        ({"queue_fill": 0.6}, "degraded", "the queue is 60% full"),
        ({"requests_failed_in_a_row": 1, "retrying": 40}, "degraded", "retrying: the last request failed; 40 commands"),
        ({"retrying": 40}, "degraded", "retrying: a request failed"),
        ({"requests_refused_in_a_row": 3, "last_failure": "bulk: refused: bad token"}, "failing",
         "the API refused every command of the last 3 requests: bulk: refused: bad token"),
        ({"seconds_since_failure": 5.0, "last_failure": "bulk: gave up"}, "degraded", "commands failed for good 5.0 s ago: bulk: gave up"),
        ({"seconds_since_failure": 61.0}, "ok", "nothing pending"),
        # The commands of the failed requests failed for good (retry_deadline): nothing is retried.
        ({"requests_failed_in_a_row": 2, "last_error": "boom"}, "degraded", "the last 2 requests failed; nothing waits to "
         "be sent again; last error: boom"),
    ],
)
def test_health_rules(changes: Any, status: str, words: str) -> None:
    health = assess(_figures(**changes))
    assert health.status == status and words in health.reason, health
    assert health.ok is (status != "failing")
    as_dict = health.as_dict()
    assert as_dict["status"] == status and as_dict["reason"] == health.reason
    assert isinstance(health, Health)
    with pytest.raises(AttributeError):
        health.status = "ok"  # type: ignore[misc]  # frozen


def test_health_of_blocking_and_disabled_clients(dead_url: str, fresh: LocalServer) -> None:
    disabled = SevenSegments(TOKEN, "u", target=dead_url, enabled=False)
    assert disabled.health().status == "ok" and "disabled" in disabled.health().reason
    blocking = SevenSegments(TOKEN, "u", target=fresh.url)
    blocking.track("view")
    assert blocking.health().status == "ok"
    failing = SevenSegments(TOKEN, "u", target=dead_url, retry_deadline=0)
    statuses = []
    for _ in range(FAILING_REQUESTS):
        with pytest.raises(Exception):
            failing.track("view")
        statuses.append(failing.health().status)
    assert statuses == ["degraded"] * (FAILING_REQUESTS - 1) + ["failing"]
    assert TOKEN not in repr(failing.health().as_dict()) and failing.health().last_error
    failing.close()
    assert failing.health().status == "failing" and "closed" in failing.health().reason


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError), ("300", TypeError), (True, TypeError)])
def test_stall_warning_after_must_be_a_positive_number(bad: Any, error: type) -> None:
    with pytest.raises(error, match="stall_warning_after"):
        SevenSegments(TOKEN, target="http://127.0.0.1:9", buffered=True, stall_warning_after=bad)


# Real time ---------------------------------------------------------------------------------------


def test_a_real_stall_is_warned_about_seen_in_health_and_its_end_said(
    fresh: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="seven_segments")
    fresh.faults.fail_next(10_000, status=503)
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.05, stall_warning_after=0.3)
    try:
        for n in range(5):
            client.track("view", {"n": n})
        assert wait_until(lambda: any("is stalled" in line for line in _stall_lines(caplog)), timeout=10)
        health = client.health()
        assert health.status == "failing" and health.pending == 5 and health.oldest_pending_seconds > 0.3
        assert client.stats()["oldest_pending_seconds"] > 0.3
        line = next(line for line in _stall_lines(caplog) if "is stalled" in line)
        assert "5 commands wait" in line and "HTTP 503" in line and TOKEN not in line
        fresh.faults.clear()
        assert client.flush(10)
        assert wait_until(lambda: any("resumed" in line for line in _stall_lines(caplog)), timeout=10)
        assert client.stats()["oldest_pending_seconds"] == 0.0
        assert client.health().status in ("ok", "degraded")  # the last request succeeded: no longer failing
    finally:
        client.close()


# A background thread that dies --------------------------------------------------------------------


def test_a_pump_thread_that_dies_is_started_again_at_once_and_says_so(
    fresh: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.01)
    try:
        assert client._engine is not None
        pump = client._engine._current().pump
        real_step, deaths = pump.step, []

        def dying_step() -> float:
            if not deaths:
                deaths.append(1)
                raise SystemExit("killed from outside")
            return real_step()

        pump.step = dying_step  # type: ignore[method-assign]
        caplog.set_level(logging.ERROR, logger="seven_segments")
        for n in range(3):
            client.track("view", {"n": n})
        # No further call: the restarted pump delivers them by itself.
        assert wait_until(lambda: client.stats()["sent"] == 3, timeout=10)
        lines = [r.getMessage() for r in caplog.records if "stopped unexpectedly" in r.getMessage()]
        assert lines == ["seven_segments worker: stopped unexpectedly (SystemExit: killed from outside); started again"]
    finally:
        client.close()


class _Interrupted(BaseException):
    """Stands for an exception raised into a sender thread (it escapes ``except Exception``)."""


def test_an_attempt_interrupted_by_a_base_exception_hands_its_batch_back(
    fresh: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_attempt, interrupted = engine_module.attempt_batch, threading.Event()

    def attempt(*args: Any, **kwargs: Any) -> Any:
        if not interrupted.is_set():
            interrupted.set()
            raise _Interrupted()
        return real_attempt(*args, **kwargs)

    monkeypatch.setattr(engine_module, "attempt_batch", attempt)
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.01)
    try:
        for n in range(3):
            client.track("view", {"n": n})
        assert client.flush(10)  # sent again after the interrupted attempt, not held for good
        assert interrupted.is_set() and client.stats()["sent"] == 3 and client.stats()["retried"] == 3
    finally:
        client.close()


def test_commands_behind_a_worker_stuck_in_on_error_show_their_age(fresh: LocalServer) -> None:
    release = threading.Event()
    fresh.faults.command_results(1, "error")  # the first command is refused: on_error is called, and hangs
    client = SevenSegments(
        TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.01, stall_warning_after=0.3,
        on_error=lambda error, commands: release.wait(10),
    )
    try:
        client.track("view")
        assert wait_until(lambda: client.stats()["failed"] == 1)
        for n in range(4):  # queued behind the stuck worker, never taken
            client.track("view", {"n": n})
        assert wait_until(lambda: client.health().status == "failing", timeout=10)
        health = client.health()
        assert health.oldest_pending_seconds >= 0.3 and health.pending == 4 and "stalled" in health.reason
        release.set()
        client.flush(10)
        assert client.stats()["oldest_pending_seconds"] == 0.0 and client.stats()["sent"] == 4
    finally:
        release.set()
        client.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_watchdog_thread_that_died_is_started_again_by_the_next_attempt(caplog: pytest.LogCaptureFixture) -> None:
    from seven_segments.watchdog import Watchdog

    ticks: List[float] = []

    def clock() -> float:
        ticks.append(1.0)
        if len(ticks) == 1:  # the watchdog thread's first look: an exception kills it
            raise RuntimeError("killed")
        return time.monotonic()

    watchdog = Watchdog(clock=clock)
    caplog.set_level(logging.ERROR, logger="seven_segments")
    first = watchdog.begin(time.monotonic() + 60)
    assert watchdog._thread is not None
    dead = watchdog._thread
    dead.join(5)
    assert not dead.is_alive()
    watchdog.end(first)
    second = watchdog.begin(time.monotonic() + 0.05)
    assert watchdog._thread is not None and watchdog._thread is not dead and watchdog._thread.is_alive()
    assert wait_until(lambda: second.expired, timeout=5)  # watched again: its deadline is kept
    watchdog.end(second)
    assert [r.getMessage() for r in caplog.records if "watchdog" in r.getMessage()] == [
        "seven_segments watchdog: its thread stopped unexpectedly; started again"
    ]


def test_a_token_the_api_refuses_is_failing_not_ok() -> None:
    # The API refuses each command of a bulk request for its token, in a 200 answer: every command
    # failed for good while health() said "ok: nothing pending".
    server = LocalServer(tokens=["known"])
    server.start()
    client = SevenSegments("unknown", target=server.url, buffered=True, on_error=lambda error, commands: None)
    try:
        client.track("a", {}, customer="c1")
        client.flush(10)
        health = client.health()
        assert health.status == "degraded" and "commands failed for good" in health.reason, health
        assert health.seconds_since_failure is not None and "not a known company token" in health.reason
        for _ in range(FAILING_REQUESTS - 1):
            client.track("a", {}, customer="c1")
            client.flush(10)
        health = client.health()
        assert health.status == "failing" and "refused every command of the last 3 requests" in health.reason, health
    finally:
        client.close(1)
        server.stop()

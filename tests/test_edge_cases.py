"""Edge cases where commands used to be lost, counted twice, or secrets shown (found in review)."""

from __future__ import annotations

import decimal
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from seven_segments._buffered.lifecycle import Phase
from seven_segments import AuthenticatedSevenSegments, ServiceUnavailable, SevenSegments, SevenSegmentsError
from seven_segments.testing import LocalServer

from .conftest import collector, exit_code, TOKEN, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "call, shown",
    [
        (lambda client: client.track("view", {"n": 10**5000}), "4300 digits"),
        (lambda client: client.track("view", {"d": decimal.Decimal("1" + "0" * 400 + ".5")}), "too large"),
        (lambda client: client.track("a\ud800b"), "event type"),
        (lambda client: client.track("view", customer="a\ud800b"), "customer"),
        (lambda client: client.track("view", timestamp=10**400), "too large"),
    ],
)
def test_values_json_cannot_carry_are_refused_at_the_call(server: LocalServer, call: Any, shown: str) -> None:
    with SevenSegments(TOKEN, "john", target=server.url, buffered=True) as client:
        with pytest.raises(ValueError, match=shown):
            call(client)
        client.track("view")
        assert client.flush(5) is True
        assert client.stats()["queued"] == 1
    assert len(server.events()) == 1


def test_a_flush_that_timed_out_does_not_hide_a_later_failure(server: LocalServer) -> None:
    server.faults.fail_next(1000, status=503)
    with SevenSegments(TOKEN, "john", target=server.url, buffered=True, retry_deadline=0.3, flush_interval=60) as client:
        client.track("view")
        assert client.flush(0.05) is False  # timed out; the command fails later
        assert wait_until(lambda: client.stats()["failed"] == 1)
        assert client.flush(5) is False, "the failure was never reported to a flush"
        assert client.flush(5) is True  # reported once; nothing new since
        server.faults.clear()


def test_max_queue_size_counts_what_the_worker_holds(dead_url: str) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=dead_url, buffered=True, max_queue_size=10, on_error=on_error)
    for number in range(50):
        client.track("view", {"n": number})
    assert client.stats()["dropped"] == 40
    client.close(0.1)
    stats = client.stats()  # a retry in flight when the deadline passed is unconfirmed, not failed
    assert stats["failed"] + stats["unconfirmed"] == 10 and stats["pending"] == 0


def test_close_giving_up_on_a_request_in_flight_counts_each_command_once(server: LocalServer) -> None:
    reports, on_error = collector()
    server.faults.delay_next(1, 1.0)
    client = SevenSegments(
        TOKEN, "john", target=server.url, buffered=True, timeout=0.6, flush_interval=60, on_error=on_error
    )
    for _ in range(5):
        client.track("view")
    client.flush(0)
    assert wait_until(lambda: client.stats()["in_flight"] == 1)
    started = time.monotonic()
    client.close(timeout=0.1)
    assert time.monotonic() - started < 0.6  # the close deadline ends the request in flight
    stats = client.stats()
    # In flight when the close gave up: unconfirmed (the server may have applied them), not failed.
    assert (stats["unconfirmed"], stats["failed"], stats["sent"], stats["pending"], stats["queued"]) == (5, 0, 0, 0, 5)
    assert sum(len(commands) for _, commands in reports) == 5
    assert "0.1 s" in str(reports[0][0]) and "may have been applied" in str(reports[0][0])


def test_a_command_that_races_close_is_failed_and_reported_not_left_behind(server: LocalServer) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, on_error=on_error)
    client.track("view")
    engine = client._engine
    assert engine is not None
    client.close()
    core = engine._core
    real = core.lifecycle

    class Racing:
        """What a racing producer sees: admitting at its check, and the close done after its append."""

        reads = 0

        @property
        def phase(self) -> Phase:
            self.reads += 1
            return Phase.RUNNING if self.reads == 1 else real.phase

        def __getattr__(self, name: str) -> Any:  # the rest (locks, events) is the real lifecycle's
            return getattr(real, name)

    core.lifecycle = Racing()  # type: ignore[assignment]
    core.submit(("crm/events", {"registered": "john"}, "late", {}, time.time(), "late-1"))
    core.lifecycle = real
    stats = client.stats()
    assert (stats["queued"], stats["sent"], stats["failed"], stats["pending"]) == (2, 1, 1, 0)
    assert [command["data"]["type"] for _, commands in reports for command in commands] == ["late"]


def test_flush_without_a_worker_thread_ends_within_its_timeout(server: LocalServer, monkeypatch: Any) -> None:
    """At interpreter exit on Python 3.12+ no thread starts: flush() delivers on the caller's thread."""

    real_start = threading.Thread.start

    def refuse(self: threading.Thread) -> None:
        if self.name in ("seven-segments-worker", "seven-segments-sender"):
            raise RuntimeError("can't create new thread at interpreter shutdown")
        real_start(self)

    server.faults.fail_next(1, status=503)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, flush_interval=60)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    client.track("view")
    started = time.monotonic()
    assert client.flush(3) is True
    assert time.monotonic() - started < 3
    client.track("view")
    started = time.monotonic()
    client.close(2)
    assert time.monotonic() - started < 2.5
    assert len(server.events()) == 2


def test_the_worker_survives_an_on_error_that_raises_system_exit(server: LocalServer) -> None:
    def leave(error: SevenSegmentsError, commands: List[Dict[str, Any]]) -> None:
        raise SystemExit(3)

    server.faults.command_results(1, "error")
    with SevenSegments(TOKEN, "john", target=server.url, buffered=True, on_error=leave, flush_interval=60) as client:
        client.track("view")
        assert client.flush(5) is False
        client.track("view")
        assert client.flush(5) is True
    assert len(server.events()) == 1


def test_blocking_attempts_get_the_full_timeout_whatever_the_retry_deadline(server: LocalServer) -> None:
    server.faults.delay_next(1, 0.8)
    client = SevenSegments(TOKEN, "john", target=server.url, timeout=3, retry_deadline=0.2)
    client.track("view")  # one slow answer within `timeout`: not a failure
    assert len(server.events()) == 1


def test_a_buffered_clients_direct_calls_keep_a_short_deadline(server: LocalServer) -> None:
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True)
    assert client._call_deadline == 5.0 and client._retry_deadline == 300.0
    client.close()


def test_no_exception_in_the_chain_shows_the_company_token(dead_url: str) -> None:
    company = "company-token-0123456789-secret"
    client = AuthenticatedSevenSegments("jane", "a-password-secret", target=dead_url, retry_deadline=0.2)
    with pytest.raises(ServiceUnavailable) as caught:
        client.export_analysis("funnel", {"analysis_id": "x"}, token=company)
    seen: List[BaseException] = []
    error: Any = caught.value
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    for link in seen:
        assert company not in str(link) and company not in repr(link)
        assert "a-password-secret" not in str(link)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_blocking_client_used_across_fork_does_not_share_its_connection(server: LocalServer) -> None:
    client = SevenSegments(TOKEN, "parent", target=server.url)
    client.track("before-fork")  # leaves a pooled keep-alive connection
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 1
        try:
            for _ in range(200):
                client.track("child", customer="child")
            status = 0
        finally:
            os._exit(status)
    for _ in range(200):
        client.track("parent")
    _, status = os.waitpid(pid, 0)
    assert exit_code(status) == 0
    kinds = [event["type"] for event in server.events()]
    assert kinds.count("child") == 200 and kinds.count("parent") == 200


@pytest.mark.slow
def test_verbose_command_line_never_logs_the_company_token() -> None:
    company = "company-token-0123456789-secret"
    with LocalServer(users={"jane": "pw"}) as server:
        server.faults.fail_next(1, status=503)  # one retry, logged at debug level
        result = subprocess.run(
            [sys.executable, str(ROOT / "seven_segments.py"), "export", "funnel", '{"analysis_id": "nope"}',
             "--username", "jane", "--token", company, "--target", server.url, "--verbose"],
            capture_output=True, text=True, timeout=30, env=dict(os.environ, SEVEN_SEGMENTS_PASSWORD="pw"),
        )
    assert result.returncode == 1
    assert "retrying" in result.stderr  # --verbose is on
    assert company not in result.stderr + result.stdout


def test_close_giving_up_after_a_413_split_counts_the_delivered_half_once(server: LocalServer) -> None:
    reports, on_error = collector()
    server.faults.fail_next(1, status=413)  # the batch of 10 is split
    server.faults.delay_next(1, 0.0)  # the first half goes through
    server.faults.delay_next(1, 2.0)  # the second half is still at the server when the close gives up
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, flush_interval=60, on_error=on_error)
    for _ in range(10):
        client.track("view")
    client.flush(0)
    assert wait_until(lambda: client.stats()["sent"] == 5)
    client.close(timeout=0.2)
    stats = client.stats()
    # The half in flight at the deadline is unconfirmed (the server may have applied it), not failed.
    assert (stats["sent"], stats["unconfirmed"], stats["failed"], stats["queued"], stats["pending"]) == (5, 5, 0, 10, 0)
    assert sum(len(commands) for _, commands in reports) == 5


def test_a_close_during_a_retry_after_wait_makes_no_hurried_last_try(server: LocalServer) -> None:
    server.faults.fail_next(1, status=503, retry_after=3)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, flush_interval=60)
    client.track("view")
    client.flush(0)
    assert wait_until(lambda: bool(server.requests()))
    started = time.monotonic()
    client.close(timeout=0.5)
    assert time.monotonic() - started < 1.0
    assert [request["status"] for request in server.requests()] == [503]  # not retried before Retry-After
    assert client.stats()["failed"] == 1


def test_commands_dropped_after_an_exit_time_close_are_reported_at_once(server: LocalServer) -> None:
    from seven_segments._buffered import close_all_at_exit

    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, on_error=on_error)
    client.track("view")
    close_all_at_exit()  # what atexit does, behind the client's back
    client.track("late")  # a request thread still running at exit
    assert client.stats()["dropped"] == 1
    assert [command["data"]["type"] for _, commands in reports for command in commands] == ["late"]


def test_a_flush_returns_when_its_own_commands_settle_not_later_ones(server: LocalServer) -> None:
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, batch_size=10, flush_interval=60)
    server.faults.delay_next(1, 0.2)
    server.faults.fail_next(1, status=503, retry_after=2)
    for number in range(10):
        client.track("first", {"n": number})
    result: Dict[str, Any] = {}

    def flush_first() -> None:
        started = time.monotonic()
        result["ok"] = client.flush(10)
        result["seconds"] = time.monotonic() - started

    flusher = threading.Thread(target=flush_first)
    flusher.start()
    engine = client._engine
    assert engine is not None
    core = engine._core
    assert wait_until(lambda: core.settlement.counts.tickets_queued + len(core.settlement.flushes.tickets) == 1)  # queued behind the first ten
    assert wait_until(lambda: len(server.requests()) == 1)  # the first ten reached the server (and its delay)
    for number in range(10):
        client.track("second", {"n": number})
    flusher.join(10)
    assert result["ok"] is True and result["seconds"] < 1.5
    client.close(0.2)  # the second ten wait out their Retry-After: nothing here is about them

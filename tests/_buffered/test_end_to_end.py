"""Regressions of the engine rebuild: each bug found in real deployments, with real sockets and processes."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from seven_segments import ServiceUnavailable, SevenSegments
from seven_segments.testing import LocalServer

from ..conftest import collector, TOKEN, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def run_script(source: str, *args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )


# 1. `timeout` bounds one attempt, from connecting to the last byte of the answer.


def test_a_blocking_call_ends_within_its_timeout_when_the_server_trickles(server: LocalServer) -> None:
    server.faults.trickle_next(1, seconds=0.2)  # each byte well within the timeout, the whole far past it
    client = SevenSegments(TOKEN, "john", target=server.url, timeout=1.0, retry_deadline=0)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="within 1 s"):
        client.track("view")
    assert time.monotonic() - started < 2.0
    client.close()


def test_a_trickling_server_keeps_the_worker_on_one_request_no_longer_than_timeout(server: LocalServer) -> None:
    server.faults.trickle_next(1, seconds=0.2)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, timeout=0.5)
    started = time.monotonic()
    client.track("view")
    assert client.flush(10) is True  # the trickled attempt was cut at 0.5 s and retried
    assert time.monotonic() - started < 3.0
    assert [request["status"] for request in server.requests()] == [200, 200]
    assert server.stats()["duplicates"] == 1  # the first was applied: its command_id made the retry harmless
    client.close()


def test_a_close_deadline_ends_an_attempt_in_flight(server: LocalServer) -> None:
    server.faults.trickle_next(1, seconds=0.2)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, timeout=30)
    client.track("view")
    client.flush(0)
    assert wait_until(lambda: client.stats()["in_flight"] == 1)
    started = time.monotonic()
    client.close(timeout=0.3)
    assert time.monotonic() - started < 1.0
    assert client.stats()["unconfirmed"] == 1


# 2, 3 and 4: on_error at exit and at close: the warning first, chunks of at most 1,000, every command,
# memory bounded.

ON_ERROR_AT_EXIT = """
import atexit, logging, sys, time
calls = []
atexit.register(lambda: sys.stderr.write(f"total {sum(calls)} largest {max(calls, default=0)}\\n"))  # runs last
from seven_segments import SevenSegments
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
def on_error(error, commands):
    calls.append(len(commands))
    sys.stderr.write(f"on_error {len(commands)}\\n")
client = SevenSegments("exit-token", "john", target=sys.argv[1], buffered=True, shutdown_timeout=0.5,
                       on_error=on_error, max_queue_size=int(sys.argv[3]))
for number in range(int(sys.argv[2])):
    client.track("view", {"n": number})
"""


@pytest.mark.slow
def test_at_exit_every_undelivered_command_reaches_on_error_in_chunks_after_the_warning(dead_url: str) -> None:
    result = run_script(ON_ERROR_AT_EXIT, dead_url, "200000", "1000000")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    warning = next(index for index, line in enumerate(lines) if "commands were lost at close" in line)
    first_call = next(index for index, line in enumerate(lines) if line.startswith("on_error"))
    assert warning < first_call, result.stderr[:2000]
    assert "200000 commands were lost at close" in lines[warning]
    assert lines[-1] == "total 200000 largest 1000", lines[-3:]
    assert "exit-token" not in result.stderr


@pytest.mark.slow
def test_every_dropped_command_reaches_on_error(dead_url: str) -> None:
    result = run_script(ON_ERROR_AT_EXIT, dead_url, "26001", "1000")
    assert result.returncode == 0, result.stderr
    # 25,001 dropped (queue full) and 1,000 not delivered at exit: all of them passed to on_error
    assert result.stderr.splitlines()[-1] == "total 26001 largest 1000", result.stderr[-2000:]
    assert "queue is full" in result.stderr


MEMORY_AT_CLOSE = """
import resource, sys
from seven_segments import SevenSegments
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()
seen = [0]
client = SevenSegments("token", "john", target=sys.argv[1], buffered=True, max_queue_bytes=16 * 1024 * 1024,
                       on_error=lambda error, commands: seen.__setitem__(0, seen[0] + len(commands)))
for number in range(120_000):
    client.track("view", {"n": number, "path": "/products/bottle", "ref": "campaign-2026"})
before = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
client.close(0.5)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
stats = client.stats()
print(before, peak_before, peak, seen[0], stats["failed"] + stats["dropped"] + stats["unconfirmed"])
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
@pytest.mark.slow
def test_memory_during_close_stays_near_the_queue_bound(dead_url: str) -> None:
    result = run_script(MEMORY_AT_CLOSE, dead_url)
    assert result.returncode == 0, result.stderr
    before, peak_before, peak, reported, lost = map(int, result.stdout.split())
    assert reported == lost == 120_000
    growth = peak - max(before, peak_before)
    assert growth < 12 * 1024 * 1024, f"peak memory grew by {growth / 2**20:.1f} MiB during close"


# 5. A client dropped without close() delivers what it holds and keeps no thread or socket.


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def test_clients_dropped_without_close_deliver_and_release_everything(server: LocalServer) -> None:
    gc.collect()
    fds_before = _open_fds()
    for number in range(50):
        client = SevenSegments(TOKEN, f"user-{number}", target=server.url, buffered=True)
        client.track("view", {"n": number})
        del client
    gc.collect()
    assert server.wait_for_events(50, timeout=10)
    assert wait_until(lambda: client_threads() == 0, timeout=10), threading.enumerate()
    assert _open_fds() <= fds_before + 4
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(50))


def client_threads() -> int:
    """Threads of buffered clients (the process's one watchdog and the local server's are not)."""
    return sum(thread.name in ("seven-segments-worker", "seven-segments-sender") for thread in threading.enumerate())


def test_an_idle_client_keeps_no_thread(server: LocalServer, monkeypatch: Any) -> None:
    from seven_segments._buffered import sender, thread

    monkeypatch.setattr(thread, "PUMP_IDLE_SECONDS", 0.05)
    monkeypatch.setattr(sender, "IDLE_SECONDS", 0.05)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, flush_interval=0.01)
    client.track("view")
    assert client.flush(5)
    assert client_threads() > 0
    assert wait_until(lambda: client_threads() == 0, timeout=5), threading.enumerate()
    client.track("again")  # starts the pump again
    assert client.flush(5) and len(server.events()) == 2
    client.close()


# 6. Every loss is reported with its true reason.


def test_drops_for_a_full_queue_are_reported_as_such_when_a_close_follows(dead_url: str, caplog: Any) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=dead_url, buffered=True, max_queue_size=10, on_error=on_error)
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        for number in range(30):
            client.track("view", {"n": number})
        client.close(0.2)
    drop_reports = [str(error) for error, _ in reports if "dropped" in str(error)]
    assert drop_reports and all("queue is full" in text for text in drop_reports)
    assert "the client is closed" not in caplog.text
    stats = client.stats()
    assert (stats["dropped_queue_full"], stats["dropped_closed"]) == (20, 0)
    assert stats["failed"] + stats["unconfirmed"] == 10  # a retry in flight at the deadline is unconfirmed
    assert sum(len(commands) for _, commands in reports) == 30


def test_commands_tracked_after_close_began_are_dropped_as_closed(server: LocalServer) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, on_error=on_error)
    client.track("view")
    client._engine._current().begin_close()  # type: ignore[union-attr]  # what exit does, behind the client's back
    client.track("late")
    client._engine._current().finish_close()  # type: ignore[union-attr]
    stats = client.stats()
    assert (stats["sent"], stats["dropped_closed"], stats["dropped_queue_full"]) == (1, 1, 0)
    assert any("the client is closed" in str(error) for error, _ in reports)


# Several requests in flight, against the local server with a network's round trip.


def test_requests_in_flight_overlap_at_a_round_trip_of_100_ms() -> None:
    with LocalServer(latency=0.1) as server:
        client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, max_in_flight=8)
        for number in range(4000):
            client.track("view", {"n": number})
        assert client.flush(30) is True
        client.close()
        assert len(server.events()) == 4000
        times = sorted(request["time"] for request in server.requests())
    # One request at a time would space the requests at least one round trip (100 ms) apart: with
    # several in flight, some reach the server within a fraction of it.
    assert len(times) == 4 and min(later - earlier for earlier, later in zip(times, times[1:])) < 0.05, times


def test_an_outage_is_met_with_one_request_at_a_time(server: LocalServer) -> None:
    server.faults.fail_next(6, status=503)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, max_in_flight=8, batch_size=100)
    for number in range(800):
        client.track("view", {"n": number})
    assert client.flush(30) is True
    client.close()
    statuses = [request["status"] for request in server.requests()]
    # At most the first window failed at once; after that, one request was tried at a time until
    # one succeeded: never more than one failure after the first success-less burst.
    first_ok = statuses.index(200)
    assert statuses.count(503) == 6 and first_ok <= 8
    assert len(server.events()) == 800 and server.stats()["duplicates"] == 0


def test_stats_have_the_same_keys_in_both_modes(dead_url: str) -> None:
    blocking = SevenSegments(TOKEN, "john", target=dead_url)
    buffered = SevenSegments(TOKEN, "john", target=dead_url, buffered=True)
    assert set(blocking.stats()) == set(buffered.stats()) >= {"unconfirmed", "dropped_queue_full", "in_flight"}
    buffered.close(0)


def test_a_close_is_bounded_even_when_on_error_is_slow(dead_url: str, monkeypatch: Any, caplog: Any) -> None:
    from seven_segments._buffered import engine

    monkeypatch.setattr(engine, "REPORT_GRACE", 0.5)
    release = threading.Event()
    client = SevenSegments(
        TOKEN, "john", target=dead_url, buffered=True, on_error=lambda error, commands: release.wait(5)
    )
    for number in range(3000):
        client.track("view", {"n": number})
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        client.close(timeout=0.3)
    seconds = time.monotonic() - started
    release.set()
    assert seconds < 2.0, seconds  # 0.3 s + grace + 0.5 s for on_error, not 5 s per call
    assert "were not passed to on_error" in caplog.text
    assert client.stats()["pending"] == 0


EXIT_WHILE_TRICKLING = """
import atexit, sys
from seven_segments import SevenSegments
client = SevenSegments("exit-token", "john", target=sys.argv[1], buffered=True, shutdown_timeout=1.0, timeout=30)
def at_exit():  # on Python 3.12+, no thread can start now: delivery runs on this thread
    for number in range(200):
        client.track("ended", {"n": number})
atexit.register(at_exit)
"""


@pytest.mark.parametrize("python", __import__("tests.test_process_life", fromlist=["_pythons"])._pythons())
@pytest.mark.slow
def test_exit_ends_on_time_when_the_server_trickles_even_without_threads(python: str, server: LocalServer) -> None:
    server.faults.trickle_next(1, seconds=0.05)  # every byte well within `timeout`, the answer far past the deadline
    started = time.monotonic()
    result = subprocess.run(
        [python, "-c", textwrap.dedent(EXIT_WHILE_TRICKLING), server.url],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 6.0, result.stderr  # 1 s of shutdown_timeout, plus the start
    assert "200 commands" in result.stderr and "exit-token" not in result.stderr

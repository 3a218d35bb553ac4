"""Regressions found by a review of "one representation" (a buffered client's commands are their
bulk bytes from the call on), tested through the public API only.

Each test here failed on the code it was written against; a defect not fixed yet is marked
``xfail(strict=True)`` with the defect as its reason, so that the fix makes the mark fail loudly.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from seven_segments import SevenSegments
from seven_segments.protocol import MAX_COMMAND_BYTES
from seven_segments.testing import LocalServer

from .conftest import TOKEN, collector

pytestmark = pytest.mark.timeout(60)


def _server_size(data: Dict[str, Any]) -> int:
    """A command's data as the server measures it: compact UTF-8 JSON, the standard library's spelling."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


@pytest.mark.parametrize("nested", [False, True], ids=["flat (bytes)", "nested (text)"])
def test_a_command_the_server_would_measure_too_large_is_refused_at_the_call(fresh: LocalServer, nested: bool) -> None:
    pytest.importorskip("orjson")
    # Floats the standard library (the server) writes one byte longer each than orjson: in a flat
    # dict (orjson's fast path: bytes) or nested (the careful path: orjson's text); customer ids
    # large enough for the command to be measured.
    floats = {f"k{i}": 1e-7 for i in range(1500)}
    properties: Dict[str, Any] = {"n": floats} if nested else floats
    timestamp, command_id = 1700000000.5, "c1"

    def data(pad: int) -> Dict[str, Any]:
        return {
            "company_id": TOKEN, "customer_ids": {"registered": "x" * pad}, "type": "view",
            "properties": properties, "timestamp": timestamp, "command_id": command_id,
        }

    pad = MAX_COMMAND_BYTES - _server_size(data(0)) + 100  # 100 bytes over, as the server measures
    assert _server_size(data(pad)) == MAX_COMMAND_BYTES + 100
    reports, on_error = collector()
    client = SevenSegments(TOKEN, target=fresh.url, buffered=True, on_error=on_error)
    try:
        with pytest.raises(ValueError, match="too many for one command"):
            client.track("view", properties, customer="x" * pad, timestamp=timestamp, command_id=command_id)
    finally:
        delivered = client.flush(10)
        client.close()
    assert delivered, reports  # not reached today: the server refused it (413) and on_error got it


def test_stats_queued_never_goes_backwards_while_the_pump_takes(fresh: LocalServer) -> None:
    client = SevenSegments(TOKEN, "john", target=fresh.url, buffered=True)
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            for _ in range(200):
                client.track("view")
            time.sleep(0)

    producer = threading.Thread(target=produce)
    producer.start()
    decreases: List[Tuple[float, float]] = []
    last = 0.0
    try:
        until = time.monotonic() + 1.0  # the defect showed within half a second, in each of 5 runs
        while time.monotonic() < until and not decreases:
            queued = client.stats()["queued"]
            if queued < last:
                decreases.append((last, queued))
            last = queued
    finally:
        stop.set()
        producer.join()
        client.close()
    assert decreases == []


def test_a_flush_is_not_failed_by_drops_of_commands_tracked_after_it(fresh: LocalServer) -> None:
    fresh.faults.command_results(1, "error")
    in_on_error, release = threading.Event(), threading.Event()

    def on_error(error: Any, commands: Any) -> None:
        in_on_error.set()
        release.wait(5)  # holds the pump thread, so that the flush below waits in the queue

    client = SevenSegments(TOKEN, "john", target=fresh.url, buffered=True, max_queue_size=2, on_error=on_error)
    try:
        client.track("refused")
        assert client.flush(5) is False  # the refusal is reported by this flush ...
        assert in_on_error.wait(5)
        verdicts: List[bool] = []
        flusher = threading.Thread(target=lambda: verdicts.append(client.flush(5)))
        flusher.start()
        time.sleep(0.1)  # ... the second flush is queued behind nothing but a pump busy in on_error
        for _ in range(5):
            client.track("after")  # after the second flush began: the queue of 2 drops some
        assert client.stats()["dropped"] > 0
        release.set()
        flusher.join(10)
        assert verdicts == [True]  # nothing tracked before it was lost
    finally:
        release.set()
        client.close()


def test_max_queue_bytes_bounds_large_commands_the_pump_has_not_taken_yet(fresh: LocalServer) -> None:
    fresh.faults.command_results(1, "error")
    in_on_error, release = threading.Event(), threading.Event()

    def on_error(error: Any, commands: Any) -> None:
        in_on_error.set()
        release.wait(5)  # the pump thread is busy here, taking nothing

    client = SevenSegments(
        TOKEN, "john", target=fresh.url, buffered=True, max_queue_bytes=1024 * 1024, on_error=on_error
    )
    try:
        client.track("refused")  # a small command: the pump's last take sets its estimate
        client.flush(5)
        assert in_on_error.wait(5)
        blob = "x" * 50_000
        for _ in range(100):  # 5 MB of commands against a bound of 1 MiB
            client.track("large", {"blob": blob})
        stats = client.stats()
    finally:
        release.set()
        client.close()
    accepted = stats["queued"] - 1
    assert accepted * 50_000 <= 1.5 * 1024 * 1024, stats  # about max_queue_bytes: 21 of them, not 100
    assert stats["dropped"] >= 70


def test_small_commands_are_not_dropped_for_the_size_of_a_large_one_taken_before(fresh: LocalServer) -> None:
    fresh.faults.command_results(1, "error")
    in_on_error, release = threading.Event(), threading.Event()

    def on_error(error: Any, commands: Any) -> None:
        in_on_error.set()
        release.wait(5)  # the pump thread is busy here, taking nothing

    client = SevenSegments(
        TOKEN, "john", target=fresh.url, buffered=True, max_queue_bytes=8 * 1024 * 1024, on_error=on_error
    )
    try:
        client.track("large", {"blob": "x" * 90_000})  # the pump's last take: one command of 90 kB
        client.flush(5)
        assert in_on_error.wait(5)
        for i in range(1000):  # about 150 kB in all, against a bound of 8 MiB
            client.track("small", {"i": i})
        stats = client.stats()
        release.set()
        delivered = client.flush(10)
    finally:
        release.set()
        client.close()
    assert stats["dropped"] == 0, stats
    assert delivered

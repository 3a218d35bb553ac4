"""Simulated network latency of the local server: every API answer waits, concurrently, /_local/ does not."""

from __future__ import annotations

import threading
import time
from typing import List

import pytest
import requests

from seven_segments.testing import LocalServer

EVENT = {"company_id": "c", "customer_ids": {"registered": "a"}, "type": "t"}
BULK = {"commands": [{"name": "crm/events", "data": EVENT}]}


@pytest.mark.parametrize("counting_only", [False, True])
def test_one_request_waits_the_latency_and_concurrent_ones_wait_together(counting_only: bool) -> None:
    with LocalServer(latency=0.05, counting_only=counting_only) as server:
        started = time.perf_counter()
        assert requests.post(server.url + "/bulk", json=BULK, timeout=5).status_code == 200
        assert time.perf_counter() - started >= 0.05

        statuses: List[int] = []
        lock = threading.Lock()

        def send() -> None:
            with requests.Session() as session:  # one connection per thread
                status = session.post(server.url + "/crm/events", json=EVENT, timeout=5).status_code
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=send) for _ in range(16)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        elapsed = time.perf_counter() - started
        assert statuses == [200] * 16
        assert 0.05 <= elapsed < 16 * 0.05 / 2, elapsed
        assert server.stats()["events"] == 17


def test_local_paths_and_unknown_paths() -> None:
    with LocalServer(latency=0.3) as server:
        started = time.perf_counter()
        assert requests.get(server.url + "/_local/stats", timeout=5).status_code == 200
        assert requests.get(server.url + "/_local/latency", timeout=5).json() == {"success": True, "latency": 0.3}
        assert time.perf_counter() - started < 0.25
        started = time.perf_counter()
        assert requests.post(server.url + "/no/such/path", json={}, timeout=5).status_code == 404
        assert time.perf_counter() - started >= 0.3


def test_latency_set_at_run_time() -> None:
    with LocalServer() as server:
        assert server.latency == 0.0
        answer = requests.post(server.url + "/_local/latency", json={"seconds": 0.05}, timeout=5)
        assert answer.json() == {"success": True, "latency": 0.05}
        assert server.latency == 0.05
        started = time.perf_counter()
        requests.post(server.url + "/crm/events", json=EVENT, timeout=5)
        assert time.perf_counter() - started >= 0.05
        server.latency = 0
        for bad in ({"seconds": -1}, {"seconds": "1"}, {"seconds": True}, {}, [1]):
            answer = requests.post(server.url + "/_local/latency", json=bad, timeout=5)
            assert answer.status_code == 400 and "seconds" in answer.text, (bad, answer.text)
        assert server.latency == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 61, "0.1", True, None])
def test_bad_latency_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(ValueError, match="latency must be a number of seconds from 0 to 60, not "):
        LocalServer(latency=bad)  # type: ignore[arg-type]
    server = LocalServer()
    with pytest.raises(ValueError, match="latency"):
        server.latency = bad  # type: ignore[assignment]
    assert server.latency == 0.0


def test_stop_while_waiting_returns_promptly_without_applying() -> None:
    server = LocalServer(latency=30).start()
    failed = threading.Event()

    def send() -> None:
        try:
            requests.post(server.url + "/crm/events", json=EVENT, timeout=10)
        except requests.RequestException:
            failed.set()

    thread = threading.Thread(target=send)
    thread.start()
    assert _wait_for_connection(server)
    started = time.perf_counter()
    server.stop()
    thread.join(5)
    assert time.perf_counter() - started < 3
    assert failed.is_set()
    assert server.events() == []


def _wait_for_connection(server: LocalServer, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.stats()["requests"] or server._httpd is not None and server._httpd.connections:  # noqa: SLF001
            time.sleep(0.05)  # let the handler reach its wait
            return True
        time.sleep(0.001)
    return False

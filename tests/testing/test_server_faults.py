"""Fault injection of the local server, from Python and over HTTP."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List

import pytest
import requests

from seven_segments.testing import LocalServer

JSON = {"Content-Type": "application/json"}


def event(customer: str = "john", **extra: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {"company_id": "co", "customer_ids": {"registered": customer}, "type": "visit",
                            "properties": {}, "timestamp": 1.0}
    data.update(extra)
    return data


def post(server: LocalServer, path: str, body: Any) -> requests.Response:
    return requests.post(server.url + path, data=json.dumps(body), headers=JSON, timeout=10)


def bulk(*data: Dict[str, Any]) -> Dict[str, Any]:
    return {"commands": [{"name": "crm/events", "data": d} for d in data]}


def test_fail_next_with_retry_after(server: LocalServer) -> None:
    server.faults.fail_next(2, status=503, retry_after=1)
    for _ in range(2):
        answer = post(server, "/crm/events", event())
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
        assert answer.json() == {"success": False, "errors": ["injected fault: HTTP 503"]}
    assert server.events() == []
    assert post(server, "/crm/events", event()).status_code == 200
    assert len(server.events()) == 1
    stats = server.stats()
    assert stats["faults"] == {"status": 2} and stats["faults_injected"] == 2
    assert stats["statuses"] == {"503": 2, "200": 1}


def test_fail_next_variants(server: LocalServer) -> None:
    server.faults.fail_next(1, status=429, retry_after=0.05)
    server.faults.fail_next(1, status=500)
    server.faults.fail_next(1, status=429, retry_after="Wed, 21 Oct 2037 07:28:00 GMT")
    first = post(server, "/bulk", bulk(event()))
    assert first.status_code == 429 and first.headers["Retry-After"] == "0.05"
    second = post(server, "/bulk", bulk(event()))
    assert second.status_code == 500 and "Retry-After" not in second.headers
    third = post(server, "/crm/events", event())
    assert third.headers["Retry-After"] == "Wed, 21 Oct 2037 07:28:00 GMT"
    assert server.events() == []


def test_delay_next(server: LocalServer) -> None:
    server.faults.delay_next(1, 0.2)
    started = time.monotonic()
    assert post(server, "/crm/events", event()).status_code == 200
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert post(server, "/crm/events", event()).status_code == 200
    assert time.monotonic() - started < 0.2
    assert len(server.events()) == 2


def test_drop_before_apply(server: LocalServer) -> None:
    server.faults.drop_next(1)
    with pytest.raises(requests.ConnectionError):
        post(server, "/bulk", bulk(event(command_id="x1")))
    assert server.events() == []
    assert server.stats()["statuses"] == {"dropped": 1}
    assert post(server, "/bulk", bulk(event(command_id="x1"))).json()["results"] == [{"status": "ok"}]
    assert len(server.events()) == 1


def test_drop_after_apply_stores_and_retry_is_deduplicated(server: LocalServer) -> None:
    server.faults.drop_next(1, after_apply=True)
    with pytest.raises(requests.ConnectionError):
        post(server, "/bulk", bulk(event(command_id="x1"), event(command_id="x2")))
    assert [e["command_id"] for e in server.events()] == ["x1", "x2"]
    answer = post(server, "/bulk", bulk(event(command_id="x1"), event(command_id="x2")))
    assert answer.json()["results"] == [{"status": "ok"}, {"status": "ok"}]
    assert len(server.events()) == 2 and server.stats()["duplicates"] == 2
    assert server.requests()[0]["status"] is None and server.requests()[1]["status"] == 200


def test_drop_with_keep_alive_session(server: LocalServer) -> None:
    with requests.Session() as session:
        assert session.post(server.url + "/crm/events", json=event(), timeout=10).status_code == 200
        server.faults.drop_next(1)
        with pytest.raises(requests.ConnectionError):
            session.post(server.url + "/crm/events", json=event(), timeout=10)
        assert session.post(server.url + "/crm/events", json=event(), timeout=10).status_code == 200
    assert len(server.events()) == 2


def test_command_results(server: LocalServer) -> None:
    server.faults.command_results(2, "retry")
    server.faults.command_results(1, "error")
    answer = post(server, "/bulk", bulk(event("a", command_id="a"), event("b"), event("c"), event("d")))
    assert answer.status_code == 200
    assert answer.json()["results"] == [{"status": "retry"}, {"status": "retry"},
                                        {"status": "error", "errors": ["injected fault: command refused"]},
                                        {"status": "ok"}]
    assert [e["customer_ids"]["registered"] for e in server.events()] == ["d"]
    # A retried command was not applied, so its command_id is still free.
    assert post(server, "/bulk", bulk(event("a", command_id="a"))).json()["results"] == [{"status": "ok"}]
    assert len(server.events()) == 2
    assert server.stats()["faults"] == {"command_retry": 2, "command_error": 1}
    with pytest.raises(ValueError):
        server.faults.command_results(1, "maybe")


def outcomes(seed: int, count: int = 100) -> List[str]:
    with LocalServer() as local:
        local.faults.random(0.5, seed=seed, retry_after=0.01)
        seen = []
        with requests.Session() as session:
            for index in range(count):
                try:
                    answer = session.post(local.url + "/bulk", json=bulk(*[event(f"c{index}-{i}") for i in range(4)]),
                                          timeout=10)
                except requests.ConnectionError:
                    seen.append("dropped")
                    continue
                if answer.status_code == 200:
                    seen.append("".join(r["status"][0] for r in answer.json()["results"]))
                else:
                    seen.append(f"{answer.status_code}:{answer.headers.get('Retry-After')}")
        return seen


def test_random_faults_are_seeded_and_mixed() -> None:
    first = outcomes(seed=7)
    assert first == outcomes(seed=7)
    assert first != outcomes(seed=8)
    kinds = set(first)
    assert "oooo" in kinds and "dropped" in kinds
    assert {"500:None", "503:None", "429:0.01"} & kinds
    assert any(set(k) == {"o", "r"} or k == "rrrr" for k in kinds)


def test_random_rate_one_with_selected_kinds(server: LocalServer) -> None:
    server.faults.random(1.0, kinds=["429"], retry_after=2)
    for _ in range(5):
        answer = post(server, "/crm/events", event())
        assert answer.status_code == 429 and answer.headers["Retry-After"] == "2"
    server.faults.clear()
    assert post(server, "/crm/events", event()).status_code == 200
    with pytest.raises(ValueError):
        server.faults.random(2.0)
    with pytest.raises(ValueError):
        server.faults.random(0.5, kinds=["meteor"])


def test_faults_never_touch_inspection_endpoints(server: LocalServer) -> None:
    server.faults.fail_next(1)
    server.faults.drop_next(1)
    assert requests.get(server.url + "/_local/stats", timeout=10).status_code == 200
    assert requests.get(server.url + "/_local/events", timeout=10).status_code == 200
    assert post(server, "/crm/events", event()).status_code == 503


def test_faults_over_http(server: LocalServer) -> None:
    answer = requests.post(server.url + "/_local/faults", json=[
        {"action": "fail_next", "n": 1, "status": 502},
        {"action": "delay_next", "n": 1, "seconds": 0.01},
        {"action": "command_results", "n": 1, "result": "error"},
    ], timeout=10)
    assert answer.status_code == 200
    pending = requests.get(server.url + "/_local/faults", timeout=10).json()["faults"]
    assert [f["kind"] for f in pending["requests"]] == ["status", "delay"] and pending["commands"] == ["error"]
    assert post(server, "/crm/events", event()).status_code == 502
    assert post(server, "/bulk", bulk(event())).json()["results"][0]["status"] == "error"
    requests.post(server.url + "/_local/faults", json={"action": "drop_next", "after_apply": True}, timeout=10)
    with pytest.raises(requests.ConnectionError):
        post(server, "/crm/events", event())
    assert len(server.events()) == 1
    requests.post(server.url + "/_local/faults", json={"action": "fail_next", "n": 5}, timeout=10)
    requests.post(server.url + "/_local/faults", json={"action": "clear"}, timeout=10)
    assert post(server, "/crm/events", event()).status_code == 200
    for bad in ({"action": "explode"}, {"action": "fail_next", "n": -1}, {"action": "fail_next", "colour": 1}, "x"):
        answer = requests.post(server.url + "/_local/faults", json=bad, timeout=10)
        assert answer.status_code == 400 and answer.json()["success"] is False


def test_faults_are_thread_safe(server: LocalServer) -> None:
    server.faults.fail_next(50)
    statuses: List[int] = []
    lock = threading.Lock()

    def worker() -> None:
        with requests.Session() as session:
            for _ in range(10):
                status = session.post(server.url + "/crm/events", json=event(), timeout=10).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(503) == 50 and statuses.count(200) == 50
    assert len(server.events()) == 50


def test_long_delay_does_not_block_stop() -> None:
    local = LocalServer().start()
    local.faults.delay_next(1, 30)
    failures: List[Exception] = []

    def call() -> None:
        try:
            post(local, "/crm/events", event())
        except requests.ConnectionError as error:
            failures.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    local.stop()
    assert time.monotonic() - started < 2
    thread.join(5)
    assert len(failures) == 1 and local.events() == []


def test_redirect_next_names_another_host_and_applies_nothing(server: LocalServer) -> None:
    server.faults.redirect_next(1, "http://127.0.0.1:9/", status=308)
    answer = requests.post(server.url + "/bulk?company=co", data=json.dumps(bulk(event())), headers=JSON,
                           timeout=10, allow_redirects=False)
    assert answer.status_code == 308 and answer.headers["Location"] == "http://127.0.0.1:9/bulk?company=co"
    assert answer.json() == {"success": False, "errors": ["injected fault: HTTP 308 redirect"]}
    assert server.events() == [] and post(server, "/bulk", bulk(event())).status_code == 200
    assert post(server, "/_local/faults", {"action": "redirect_next", "location": "https://x.example"}).status_code == 200
    assert server.faults.pending()["requests"] == [
        {"kind": "redirect", "status": 307, "retry_after": None, "seconds": 0.0, "location": "https://x.example"}
    ]
    for bad in ({"status": 200, "location": "http://x"}, {"location": "x.example"}):
        with pytest.raises(ValueError):
            server.faults.redirect_next(1, **bad)

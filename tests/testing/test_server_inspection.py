"""Inspection (Python and /_local/ over HTTP), reset, lifecycle and persistence of the local server."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Dict

import pytest
import requests

from seven_segments.testing import LocalServer

JSON = {"Content-Type": "application/json"}


def event(customer: str = "john", **extra: Any) -> Dict[str, Any]:
    data: Dict[str, Any] = {"company_id": "co", "customer_ids": {"registered": customer}, "type": "visit",
                            "properties": {"n": 1}, "timestamp": 10.0}
    data.update(extra)
    return data


def post(server: LocalServer, path: str, body: Any) -> requests.Response:
    return requests.post(server.url + path, data=json.dumps(body), headers=JSON, timeout=10)


def test_http_inspection_endpoints(server: LocalServer) -> None:
    post(server, "/crm/events", event(command_id="e1"))
    post(server, "/crm/events", event(company_id="other"))
    post(server, "/crm/customers", {"company_id": "co", "ids": {"registered": "john"}, "properties": {"a": 1}})
    events = requests.get(server.url + "/_local/events", timeout=10).json()
    assert events["success"] is True and events["events"] == server.events() and len(events["events"]) == 2
    only = requests.get(server.url + "/_local/events?company=other", timeout=10).json()["events"]
    assert [e["company_id"] for e in only] == ["other"]
    customers = requests.get(server.url + "/_local/customers?company=co", timeout=10).json()["customers"]
    assert customers == [{"company_id": "co", "ids": {"registered": "john"}, "properties": {"a": 1}}]
    recorded = requests.get(server.url + "/_local/requests", timeout=10).json()["requests"]
    assert [r["path"] for r in recorded] == ["/crm/events", "/crm/events", "/crm/customers"]
    assert recorded[0]["body"] == event(command_id="e1") and recorded[0]["method"] == "POST"
    assert recorded[0]["headers"]["Content-Type"] == "application/json" and recorded[0]["gzipped"] is False
    assert recorded[0]["status"] == 200
    stats = requests.get(server.url + "/_local/stats", timeout=10).json()["stats"]
    assert stats["requests"] == 3 and stats["events"] == 2 and stats["customer_updates"] == 1
    assert stats["commands"] == {"ok": 3, "retry": 0, "error": 0}
    assert stats == server.stats()


def test_local_paths_and_methods(server: LocalServer) -> None:
    assert requests.get(server.url + "/_local/nothing", timeout=10).status_code == 404
    assert requests.get(server.url + "/_local/reset", timeout=10).status_code == 405
    assert requests.post(server.url + "/_local/events", timeout=10).status_code == 405
    assert server.stats()["requests"] == 0  # inspection is not counted as API traffic
    assert server.requests() == []


def test_reset_over_http_and_python(server: LocalServer) -> None:
    post(server, "/crm/events", event(command_id="e1"))
    server.faults.fail_next(3)
    assert requests.post(server.url + "/_local/reset", timeout=10).json() == {"success": True}
    assert server.events() == [] and server.requests() == [] and server.stats()["events"] == 0
    assert server.faults.pending()["requests"] == []
    assert post(server, "/crm/events", event(command_id="e1")).status_code == 200
    assert len(server.events()) == 1  # command ids were forgotten too
    server.reset()
    assert server.events() == [] and server.customers() == []


def test_recorded_requests_are_capped() -> None:
    with LocalServer(max_recorded_requests=3) as local:
        for index in range(5):
            post(local, "/crm/events", event(str(index)))
        assert [r["body"]["customer_ids"]["registered"] for r in local.requests()] == ["2", "3", "4"]


def test_recorded_non_json_body(server: LocalServer) -> None:
    requests.post(server.url + "/crm/events", data=b"garbage", headers=JSON, timeout=10)
    record = server.requests()[-1]
    assert record["body"] is None and record["status"] == 400


def test_wait_for_events(server: LocalServer) -> None:
    started = time.monotonic()
    assert server.wait_for_events(1, timeout=0.05) is False
    assert time.monotonic() - started < 1
    timer = threading.Timer(0.05, lambda: post(server, "/bulk", {"commands": [
        {"name": "crm/events", "data": event(str(i))} for i in range(3)]}))
    timer.start()
    assert server.wait_for_events(3, timeout=5) is True
    timer.join()
    answer = requests.get(server.url + "/_local/wait_for_events?n=3&timeout=1", timeout=10).json()
    assert answer == {"success": True, "reached": True, "events": 3}
    answer = requests.get(server.url + "/_local/wait_for_events?n=4&timeout=0.01", timeout=10).json()
    assert answer["reached"] is False


def test_stop_is_prompt_with_idle_keep_alive_connections() -> None:
    local = LocalServer().start()
    sessions = [requests.Session() for _ in range(3)]
    for session in sessions:
        assert session.post(local.url + "/crm/events", json=event(), timeout=10).status_code == 200
    started = time.monotonic()
    local.stop()
    assert time.monotonic() - started < 1
    with pytest.raises(requests.ConnectionError):
        sessions[0].post(local.url + "/crm/events", json=event(), timeout=2)
    for session in sessions:
        session.close()
    assert len(local.events()) == 3  # data stays readable after stop


def test_restart_keeps_port_and_data() -> None:
    local = LocalServer().start()
    url = local.url
    post(local, "/crm/events", event())
    local.stop()
    local.start()
    try:
        assert local.url == url
        post(local, "/crm/events", event())
        assert len(local.events()) == 2
    finally:
        local.close()


def test_db_file_survives_restart(tmp_path: Any) -> None:
    db = str(tmp_path / "store.sqlite")
    with LocalServer(db=db) as first:
        post(first, "/crm/events", event(command_id="e1"))
        post(first, "/crm/customers", {"company_id": "co", "ids": {"registered": "john"}, "properties": {"a": 1},
                                       "timestamp": 50, "command_id": "u1"})
    first.close()
    second = LocalServer(db=db).start()
    try:
        assert [e["command_id"] for e in second.events()] == ["e1"]
        assert second.customer("john") == {"a": 1}
        assert post(second, "/crm/events", event(command_id="e1")).status_code == 200
        post(second, "/crm/customers", {"company_id": "co", "ids": {"registered": "john"}, "properties": {"a": 0},
                                        "timestamp": 40})
        assert len(second.events()) == 1 and second.stats()["duplicates"] == 1
        assert second.customer("john") == {"a": 1}  # the stored timestamp still wins
    finally:
        second.close()


def test_verbose_logs_one_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="seven_segments.testing.server"):
        with LocalServer(verbose=True, users={"u": "pw-never-logged"}) as local:
            post(local, "/crm/events", event())
            requests.post(local.url + "/analytics/funnel", json={}, auth=("u", "pw-never-logged"), timeout=10)
    lines = [r.getMessage() for r in caplog.records if r.name == "seven_segments.testing.server"]
    assert any("POST /crm/events -> 200" in line for line in lines)
    assert len([line for line in lines if "POST" in line]) == 2
    assert "pw-never-logged" not in caplog.text


def test_no_log_line_shows_a_company_token(caplog: pytest.LogCaptureFixture) -> None:
    token = "company-TOKEN-never-logged-7"
    with caplog.at_level(logging.DEBUG, logger="seven_segments.testing.server"):
        with LocalServer(verbose=True) as local:
            answer = requests.post(local.url + f"/analytics/funnel?company={token}", json={}, auth=("u", "pw"), timeout=10)
            assert answer.status_code == 400
            requests.get(local.url + f"/_local/events?company={token}", timeout=10)
            requests.get(local.url + f"/_local/events?%ZZ&company={token}", timeout=10)  # a malformed query too
    lines = [r.getMessage() for r in caplog.records if r.name == "seven_segments.testing.server"]
    assert any("POST /analytics/funnel?company=*** -> 400" in line for line in lines), lines
    assert any("GET /_local/events?company=*** -> 200" in line for line in lines), lines
    assert token not in caplog.text


def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_serves_ipv6_when_asked_and_the_client_reaches_it() -> None:
    from seven_segments import SevenSegments

    with LocalServer(host="::1") as local:
        assert local.url == f"http://[::1]:{local.port}"
        SevenSegments("co", "john", target=local.url).track("visit")
        with SevenSegments("co", "john", target=local.url + "/", buffered=True) as buffered:
            buffered.track("visit")
            assert buffered.flush(10)
        assert len(local.events()) == 2
        assert requests.get(local.url + "/_local/stats", timeout=10).json()["stats"]["events"] == 2


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        LocalServer().url

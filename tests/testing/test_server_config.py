"""Configuring the local server: checked assignments, the index, --db counts, the pytest factory and marker."""

from __future__ import annotations

import json
import time
from typing import Any, Dict

import pytest
import requests

from seven_segments.testing import LocalServer

EVENT = {"company_id": "co", "customer_ids": {"registered": "john"}, "type": "visit"}
HTML = {"company_id": "co", "customer_ids": {"registered": "john"}, "html_campaign_name": "Banner"}


def test_wait_for_events_counts_events_a_db_file_holds_already(tmp_path: Any) -> None:
    db = str(tmp_path / "store.sqlite")
    with LocalServer(db=db) as first:
        for number in range(3):
            requests.post(first.url + "/crm/events", json=dict(EVENT, command_id=f"e{number}"), timeout=10)
    first.close()
    with LocalServer(db=db) as second:
        assert second.stats()["events"] == 3 == len(second.events())
        assert second.wait_for_events(3, timeout=0)
        answer = requests.get(second.url + "/_local/wait_for_events?n=3&timeout=0", timeout=10).json()
        assert answer == {"success": True, "reached": True, "events": 3}
        assert not second.wait_for_events(4, timeout=0.01)
        requests.post(second.url + "/crm/events", json=dict(EVENT, command_id="e0"), timeout=10)  # a duplicate
        requests.post(second.url + "/crm/events", json=dict(EVENT, command_id="e9"), timeout=10)
        assert second.wait_for_events(4, timeout=5) and second.stats()["events"] == 4
        assert second.stats()["requests"] == 2  # the other counters start at 0
        second.reset()
        assert second.stats()["events"] == 0 and second.events() == []
    second.close()


def test_index_of_the_local_endpoints_is_never_delayed() -> None:
    with LocalServer(latency=0.5) as server:
        started = time.perf_counter()
        for path in ("/", "/_local/", "/_local"):
            answer = requests.get(server.url + path, timeout=10)
            assert answer.status_code == 200, path
            index = answer.json()
            assert index["success"] is True
            assert "GET /_local/stats" in index["local"] and "POST /_local/latency" in index["local"]
            assert "POST /bulk" in index["api"]
        assert time.perf_counter() - started < 0.4
        assert requests.post(server.url + "/_local/", timeout=10).status_code == 405
        assert server.requests() == [] and server.stats()["requests"] == 0


def test_assigned_configuration_is_checked_and_used() -> None:
    with LocalServer() as server:
        server.campaigns = {"Banner": "<b>hi</b>"}
        answer = requests.post(server.url + "/campaigns/html/get", json=HTML, timeout=10)
        assert answer.json() == {"success": True, "data": "<b>hi</b>"}
        server.tokens = ["good-token"]
        assert requests.post(server.url + "/crm/events", json=EVENT, timeout=10).status_code == 401
        server.tokens = None
        server.users = {"jane": "pw"}
        server.analyses = {"f1": {"type": "funnel", "steps": ["visit"]}}
        funnel = server.url + "/analytics/funnel"
        assert requests.post(funnel, json={"analysis_id": "f1"}, auth=("jane", "bad"), timeout=10).status_code == 401
        assert requests.post(funnel, json={"analysis_id": "f1"}, auth=("jane", "pw"), timeout=10).status_code == 200
        assert set(server.campaigns) == {"Banner"} and server.users == {"jane": "pw"}


@pytest.mark.parametrize("name, value, message", [
    ("campaigns", {"Banner": 5}, "campaign 'Banner' must be HTML text or an object"),
    ("campaigns", {"B": {"html": "x", "condition": {"property": "p"}}}, "campaign 'B' condition must have"),
    ("campaigns", 12, "campaigns must be a mapping or the path of a JSON file, not int"),
    ("analyses", {"a": {"type": "nope"}}, "analysis 'a' must be an object whose type is one of"),
    ("users", [("jane", "pw")], "users must be a mapping of user name to password, not list"),
    ("users", {"jane": 5}, "the password of user 'jane' must be a string"),
    ("users", {"": "pw"}, "user name '' must be a non-empty string"),
    ("tokens", "one-token", "tokens must be a collection of company tokens (a list or set), not str"),
    ("tokens", ["ok", ""], "tokens must all be non-empty strings"),
])
def test_bad_assignment_is_refused_at_once_naming_the_problem(name: str, value: Any, message: str) -> None:
    server = LocalServer()
    before = getattr(server, name)
    with pytest.raises(ValueError) as raised:
        setattr(server, name, value)
    assert message in str(raised.value)
    assert getattr(server, name) == before
    with pytest.raises(ValueError, match=message.split("(")[0][:20]):
        LocalServer(**{name: value})


def test_bad_files_are_named(tmp_path: Any) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"campaigns file '.*broken\.json' is not valid JSON: "):
        LocalServer(campaigns=str(broken))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"Banner": 5}))
    with pytest.raises(ValueError, match=r"campaigns file '.*wrong\.json': campaign 'Banner' must be"):
        LocalServer(campaigns=str(wrong))
    with pytest.raises(ValueError, match=r"analyses file '.*wrong\.json': analysis 'Banner' must be"):
        LocalServer(analyses=str(wrong))
    with pytest.raises(ValueError, match=r"analyses file '.*missing\.json' cannot be read: No such file"):
        LocalServer(analyses=str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"db '.*' cannot be used as an SQLite database: "):
        LocalServer(db=str(tmp_path / "no" / "dir" / "x.db"))
    with pytest.raises(ValueError, match=r"db '.*broken\.json' cannot be used as an SQLite database: file is not a"):
        LocalServer(db=str(broken))


def test_busy_port_is_named() -> None:
    with LocalServer() as first:
        second = LocalServer(port=first.port)
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{first.port}: "):
            second.start()
        assert not second.running
        second.close()


def test_a_bug_in_the_server_answers_500_and_keeps_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    with LocalServer(campaigns={"Banner": "<b>hi</b>"}) as server:
        def broken(*args: Any) -> Dict[str, Any]:
            raise RuntimeError("a bug")

        monkeypatch.setattr(server._api, "_html", broken)  # noqa: SLF001 - a bug inside the API routes
        answer = requests.post(server.url + "/campaigns/html/get", json=HTML, timeout=10)
        assert answer.status_code == 500
        assert answer.json() == {"success": False, "errors": ["internal error of the local server: RuntimeError"]}
        assert requests.post(server.url + "/crm/events", json=EVENT, timeout=10).status_code == 200


def test_factory_fixture_starts_configured_servers(seven_segments_server_factory: Any) -> None:
    first = seven_segments_server_factory(campaigns={"Banner": "<b>one</b>"}, tokens=["co"])
    second = seven_segments_server_factory(campaigns={"Banner": "<b>two</b>"})
    assert first.running and second.running and first.port != second.port
    assert requests.post(first.url + "/campaigns/html/get", json=HTML, timeout=10).json()["data"] == "<b>one</b>"
    assert requests.post(second.url + "/campaigns/html/get", json=HTML, timeout=10).json()["data"] == "<b>two</b>"
    with pytest.raises(TypeError):
        seven_segments_server_factory(campains={})


@pytest.mark.seven_segments_server(campaigns={"Banner": "<b>marked</b>"}, users={"jane": "pw"})
def test_marker_configures_the_fixture(seven_segments_server: LocalServer) -> None:
    answer = requests.post(seven_segments_server.url + "/campaigns/html/get", json=HTML, timeout=10)
    assert answer.json()["data"] == "<b>marked</b>"
    assert seven_segments_server.users == {"jane": "pw"}


def test_fixture_without_marker_is_the_default(seven_segments_server: LocalServer) -> None:
    assert seven_segments_server.campaigns == {} and seven_segments_server.users is None
    assert seven_segments_server.running and seven_segments_server.tokens is None

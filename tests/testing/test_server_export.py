"""Campaigns and the export API of the local server, results checked against independent computations."""

from __future__ import annotations

import base64
import datetime
import json
import statistics
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from seven_segments.testing import LocalServer

JSON = {"Content-Type": "application/json"}
CAMPAIGNS = {
    "Banner left": '<img src="/my-awesome-banner-1.png" />',
    "VIP banner": {"html": "<b>VIP</b>", "condition": {"property": "vip", "equals": True}},
    "Plan banner": {"html": "<i>plan</i>", "condition": {"property": "plan", "in": ["gold", "silver"]}},
    "Anonymous": {"html": "hello stranger", "condition": {"property": "email", "exists": False}},
    "Combo": {"html": "combo", "condition": {"all": [{"property": "vip", "equals": True},
                                                     {"not": {"property": "plan", "equals": "gold"}}]}},
}
STEPS = ["First visit", "Registration", "Purchase"]
ANALYSES = {
    "f1": {"type": "funnel", "name": "Conversion funnel", "steps": STEPS, "metric": {"step": 2, "property": "price"}},
    "f2": {"type": "funnel", "name": "Plain", "steps": ["First visit", "Purchase"]},
    "r1": {"type": "report", "name": "Events by type"},
    "r2": {"type": "report", "name": "Purchases by product", "event": "Purchase", "property": "product",
           "sum": "price"},
    "t1": {"type": "retention", "name": "Retention", "days": 4},
    "s1": {"type": "segmentation", "name": "By plan", "property": "plan"},
}
USERS = {"analyst": "s3cret"}


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer(campaigns=CAMPAIGNS, analyses=ANALYSES, users=USERS) as local:
        yield local


def post(server: LocalServer, path: str, body: Any, auth: Optional[Tuple[str, str]] = ("analyst", "s3cret"),
         params: Optional[Dict[str, str]] = None) -> requests.Response:
    return requests.post(server.url + path, data=json.dumps(body), headers=JSON, auth=auth, params=params, timeout=10)


def track(server: LocalServer, company: str, customer: str, type_: str, timestamp: float, **properties: Any) -> None:
    answer = post(server, "/crm/events", {"company_id": company, "customer_ids": {"registered": customer},
                                          "type": type_, "properties": properties, "timestamp": timestamp}, auth=None)
    assert answer.status_code == 200


def set_properties(server: LocalServer, company: str, customer: str, **properties: Any) -> None:
    answer = post(server, "/crm/customers", {"company_id": company, "ids": {"registered": customer},
                                             "properties": properties}, auth=None)
    assert answer.status_code == 200


def html(server: LocalServer, customer: str, name: str) -> requests.Response:
    return post(server, "/campaigns/html/get", {"company_id": "co", "customer_ids": {"registered": customer},
                                                "html_campaign_name": name}, auth=None)


# -- campaigns -------------------------------------------------------------------------------------


def test_plain_campaign(server: LocalServer) -> None:
    answer = html(server, "anyone", "Banner left")
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "data": '<img src="/my-awesome-banner-1.png" />'}


def test_unknown_campaign_is_404(server: LocalServer) -> None:
    answer = html(server, "anyone", "Nope")
    assert answer.status_code == 404 and answer.json()["success"] is False


def test_campaign_conditions_on_merged_properties(server: LocalServer) -> None:
    assert html(server, "john", "VIP banner").json()["data"] == ""
    assert html(server, "john", "Anonymous").json()["data"] == "hello stranger"
    set_properties(server, "co", "john", vip=True, plan="silver", email="j@x")
    assert html(server, "john", "VIP banner").json()["data"] == "<b>VIP</b>"
    assert html(server, "john", "Plan banner").json()["data"] == "<i>plan</i>"
    assert html(server, "john", "Anonymous").json()["data"] == ""
    assert html(server, "john", "Combo").json()["data"] == "combo"
    set_properties(server, "co", "john", plan="gold")
    assert html(server, "john", "Combo").json()["data"] == ""
    set_properties(server, "co", "mary", vip=1)
    assert html(server, "mary", "VIP banner").json()["data"] == ""  # 1 is not true


def test_campaign_request_validation(server: LocalServer) -> None:
    answer = post(server, "/campaigns/html/get", {"company_id": "co", "customer_ids": {"registered": ""},
                                                  "html_campaign_name": "", "x": 1}, auth=None)
    assert answer.status_code == 400
    assert answer.json()["errors"] == ["x is not a known field", "customer_ids.registered must be a non-empty string",
                                       "html_campaign_name must be a non-empty string"]


def test_campaigns_from_file_and_bad_definitions(tmp_path: Any) -> None:
    path = tmp_path / "campaigns.json"
    path.write_text(json.dumps(CAMPAIGNS))
    with LocalServer(campaigns=str(path)) as local:
        assert html(local, "a", "Banner left").json()["data"].startswith("<img")
    with pytest.raises(ValueError, match="Bad"):
        LocalServer(campaigns={"Bad": {"html": "x", "condition": {"property": "a", "equals": 1, "in": [1]}}})
    with pytest.raises(ValueError):
        LocalServer(campaigns={"Bad": 5})


# -- export API: access ----------------------------------------------------------------------------


def test_export_requires_basic_credentials(server: LocalServer) -> None:
    for auth in (None, ("analyst", "wrong"), ("nobody", "s3cret")):
        answer = post(server, "/analytics/funnel", {"analysis_id": "f1"}, auth=auth)
        assert answer.status_code == 401 and answer.json()["success"] is False
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert post(server, "/analytics/funnel", {"analysis_id": "f1"}).status_code == 200


def test_password_never_recorded_in_clear(server: LocalServer) -> None:
    post(server, "/analytics/funnel", {"analysis_id": "f1"})
    record = server.requests()[-1]
    assert record["user"] == "analyst"
    assert "s3cret" not in json.dumps(record)
    assert base64.b64encode(b"analyst:s3cret").decode() not in json.dumps(record)


def test_any_user_when_users_not_configured() -> None:
    with LocalServer(analyses=ANALYSES) as local:
        assert post(local, "/analytics/report", {"analysis_id": "r1"}, auth=("x", "y")).status_code == 200
        assert post(local, "/analytics/report", {"analysis_id": "r1"}, auth=None).status_code == 401


def test_unknown_type_and_analysis_are_404(server: LocalServer) -> None:
    assert post(server, "/analytics/cohorts", {"analysis_id": "f1"}).status_code == 404
    assert post(server, "/analytics/funnel", {"analysis_id": "nope"}).status_code == 404
    assert post(server, "/analytics/report", {"analysis_id": "f1"}).status_code == 404
    answer = post(server, "/analytics/funnel", {})
    assert answer.status_code == 400 and answer.json()["errors"] == ["analysis_id must be a non-empty string"]


def test_company_choice(server: LocalServer) -> None:
    # No data at all: the analysis over nothing.
    answer = post(server, "/analytics/funnel", {"analysis_id": "f1"})
    assert answer.json()["total"]["counts"] == [0, 0, 0]
    track(server, "one", "a", "First visit", 1)
    assert post(server, "/analytics/funnel", {"analysis_id": "f1"}).json()["total"]["counts"] == [1, 0, 0]
    track(server, "two", "b", "First visit", 1)
    track(server, "two", "c", "First visit", 1)
    answer = post(server, "/analytics/funnel", {"analysis_id": "f1"})
    assert answer.status_code == 400
    assert answer.json()["errors"] == ["this user can reach 2 companies; pick one with ?company=TOKEN"]
    answer = post(server, "/analytics/funnel", {"analysis_id": "f1"}, params={"company": "two"})
    assert answer.json()["total"]["counts"] == [2, 0, 0]


def test_company_outside_tokens_is_403() -> None:
    with LocalServer(analyses=ANALYSES, users=USERS, tokens=["one", "two"]) as local:
        answer = post(local, "/analytics/funnel", {"analysis_id": "f1"}, params={"company": "three"})
        assert answer.status_code == 403 and answer.json()["success"] is False
        assert post(local, "/analytics/funnel", {"analysis_id": "f1"}).status_code == 400
        assert post(local, "/analytics/funnel", {"analysis_id": "f1"}, params={"company": "one"}).status_code == 200
    with LocalServer(analyses=ANALYSES, users=USERS, tokens=["only"]) as local:
        assert post(local, "/analytics/funnel", {"analysis_id": "f1"}).status_code == 200


def test_bad_analysis_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="steps"):
        LocalServer(analyses={"x": {"type": "funnel", "steps": []}})
    with pytest.raises(ValueError, match="type"):
        LocalServer(analyses={"x": {"type": "pie"}})
    with pytest.raises(ValueError, match="metric"):
        LocalServer(analyses={"x": {"type": "funnel", "steps": ["a"], "metric": {"step": 3, "property": "p"}}})


# -- export API: results vs independent computation -------------------------------------------------

DAY = 86400
BASE = 1_700_000_000 - 1_700_000_000 % DAY  # a UTC midnight


def scenario() -> List[Tuple[str, str, float, Dict[str, Any]]]:
    """Deterministic events: (customer, type, timestamp, properties), distinct timestamps per customer."""
    events = []
    for index in range(40):
        customer = f"cust{index}"
        start = BASE + (index % 3) * DAY + index * 10
        events.append((customer, "First visit", start, {}))
        if index % 2 == 0:
            events.append((customer, "Registration", start + 100 + index, {}))
        if index % 4 == 0:
            events.append((customer, "Purchase", start + 500 + 3 * index,
                           {"price": index + 0.5, "product": ["bottle", "cup"][index % 8 // 4]}))
        if index % 5 == 0:  # purchase without registration, and a repeat visit on a later day
            events.append((customer, "Purchase", start + 50, {"price": 1, "product": "cup"}))
            events.append((customer, "First visit", start + 2 * DAY, {}))
        if index % 7 == 0:  # registration before the first visit does not count
            events.append((customer, "Registration", start - 5, {}))
    return events


@pytest.fixture
def loaded(server: LocalServer) -> LocalServer:
    commands = [{"name": "crm/events", "data": {"company_id": "co", "customer_ids": {"registered": c}, "type": t,
                                                "properties": p, "timestamp": ts}} for c, t, ts, p in scenario()]
    commands.reverse()  # arrival order must not matter
    assert requests.post(server.url + "/bulk", json={"commands": commands}, timeout=10).status_code == 200
    for index in range(0, 40, 3):
        set_properties(server, "co", f"cust{index}", plan=["gold", "silver"][index % 2])
    set_properties(server, "co", "no-events", plan="gold")
    return server


def by_customer() -> Dict[str, List[Tuple[float, str, Dict[str, Any]]]]:
    grouped: Dict[str, List[Tuple[float, str, Dict[str, Any]]]] = defaultdict(list)
    for customer, type_, ts, props in scenario():
        grouped[customer].append((ts, type_, props))
    for events in grouped.values():
        events.sort(key=lambda e: e[0])
    return grouped


def expected_funnel(steps: List[str], metric: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    reached: List[List[Tuple[float, Dict[str, Any]]]] = []
    for events in by_customer().values():
        path: List[Tuple[float, Dict[str, Any]]] = []
        for ts, type_, props in events:
            if len(path) < len(steps) and type_ == steps[len(path)]:
                path.append((ts, props))
        reached.append(path)
    counts = [sum(1 for p in reached if len(p) > i) for i in range(len(steps))]
    times: List[float] = [-1]
    for i in range(1, len(steps)):
        gaps = [p[i][0] - p[i - 1][0] for p in reached if len(p) > i]
        times.append(statistics.median(gaps) if gaps else -1)
    whole = [p[-1][0] - p[0][0] for p in reached if len(p) == len(steps)]
    times.append(statistics.median(whole) if whole else -1)
    total_metric = None
    if metric:
        total_metric = sum(p[metric["step"]][1].get(metric["property"], 0) for p in reached if len(p) > metric["step"])
    return {"counts": counts, "times": times, "metric": total_metric}


def test_funnel_matches_independent_computation(loaded: LocalServer) -> None:
    answer = post(loaded, "/analytics/funnel", {"analysis_id": "f1"})
    assert answer.status_code == 200
    result = answer.json()
    assert result["success"] is True and result["name"] == "Conversion funnel" and result["steps"] == STEPS
    assert result["drill_down"] == {"type": "none", "series": []}
    assert result["metric"] == {"step": 2, "property": "price"}
    expected = expected_funnel(STEPS, ANALYSES["f1"]["metric"])  # type: ignore[arg-type]
    assert result["total"]["counts"] == expected["counts"]
    assert result["total"]["times"] == pytest.approx(expected["times"])
    assert result["total"]["metric"] == pytest.approx(expected["metric"])
    assert len(result["total"]["times"]) == len(STEPS) + 1 and result["total"]["times"][0] == -1
    assert expected["counts"][0] == 40 and 0 < expected["counts"][2] < expected["counts"][1] < 40

    plain = post(loaded, "/analytics/funnel", {"analysis_id": "f2"}).json()
    expected = expected_funnel(["First visit", "Purchase"], None)
    assert plain["total"]["counts"] == expected["counts"]
    assert plain["total"]["times"] == pytest.approx(expected["times"])
    assert plain["metric"] is None and plain["total"]["metric"] is None


def test_report_matches_independent_computation(loaded: LocalServer) -> None:
    result = post(loaded, "/analytics/report", {"analysis_id": "r1"}).json()
    events: Dict[str, int] = defaultdict(int)
    customers: Dict[str, set] = defaultdict(set)  # type: ignore[type-arg]
    for customer, type_, _ts, _props in scenario():
        events[type_] += 1
        customers[type_].add(customer)
    assert {row["key"]: (row["events"], row["customers"]) for row in result["rows"]} == {
        key: (events[key], len(customers[key])) for key in events}
    assert [row["events"] for row in result["rows"]] == sorted(events.values(), reverse=True)
    assert result["total"] == {"events": len(scenario()), "customers": 40}
    assert result["group_by"] == "type"

    result = post(loaded, "/analytics/report", {"analysis_id": "r2"}).json()
    sums: Dict[str, float] = defaultdict(float)
    counts: Dict[str, int] = defaultdict(int)
    for _customer, type_, _ts, props in scenario():
        if type_ == "Purchase":
            sums[props["product"]] += props["price"]
            counts[props["product"]] += 1
    assert {row["key"]: row["events"] for row in result["rows"]} == counts
    assert {row["key"]: row["sum"] for row in result["rows"]} == pytest.approx(sums)
    assert result["total"]["sum"] == pytest.approx(sum(sums.values()))
    assert result["group_by"] == {"property": "product"}


def test_retention_matches_independent_computation(loaded: LocalServer) -> None:
    result = post(loaded, "/analytics/retention", {"analysis_id": "t1"}).json()

    def day(ts: float) -> datetime.date:
        return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc).date()

    active: Dict[str, set] = defaultdict(set)  # type: ignore[type-arg]
    for customer, _type, ts, _props in scenario():
        active[customer].add(day(ts))
    cohorts: Dict[datetime.date, List[str]] = defaultdict(list)
    for customer, days in active.items():
        cohorts[min(days)].append(customer)
    expected = [{"date": d.isoformat(), "size": len(members),
                 "counts": [sum(1 for m in members if d + datetime.timedelta(days=k) in active[m]) for k in range(4)]}
                for d, members in sorted(cohorts.items())]
    assert [{key: c[key] for key in ("date", "size", "counts")} for c in result["cohorts"]] == expected
    assert result["days"] == 4
    for cohort in result["cohorts"]:
        assert cohort["retention"] == pytest.approx([count / cohort["size"] for count in cohort["counts"]])
        assert cohort["counts"][0] == cohort["size"]
    assert any(c["counts"][2] > 0 for c in result["cohorts"])  # the repeat visits show up


def test_segmentation_matches_independent_computation(loaded: LocalServer) -> None:
    result = post(loaded, "/analytics/segmentation", {"analysis_id": "s1"}).json()
    plans: Dict[Any, int] = defaultdict(int)
    for index in range(40):
        plans[["gold", "silver"][index % 2] if index % 3 == 0 else None] += 1
    plans["gold"] += 1  # the customer with properties and no events
    assert {json.dumps(s["value"]): s["customers"] for s in result["segments"]} == {
        json.dumps(k): v for k, v in plans.items()}
    assert result["total"] == 41 and result["property"] == "plan"
    assert [s["customers"] for s in result["segments"]] == sorted(plans.values(), reverse=True)


def test_analyses_from_file(tmp_path: Any) -> None:
    path = tmp_path / "analyses.json"
    path.write_text(json.dumps(ANALYSES))
    with LocalServer(analyses=str(path)) as local:
        track(local, "co", "a", "First visit", 1)
        track(local, "co", "a", "Purchase", 5, price=3)
        result = post(local, "/analytics/funnel", {"analysis_id": "f2"}).json()
        assert result["total"] == {"counts": [1, 1], "times": [-1, 4, 4], "metric": None}


def test_funnel_step_with_condition() -> None:
    analyses = {"big": {"type": "funnel", "name": "Big purchases", "steps": [
        "First visit", {"name": "Big purchase", "event": "Purchase", "condition": {"property": "price", "in": [100]}}]}}
    with LocalServer(analyses=analyses) as local:
        track(local, "co", "a", "First visit", 1)
        track(local, "co", "a", "Purchase", 2, price=5)
        track(local, "co", "b", "First visit", 1)
        track(local, "co", "b", "Purchase", 3, price=100)
        result = post(local, "/analytics/funnel", {"analysis_id": "big"}, auth=("u", "p")).json()
        assert result["steps"] == ["First visit", "Big purchase"]
        assert result["total"]["counts"] == [2, 1] and result["total"]["times"] == [-1, 2, 2]

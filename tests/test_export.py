"""``AuthenticatedSevenSegments.export_analysis`` against the LocalServer's export API.

The funnel is computed independently here from the events the test tracked (explicit timestamps).
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from seven_segments import (
    AuthenticatedSevenSegments,
    AuthenticationError,
    InvalidRequest,
    SevenSegments,
    SevenSegmentsError,
)
from seven_segments.testing import LocalServer

pytestmark = pytest.mark.timeout(20)

USER = "alice"
PASSWORD = "pw-SECRET-export-1618033"
TOKEN = "export-company-SECRET-aaa"
OTHER_TOKEN = "export-company-SECRET-bbb"
FUNNEL_ID = "2f86608f-24f5-11e3-9950-c48508494cf5"
STEPS = ["visit", "register", "purchase"]
ANALYSES = {
    FUNNEL_ID: {
        "type": "funnel", "name": "Conversion funnel", "steps": STEPS, "metric": {"step": 2, "property": "price"},
    },
    "report-1": {"type": "report", "name": "Purchases", "event": "purchase", "sum": "price"},
    "retention-1": {"type": "retention", "name": "Back again", "days": 3},
    "segmentation-1": {"type": "segmentation", "name": "By plan", "property": "plan"},
}
DAY = 86400.0
BASE = 1_700_006_400.0  # 2023-11-15T00:00:00Z

Customer = Any
#: (customer, event type, properties, timestamp), deliberately tracked out of time order.
EVENTS: List[Tuple[Customer, str, Dict[str, Any], float]] = [
    ("c1", "purchase", {"price": 10}, BASE + 400),
    ("c1", "visit", {}, BASE + 100),
    ("c1", "register", {}, BASE + 160),
    ("c2", "visit", {}, BASE + 200),
    ("c2", "purchase", {"price": 1}, BASE + 250),  # before registering: not the funnel's purchase
    ("c2", "register", {}, BASE + 300),
    ("c2", "purchase", {"price": 5.5}, BASE + 500),
    ("c2", "purchase", {"price": 7}, BASE + DAY + 10),  # a later purchase: not matched again
    ("c3", "register", {}, BASE + 50),  # before visiting: ignored
    ("c3", "visit", {}, BASE + 60),
    ("c4", "purchase", {"price": 99}, BASE + 10),
    ("c5", "visit", {}, BASE + 1000),
    ("c5", "register", {}, BASE + 1100),
    ({"cookie": "c6"}, "visit", {}, BASE + 5),
    ({"cookie": "c6"}, "register", {}, BASE + 6),
    ({"cookie": "c6"}, "purchase", {"price": "free"}, BASE + 7),  # not a number: counts 0
    ({"cookie": "c6"}, "visit", {}, BASE + 2 * DAY),
]


def expected_funnel() -> Dict[str, Any]:
    """The funnel of EVENTS, computed here from its definition (greedy, in time order)."""
    ordered = sorted(EVENTS, key=lambda event: event[3])
    matched: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {}
    for customer, event_type, properties, timestamp in ordered:
        key = repr(customer)
        done = matched.setdefault(key, [])
        if len(done) < len(STEPS) and event_type == STEPS[len(done)]:
            done.append((timestamp, properties))
    counts = [sum(1 for done in matched.values() if len(done) > step) for step in range(len(STEPS))]
    times: List[Any] = [-1]
    for step in range(1, len(STEPS)):
        gaps = [done[step][0] - done[step - 1][0] for done in matched.values() if len(done) > step]
        times.append(statistics.median(gaps) if gaps else -1)
    whole = [done[-1][0] - done[0][0] for done in matched.values() if len(done) == len(STEPS)]
    times.append(statistics.median(whole) if whole else -1)
    metric = 0.0
    for done in matched.values():
        if len(done) > 2:
            price = done[2][1].get("price")
            if isinstance(price, (int, float)) and not isinstance(price, bool):
                metric += price
    return {
        "success": True,
        "name": "Conversion funnel",
        "steps": STEPS,
        "total": {"counts": counts, "times": times, "metric": metric},
        "drill_down": {"type": "none", "series": []},
        "metric": {"step": 2, "property": "price"},
    }


def test_expected_funnel_is_what_we_think() -> None:
    # A hand check of the independent computation: c1, c2, c6 complete; c3, c5 reach step 1 / 2.
    funnel = expected_funnel()
    assert funnel["total"]["counts"] == [5, 4, 3]
    assert funnel["total"]["times"] == [-1, 80, 200, 300]  # medians of [1, 60, 100, 100], [1, 200, 240], [2, 300, 300]
    assert funnel["total"]["metric"] == 15.5


def track_all(url: str, token: str = TOKEN) -> None:
    with SevenSegments(token, target=url) as client:
        for customer, event_type, properties, timestamp in EVENTS:
            client.track(event_type, properties, customer=customer, timestamp=timestamp)
        client.update({"plan": "pro"}, customer="c1", timestamp=BASE)
        client.update({"plan": "pro"}, customer="c2", timestamp=BASE)
        client.update({"plan": "free"}, customer="c3", timestamp=BASE)


@pytest.fixture(scope="module")
def loaded() -> Iterator[LocalServer]:
    with LocalServer(users={USER: PASSWORD}, analyses=ANALYSES) as local:
        track_all(local.url)
        yield local


@pytest.fixture
def client(loaded: LocalServer) -> Iterator[AuthenticatedSevenSegments]:
    with AuthenticatedSevenSegments(USER, PASSWORD, target=loaded.url) as made:
        yield made


def last_request(server: LocalServer) -> Dict[str, Any]:
    return server.requests()[-1]


def test_seed_funnel_export_equals_independent_computation(loaded: LocalServer, client: AuthenticatedSevenSegments) -> None:
    assert len(loaded.events()) == len(EVENTS)
    result = client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
    assert result == expected_funnel()
    request = last_request(loaded)
    assert request["path"] == "/analytics/funnel"
    assert request["method"] == "POST"
    assert request["user"] == USER
    assert request["body"] == {"analysis_id": FUNNEL_ID}
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["content-type"].split(";")[0] == "application/json"
    assert headers["user-agent"].startswith("seven-segments-python/")
    assert headers["authorization"].startswith("Basic ")


def test_token_adds_company_query(loaded: LocalServer, client: AuthenticatedSevenSegments) -> None:
    result = client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=TOKEN)
    assert result == expected_funnel()
    assert last_request(loaded)["path"] == f"/analytics/funnel?company={TOKEN}"
    empty = client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token="a-company-without-data")
    assert empty["total"]["counts"] == [0, 0, 0]
    assert empty["total"]["times"] == [-1, -1, -1, -1]


def test_several_companies_need_token() -> None:
    with LocalServer(users={USER: PASSWORD}, analyses=ANALYSES) as local:
        track_all(local.url, TOKEN)
        with SevenSegments(OTHER_TOKEN, customer="z", target=local.url) as other:
            other.track("visit", timestamp=BASE)
        client = AuthenticatedSevenSegments(USER, PASSWORD, target=local.url)
        with pytest.raises(InvalidRequest) as caught:
            client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
        assert caught.value.status == 400
        assert "?company=" in " ".join(caught.value.errors)
        assert client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=TOKEN) == expected_funnel()
        assert client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=OTHER_TOKEN)["total"]["counts"] == [1, 0, 0]


def test_no_access_to_company_is_403_without_token_in_message() -> None:
    with LocalServer(users={USER: PASSWORD}, analyses=ANALYSES, tokens=[TOKEN]) as local:
        client = AuthenticatedSevenSegments(USER, PASSWORD, target=local.url)
        with pytest.raises(AuthenticationError) as caught:
            client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=OTHER_TOKEN)
        assert caught.value.status == 403
        assert len(local.requests()) == 1
        for text in (str(caught.value), repr(caught.value), repr(client)):
            assert OTHER_TOKEN not in text and PASSWORD not in text


def test_wrong_password_is_401_without_password(loaded: LocalServer) -> None:
    wrong = "pw-SECRET-wrong-2718281"
    client = AuthenticatedSevenSegments(USER, wrong, target=loaded.url)
    before = len(loaded.requests())
    with pytest.raises(AuthenticationError) as caught:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
    assert caught.value.status == 401
    assert caught.value.errors
    assert len(loaded.requests()) == before + 1  # not retried
    for text in (str(caught.value), repr(caught.value), repr(client), str(client), *caught.value.errors):
        assert wrong not in text and PASSWORD not in text
    assert USER in repr(client)


def test_unknown_user_is_401(loaded: LocalServer) -> None:
    client = AuthenticatedSevenSegments("mallory", PASSWORD, target=loaded.url)
    with pytest.raises(AuthenticationError) as caught:
        client.export_analysis("report", {"analysis_id": "report-1"})
    assert caught.value.status == 401


@pytest.mark.parametrize("analysis_type, analysis_id", [("funnel", "no-such-id"), ("report", FUNNEL_ID)])
def test_unknown_analysis_is_404(client: AuthenticatedSevenSegments, analysis_type: str, analysis_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.export_analysis(analysis_type, {"analysis_id": analysis_id})
    assert caught.value.status == 404
    assert analysis_id in " ".join(caught.value.errors)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(caught.value)


def test_missing_analysis_id_is_400(client: AuthenticatedSevenSegments) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.export_analysis("funnel", {})
    assert caught.value.status == 400


def test_report(client: AuthenticatedSevenSegments) -> None:
    result = client.export_analysis("report", {"analysis_id": "report-1"})
    purchases = [event for event in EVENTS if event[1] == "purchase"]
    assert result["success"] is True
    assert result["name"] == "Purchases"
    assert result["total"]["events"] == len(purchases)
    assert result["total"]["customers"] == len({repr(event[0]) for event in purchases})
    assert result["total"]["sum"] == 10 + 1 + 5.5 + 7 + 99


def test_retention(client: AuthenticatedSevenSegments) -> None:
    result = client.export_analysis("retention", {"analysis_id": "retention-1"})
    assert result["success"] is True
    assert result["days"] == 3
    (cohort,) = result["cohorts"]  # every customer started on BASE's day
    assert cohort["date"] == "2023-11-15"
    assert cohort["size"] == 6
    assert cohort["counts"] == [6, 1, 1]  # c2 came back on day 1, c6 on day 2


def test_segmentation(client: AuthenticatedSevenSegments) -> None:
    result = client.export_analysis("segmentation", {"analysis_id": "segmentation-1"})
    assert result["success"] is True
    assert result["total"] == 6
    segments = {segment["value"]: segment["customers"] for segment in result["segments"]}
    assert segments == {"pro": 2, "free": 1, None: 3}


@pytest.mark.parametrize("analysis_type, analysis_id", [
    ("funnel", FUNNEL_ID), ("report", "report-1"), ("retention", "retention-1"), ("segmentation", "segmentation-1"),
])
def test_each_type_answers_success_dict(client: AuthenticatedSevenSegments, analysis_type: str, analysis_id: str) -> None:
    result = client.export_analysis(analysis_type, {"analysis_id": analysis_id})
    assert isinstance(result, dict)
    assert result["success"] is True
    assert result["name"] == ANALYSES[analysis_id]["name"]


def test_export_retries_passing_failures(loaded: LocalServer, client: AuthenticatedSevenSegments) -> None:
    loaded.faults.fail_next(1, status=503)
    loaded.faults.drop_next(1)
    before = len(loaded.requests())
    assert client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}) == expected_funnel()
    assert [request["status"] for request in loaded.requests()[before:]] == [503, None, 200]


def test_closed_export_client(loaded: LocalServer) -> None:
    client = AuthenticatedSevenSegments(USER, PASSWORD, target=loaded.url)
    client.close()
    with pytest.raises(SevenSegmentsError) as caught:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("status", [307, 308])
def test_a_redirect_is_an_error_and_nothing_goes_to_the_other_host(
    loaded: LocalServer, client: AuthenticatedSevenSegments, witness: Any, status: int
) -> None:
    loaded.faults.redirect_next(1, witness.url, status=status)  # Location: <witness>/analytics/funnel?company=TOKEN
    with pytest.raises(SevenSegmentsError) as caught:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=TOKEN)
    assert type(caught.value) is SevenSegmentsError and caught.value.status == status
    assert f"redirects to {witness.url}/analytics/funnel?company=***;" in str(caught.value)
    for text in (str(caught.value), repr(caught.value)):
        assert TOKEN not in text and PASSWORD not in text
    assert witness.connections == 0 and witness.received == b""
    assert last_request(loaded)["status"] == status


@pytest.mark.parametrize(
    "user, password",
    [
        ("alice", "pässwörd-SECRET"),  # Latin-1: requests would send it as Latin-1, which is not UTF-8
        ("alice", "пароль-SECRET-€-密码"),  # outside Latin-1: requests would raise with the password in it
        ("zoë-€-用户", "pw-SECRET-ascii"),
    ],
)
def test_credentials_outside_ascii_are_sent_as_utf8(user: str, password: str) -> None:
    with LocalServer(users={user: password}, analyses=ANALYSES) as local:
        client = AuthenticatedSevenSegments(user, password, target=local.url)
        assert client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})["total"]["counts"] == [0, 0, 0]
        assert last_request(local)["user"] == user
        wrong = AuthenticatedSevenSegments(user, password + "-wrong", target=local.url)
        with pytest.raises(AuthenticationError) as caught:
            wrong.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
        assert password not in str(caught.value) + repr(caught.value)


def test_a_secret_that_is_not_text_is_refused_at_construction_without_it() -> None:
    password = "pw-SECRET-\ud800-lone-surrogate"
    with pytest.raises(ValueError) as caught:
        AuthenticatedSevenSegments(USER, password, target="http://127.0.0.1:9")
    assert "password" in str(caught.value) and "surrogate" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no UnicodeEncodeError holding it
    assert "SECRET" not in str(caught.value) + repr(caught.value)
    with pytest.raises(ValueError, match="username"):
        AuthenticatedSevenSegments("al\udcffice", PASSWORD, target="http://127.0.0.1:9")
    client = AuthenticatedSevenSegments(USER, PASSWORD, target="http://127.0.0.1:9")
    with pytest.raises(ValueError) as per_call:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token="tok-SECRET-\udc80")
    assert "token" in str(per_call.value) and "SECRET" not in str(per_call.value) + repr(per_call.value)
    with pytest.raises(ValueError) as tracking:
        SevenSegments("tok-SECRET-\udc80", target="http://127.0.0.1:9")
    assert "SECRET" not in str(tracking.value) + repr(tracking.value)

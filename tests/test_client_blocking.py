"""The blocking ``SevenSegments`` client against the real LocalServer over HTTP.

Every example of SEED.md, the exact bodies of docs/protocol.md, retries of passing failures, permanent
failures, and that no error or repr ever shows the token.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any, Dict, Iterator, List

import pytest
from freezegun import freeze_time

from seven_segments import (
    AuthenticationError,
    ClientClosedError,
    InvalidRequest,
    ServiceUnavailable,
    SevenSegments,
    SevenSegmentsError,
)
from seven_segments.testing import LocalServer

pytestmark = pytest.mark.timeout(20)

SEED_TOKEN = "12345678-90ab-cdef-1234-567890abcdef"
SECRET_TOKEN = "tok-ZQX-very-secret-31415926"
BANNER = '<img src="/my-awesome-banner-1.png" />'
CAMPAIGNS = {
    "Banner left": BANNER,
    "VIP banner": {"html": "<b>VIP</b>", "condition": {"property": "vip", "equals": True}},
}
COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
EVENT_KEYS = {"company_id", "customer_ids", "type", "properties", "timestamp", "command_id"}
CUSTOMER_KEYS = {"company_id", "ids", "properties", "timestamp", "command_id"}


@pytest.fixture
def campaign_server() -> Iterator[LocalServer]:
    with LocalServer(campaigns=CAMPAIGNS) as local:
        yield local


def api_requests(server: LocalServer, path: str = None) -> List[Dict[str, Any]]:
    found = server.requests()
    if path is not None:
        found = [request for request in found if request["path"] == path]
    return found


def assert_event_body(body: Dict[str, Any], *, token: str, ids: Dict[str, str], type_: str, properties: Dict[str, Any]) -> None:
    assert set(body) == EVENT_KEYS, body
    assert body["company_id"] == token
    assert body["customer_ids"] == ids
    assert body["type"] == type_
    assert body["properties"] == properties
    assert isinstance(body["timestamp"], (int, float)) and not isinstance(body["timestamp"], bool)
    assert abs(body["timestamp"] - time.time()) < 10
    assert isinstance(body["command_id"], str) and COMMAND_ID.fullmatch(body["command_id"])


def assert_headers(request: Dict[str, Any]) -> None:
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert request["method"] == "POST"
    assert headers["content-type"].split(";")[0].strip() == "application/json"
    assert headers["user-agent"].startswith("seven-segments-python/")


# -- SEED examples ---------------------------------------------------------------------------------


def test_seed_constructor_only_token_has_no_customer(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, target=server.url)
    assert client.customer is None
    with pytest.raises(ValueError, match="no customer identified"):
        client.track("purchase")
    assert server.requests() == []


def test_seed_constructor_customer_and_track(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    client.track("purchase")
    (request,) = server.requests()
    assert request["path"] == "/crm/events"
    assert request["status"] == 200
    assert_headers(request)
    assert_event_body(request["body"], token=SEED_TOKEN, ids={"registered": "john123"}, type_="purchase", properties={})
    (event,) = server.events()
    assert event["type"] == "purchase" and event["customer_ids"] == {"registered": "john123"}


def test_seed_identify_then_track_with_properties(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, target=server.url)
    client.identify("john123")
    assert client.customer == {"registered": "john123"}
    client.track("purchase", properties={"product": "bottle", "amount": 5})
    (request,) = server.requests()
    assert_headers(request)
    assert_event_body(
        request["body"], token=SEED_TOKEN, ids={"registered": "john123"}, type_="purchase",
        properties={"product": "bottle", "amount": 5},
    )
    assert type(request["body"]["properties"]["amount"]) is int


def test_seed_update(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    client.update({"first_name": "John", "last_name": "Smith"})
    (request,) = server.requests()
    assert request["path"] == "/crm/customers"
    assert_headers(request)
    body = request["body"]
    assert set(body) == CUSTOMER_KEYS
    assert body["company_id"] == SEED_TOKEN
    assert body["ids"] == {"registered": "john123"}
    assert body["properties"] == {"first_name": "John", "last_name": "Smith"}
    assert abs(body["timestamp"] - time.time()) < 10
    assert COMMAND_ID.fullmatch(body["command_id"])
    assert server.customer("john123") == {"first_name": "John", "last_name": "Smith"}


def test_seed_get_html(campaign_server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=campaign_server.url)
    assert client.get_html("Banner left") == BANNER
    (request,) = campaign_server.requests()
    assert request["path"] == "/campaigns/html/get"
    assert_headers(request)
    assert request["body"] == {
        "company_id": SEED_TOKEN, "customer_ids": {"registered": "john123"}, "html_campaign_name": "Banner left",
    }


def test_get_html_condition_false_then_true(campaign_server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=campaign_server.url)
    assert client.get_html("VIP banner") == ""
    client.update({"vip": True})
    assert client.get_html("VIP banner") == "<b>VIP</b>"
    assert client.get_html("VIP banner", customer="someone-else") == ""


def test_get_html_unknown_campaign_is_404(campaign_server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=campaign_server.url)
    with pytest.raises(InvalidRequest) as caught:
        client.get_html("No such campaign")
    assert caught.value.status == 404
    assert caught.value.errors and "No such campaign" in " ".join(caught.value.errors)
    assert len(campaign_server.requests()) == 1


# -- customers, timestamps, command ids ------------------------------------------------------------


def test_identify_with_properties_sends_update(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, target=server.url)
    client.identify("john123", {"first_name": "John"})
    (request,) = server.requests()
    assert request["path"] == "/crm/customers"
    assert request["body"]["ids"] == {"registered": "john123"}
    assert request["body"]["properties"] == {"first_name": "John"}
    assert server.customer("john123") == {"first_name": "John"}
    assert client.customer == {"registered": "john123"}


def test_per_call_customer_does_not_change_identified(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    client.track("a", customer="mary")
    client.update({"x": 1}, customer={"cookie": "c1"})
    client.track("b")
    assert client.customer == {"registered": "john123"}
    bodies = [request["body"] for request in server.requests()]
    assert bodies[0]["customer_ids"] == {"registered": "mary"}
    assert bodies[1]["ids"] == {"cookie": "c1"}
    assert bodies[2]["customer_ids"] == {"registered": "john123"}


def test_dict_customer(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer={"cookie": "abc"}, target=server.url)
    client.track("view")
    client.identify({"cookie": "abc", "registered": "john123"})
    client.track("login")
    events = server.events()
    assert events[0]["customer_ids"] == {"cookie": "abc"}
    assert events[1]["customer_ids"] == {"cookie": "abc", "registered": "john123"}


def test_command_ids_unique_per_command(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    for index in range(5):
        client.track("e", {"i": index})
        client.update({"i": index})
    ids = [request["body"]["command_id"] for request in server.requests()]
    assert len(ids) == 10
    assert len(set(ids)) == 10
    assert all(COMMAND_ID.fullmatch(command_id) for command_id in ids)


def test_timestamp_float(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    client.track("e", timestamp=1700000000.25)
    client.update({"a": 1}, timestamp=1700000001)
    bodies = [request["body"] for request in server.requests()]
    assert bodies[0]["timestamp"] == 1700000000.25
    assert bodies[1]["timestamp"] == 1700000001
    assert server.events()[0]["timestamp"] == 1700000000.25


def test_timestamp_aware_datetime(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    moment = datetime.datetime(2024, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    client.track("e", timestamp=moment)
    assert server.requests()[0]["body"]["timestamp"] == 1704164645.0


def test_timestamp_follows_frozen_clock(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    with freeze_time("2024-01-02T03:04:05Z"):
        client.track("frozen")
        client.update({"a": 1})
    expected = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc).timestamp()
    bodies = [request["body"] for request in server.requests()]
    assert [body["timestamp"] for body in bodies] == [expected, expected]
    assert server.events()[0]["timestamp"] == expected


def test_mutating_properties_after_track_changes_nothing(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    properties: Dict[str, Any] = {"cart": [1, 2], "meta": {"a": 1}}
    client.track("e", properties)
    properties["cart"].append(3)
    properties["meta"]["a"] = 2
    properties["new"] = True
    assert server.events()[0]["properties"] == {"cart": [1, 2], "meta": {"a": 1}}
    assert server.requests()[0]["body"]["properties"] == {"cart": [1, 2], "meta": {"a": 1}}


def test_gzip_large_body_still_exact(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    properties = {"text": "x" * 5000, "n": 1}
    client.track("big", properties)
    (request,) = server.requests()
    assert request["status"] == 200
    assert request["body"]["properties"] == properties
    assert server.events()[0]["properties"] == properties


# -- lifecycle -------------------------------------------------------------------------------------


def test_context_manager_closes(server: LocalServer) -> None:
    with SevenSegments(SEED_TOKEN, customer="john123", target=server.url) as client:
        assert isinstance(client, SevenSegments)
        client.track("inside")
    assert len(server.events()) == 1
    with pytest.raises(ClientClosedError):
        client.track("after")
    assert len(server.requests()) == 1


def test_close_then_calls_raise(campaign_server: LocalServer) -> None:
    client = SevenSegments(SECRET_TOKEN, customer="john123", target=campaign_server.url)
    client.close()
    client.close()  # idempotent
    for call in (lambda: client.track("e"), lambda: client.update({"a": 1}), lambda: client.get_html("Banner left")):
        with pytest.raises(ClientClosedError) as caught:
            call()
        assert isinstance(caught.value, RuntimeError)
        assert SECRET_TOKEN not in str(caught.value) and SECRET_TOKEN not in repr(caught.value)
    assert campaign_server.requests() == []
    assert client.flush() is True


# -- retries of passing failures -------------------------------------------------------------------


def _ids_of(server: LocalServer) -> List[str]:
    return [request["body"]["command_id"] for request in server.requests()]


def test_survives_two_503(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.fail_next(2, status=503)
    client.track("e", {"a": 1})
    assert [request["status"] for request in server.requests()] == [503, 503, 200]
    assert len(set(_ids_of(server))) == 1
    assert len(server.events()) == 1
    assert server.stats()["faults_injected"] == 2


def test_500_then_success(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.fail_next(1, status=500)
    client.update({"a": 1})
    assert [request["status"] for request in server.requests()] == [500, 200]
    assert len(set(_ids_of(server))) == 1
    assert server.customer("john123") == {"a": 1}


@pytest.mark.parametrize("status", [502, 504])
def test_other_transient_statuses_retried(server: LocalServer, status: int) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.fail_next(1, status=status)
    client.track("e")
    assert [request["status"] for request in server.requests()] == [status, 200]
    assert len(server.events()) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(server: LocalServer, status: int) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.fail_next(1, status=status, retry_after=0.4)
    started = time.monotonic()
    client.track("e")
    assert time.monotonic() - started >= 0.4
    requests = server.requests()
    assert [request["status"] for request in requests] == [status, 200]
    assert requests[1]["time"] - requests[0]["time"] >= 0.39
    assert len(server.events()) == 1


def test_drop_before_apply(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.drop_next(1)
    client.track("e", {"a": 1})
    requests = server.requests()
    assert [request["status"] for request in requests] == [None, 200]
    assert len(set(_ids_of(server))) == 1
    assert len(server.events()) == 1
    assert server.stats()["duplicates"] == 0


def test_drop_after_apply_is_deduplicated(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.drop_next(1, after_apply=True)
    client.track("e", {"a": 1})
    requests = server.requests()
    assert len(requests) == 2
    assert requests[0]["body"]["command_id"] == requests[1]["body"]["command_id"]
    assert requests[0]["body"] == requests[1]["body"]  # the retry is the same command, same timestamp
    assert len(server.events()) == 1
    assert server.stats()["duplicates"] == 1


def test_slow_server_times_out_and_retry_succeeds(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url, timeout=0.3)
    server.faults.delay_next(1, seconds=1.5)
    started = time.monotonic()
    client.track("e")
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 1.5, elapsed  # returned on the retry, not by waiting for the slow answer
    ids = _ids_of(server)
    assert len(ids) == 2 and ids[0] == ids[1]
    # The slow request is handled after its delay too: exactly one event, one duplicate.
    deadline = time.monotonic() + 5
    while server.stats()["duplicates"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.events()) == 1
    assert server.stats()["duplicates"] == 1


def test_get_html_retried(campaign_server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=campaign_server.url)
    campaign_server.faults.fail_next(1, status=503)
    campaign_server.faults.drop_next(1)
    assert client.get_html("Banner left") == BANNER
    assert [request["status"] for request in campaign_server.requests()] == [503, None, 200]


# -- permanent failures ----------------------------------------------------------------------------


def test_unknown_token_is_401_without_retry() -> None:
    with LocalServer(tokens=["good-token"]) as local:
        client = SevenSegments(SECRET_TOKEN, customer="john123", target=local.url)
        with pytest.raises(AuthenticationError) as caught:
            client.track("e")
        assert caught.value.status == 401
        assert caught.value.errors
        assert len(local.requests()) == 1
        assert local.events() == []
        for text in (str(caught.value), repr(caught.value), " ".join(caught.value.errors)):
            assert SECRET_TOKEN not in text
        with pytest.raises(AuthenticationError):
            client.update({"a": 1})
        with pytest.raises(AuthenticationError):
            client.get_html("anything")
        assert len(local.requests()) == 3
        good = SevenSegments("good-token", customer="john123", target=local.url)
        good.track("e")
        assert len(local.events()) == 1


@pytest.mark.parametrize("status", [302, 307, 308])
def test_a_redirect_is_an_error_and_nothing_goes_to_the_other_host(
    campaign_server: LocalServer, witness: Any, status: int
) -> None:
    client = SevenSegments(SECRET_TOKEN, customer="john123", target=campaign_server.url)
    calls = [lambda: client.track("e"), lambda: client.update({"a": 1}), lambda: client.get_html("Banner left")]
    for call in calls:
        campaign_server.faults.redirect_next(1, witness.url, status=status)
        with pytest.raises(SevenSegmentsError) as caught:
            call()
        assert type(caught.value) is SevenSegmentsError and caught.value.status == status
        assert "redirect" in str(caught.value) and witness.url in str(caught.value)
        assert SECRET_TOKEN not in str(caught.value) + repr(caught.value)
    assert witness.connections == 0 and witness.received == b""
    assert len(campaign_server.requests()) == 3  # not retried
    assert client.stats()["failed"] == 2 and campaign_server.events() == []


def test_properties_over_100_kib_of_utf8_are_refused_at_the_call(server: LocalServer) -> None:
    # 60,000 two-byte characters: 120 KB of UTF-8, over the protocol's 100 KiB per command.
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    with pytest.raises(ValueError, match="at most 102400"):
        client.track("e", {"s": "\u00e9" * 60000})
    client.track("e", {"s": "\u00e9" * 40000})  # 80 KB: accepted, sent as UTF-8
    assert server.events()[0]["properties"]["s"] == "\u00e9" * 40000
    assert server.requests()[0]["headers"]["Content-Encoding"] == "gzip"


def test_413_is_invalid_request_without_retry(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url)
    server.faults.fail_next(1, status=413)
    with pytest.raises(InvalidRequest) as caught:
        client.track("e")
    assert caught.value.status == 413 and len(server.requests()) == 1
    assert server.events() == []


def test_unreachable_server_gives_up_within_deadline(dead_url: str) -> None:
    client = SevenSegments(SECRET_TOKEN, customer="john123", target=dead_url, retry_deadline=1.0)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        client.track("e")
    elapsed = time.monotonic() - started
    assert elapsed < 3.0
    assert caught.value.status is None
    assert "crm/events" in str(caught.value)
    assert SECRET_TOKEN not in str(caught.value) and SECRET_TOKEN not in repr(caught.value)


def test_many_503_gives_service_unavailable(server: LocalServer) -> None:
    client = SevenSegments(SECRET_TOKEN, customer="john123", target=server.url, retry_deadline=0.8)
    server.faults.fail_next(1000, status=503)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        client.track("e")
    assert time.monotonic() - started < 3.0
    assert caught.value.status == 503
    assert caught.value.errors == ("injected fault: HTTP 503",)
    assert len(server.requests()) >= 2  # it did retry
    assert server.events() == []
    assert SECRET_TOKEN not in str(caught.value) and SECRET_TOKEN not in repr(caught.value)


def test_long_retry_after_beyond_deadline_gives_up_early(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url, retry_deadline=0.5)
    server.faults.fail_next(1, status=429, retry_after=30)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as caught:
        client.track("e")
    assert time.monotonic() - started < 2.0
    assert caught.value.status == 429
    assert len(server.requests()) == 1


def test_errors_and_repr_never_show_token(campaign_server: LocalServer) -> None:
    client = SevenSegments(SECRET_TOKEN, customer="john123", target=campaign_server.url)
    assert SECRET_TOKEN not in repr(client) and SECRET_TOKEN not in str(client)
    assert "john123" in repr(client)
    raised: List[SevenSegmentsError] = []
    try:
        client.get_html("nope")
    except SevenSegmentsError as error:
        raised.append(error)
    campaign_server.faults.fail_next(1000, status=503)
    short = SevenSegments(SECRET_TOKEN, customer="john123", target=campaign_server.url, retry_deadline=0.3)
    try:
        short.track("e")
    except SevenSegmentsError as error:
        raised.append(error)
    assert [type(error) for error in raised] == [InvalidRequest, ServiceUnavailable]
    for error in raised:
        assert error.status is not None
        assert isinstance(error.errors, tuple)
        for text in (str(error), repr(error), *error.errors):
            assert SECRET_TOKEN not in text


# -- targets ---------------------------------------------------------------------------------------


def test_target_trailing_slash(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url + "/")
    assert client.target == server.url
    client.track("e")
    assert server.requests()[0]["path"] == "/crm/events"


def test_target_path_prefix_is_used(server: LocalServer) -> None:
    client = SevenSegments(SEED_TOKEN, customer="john123", target=server.url + "/api/v1/")
    assert client.target == server.url + "/api/v1"
    # The local server serves no prefix: an answer of 404 proves the prefix was in the request path.
    with pytest.raises(InvalidRequest) as caught:
        client.track("e")
    assert caught.value.status == 404
    assert "/api/v1/crm/events" in " ".join(caught.value.errors)


def test_default_target() -> None:
    assert SevenSegments(SEED_TOKEN).target == "https://api.7segments.com"


@pytest.mark.parametrize("target", ["ftp://x", "http://", "not a url", "", "https://host/?q=1", "http://h:99999"])
def test_bad_targets(target: str) -> None:
    with pytest.raises(ValueError) as caught:
        SevenSegments(SEED_TOKEN, target=target)
    assert repr(target.replace("?q=1", "?q=***")) in str(caught.value)  # query values masked: they may be tokens


def test_target_with_credentials_refused_without_echo() -> None:
    with pytest.raises(ValueError) as caught:
        SevenSegments(SEED_TOKEN, target="http://user:pw-SECRET@127.0.0.1:1")
    assert "pw-SECRET" not in str(caught.value)


def test_one_blocking_client_shared_by_many_threads(server: LocalServer, caplog: Any) -> None:
    import logging
    import threading

    client = SevenSegments(SEED_TOKEN, target=server.url)
    failures: List[BaseException] = []

    def handle_requests(index: int) -> None:
        try:
            for number in range(10):
                client.track("view", {"n": number}, customer=f"user-{index}")
        except BaseException as error:  # pragma: no cover - reported below
            failures.append(error)

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=handle_requests, args=(index,)) for index in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert len(server.events()) == 160
    assert "pool is full" not in caplog.text

"""The public client's options against the local server: caller-chosen command ids (idempotent imports), the
``before_send`` hook, ``enabled=False``, blocking ``stats()``, ``on_error`` payloads without the
token, and a target whose host does not resolve."""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
from typing import Any, Dict, List, Optional, get_args

import pytest

import seven_segments
from seven_segments import SevenSegments, SevenSegmentsError
from seven_segments.protocol import ANALYSIS_TYPES, COMMAND_ID_RE
from seven_segments.testing import LocalServer
from seven_segments.transport import TransientError, _unresolved

from .conftest import collector, TOKEN

pytestmark = pytest.mark.timeout(60)

MODES = ["blocking", "buffered"]


def make(server: LocalServer, mode: str, **settings: Any) -> SevenSegments:
    settings.setdefault("customer", "john123")
    if mode == "buffered":
        settings.setdefault("flush_interval", 0.02)
    return SevenSegments(TOKEN, target=server.url, buffered=mode == "buffered", **settings)


# -- track(event_type=...), command_id ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_track_takes_event_type_by_name_and_returns_the_command_id(fresh: LocalServer, mode: str) -> None:
    with make(fresh, mode) as client:
        first = client.track(event_type="purchase", properties={"amount": 5})
        second = client.update({"name": "John"})
        assert client.flush(5) is True
    assert isinstance(first, str) and COMMAND_ID_RE.fullmatch(first) and first != second
    (event,) = fresh.events()
    assert event["type"] == "purchase" and event["command_id"] == first


@pytest.mark.parametrize("mode", MODES)
def test_caller_command_id_is_sent_and_returned(fresh: LocalServer, mode: str) -> None:
    with make(fresh, mode) as client:
        assert client.track("purchase", command_id="order-1001") == "order-1001"
        assert client.update({"tier": "gold"}, command_id="crm_Update-7") == "crm_Update-7"
        assert client.flush(5) is True
    assert [event["command_id"] for event in fresh.events()] == ["order-1001"]
    bodies = [request["body"] for request in fresh.requests()]
    sent = [body.get("command_id") for body in bodies] + [
        command["data"]["command_id"] for body in bodies for command in body.get("commands", [])
    ]
    assert "crm_Update-7" in sent


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "bad, error, words",
    [
        ("", ValueError, ["command_id", "0 characters"]),
        ("x" * 65, ValueError, ["command_id", "65 characters"]),
        ("order 1", ValueError, ["command_id", "'order 1'", "[A-Za-z0-9_-]"]),
        ("réf-1", ValueError, ["command_id", "'réf-1'"]),
        (1001, TypeError, ["command_id", "int 1001"]),
        (b"order-1", TypeError, ["command_id", "bytes"]),
    ],
)
def test_bad_command_id_raises_at_the_call(
    fresh: LocalServer, mode: str, bad: Any, error: type, words: List[str]
) -> None:
    with make(fresh, mode) as client:
        with pytest.raises(error) as caught:
            client.track("purchase", command_id=bad)
        assert all(word in str(caught.value) for word in words), str(caught.value)
        with pytest.raises(error):
            client.update({"a": 1}, command_id=bad)
        assert client.flush(5) is True
    assert fresh.requests() == []


@pytest.mark.parametrize("first, second", [("blocking", "blocking"), ("buffered", "buffered"), ("blocking", "buffered")])
def test_an_import_run_twice_with_the_same_command_ids_stores_each_event_once(
    fresh: LocalServer, first: str, second: str
) -> None:
    orders = [(f"order-{number}", f"customer{number % 3}", number * 1.5) for number in range(12)]

    def run_import(mode: str) -> None:
        with make(fresh, mode) as client:  # a new client, as a second run of the script makes
            for order_id, customer, amount in orders:
                assert client.track("purchase", {"amount": amount}, customer=customer, command_id=order_id) == order_id
            assert client.flush(5) is True

    run_import(first)
    run_import(second)
    events = fresh.events()
    assert sorted(event["command_id"] for event in events) == sorted(order_id for order_id, _, _ in orders)
    assert {event["command_id"]: event["properties"]["amount"] for event in events} == {
        order_id: amount for order_id, _, amount in orders
    }
    assert fresh.stats()["duplicates"] == len(orders)


# -- before_send --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_before_send_redacts_what_leaves_the_process(fresh: LocalServer, mode: str) -> None:
    seen: List[Dict[str, Any]] = []

    def redact(command: Dict[str, Any]) -> Dict[str, Any]:
        seen.append(command)
        command["properties"].pop("email", None)
        command["properties"]["card"] = "****"
        return command

    with make(fresh, mode, before_send=redact) as client:
        returned = client.track("purchase", {"email": "j@example.com", "card": "4111 1111", "amount": 5}, timestamp=1700000000)
        client.update({"email": "j@example.com", "card": "4111"}, customer={"registered": "john123", "cookie": "c1"})
        assert client.flush(5) is True
        assert client.stats()["filtered"] == 0 and client.stats()["failed"] == 0
    (event,) = fresh.events()
    assert event["properties"] == {"card": "****", "amount": 5}
    assert event["command_id"] == returned and event["timestamp"] == 1700000000
    assert fresh.customer({"registered": "john123", "cookie": "c1"}) == {"card": "****"}
    assert "j@example.com" not in str([request["body"] for request in fresh.requests()])
    # What the hook is given: plain dicts named as on the wire, without the token.
    assert seen[0] == {
        "name": "crm/events", "customer_ids": {"registered": "john123"}, "type": "purchase",
        "properties": {"card": "****", "amount": 5}, "timestamp": 1700000000.0, "command_id": returned,
    }
    assert set(seen[1]) == {"name", "ids", "properties", "timestamp", "command_id"}
    assert TOKEN not in repr(seen)


def test_before_send_cannot_change_the_identified_customer(fresh: LocalServer) -> None:
    def rename(command: Dict[str, Any]) -> Dict[str, Any]:
        command["customer_ids"]["registered"] = "someone-else"
        return command

    with make(fresh, "blocking", before_send=rename) as client:
        client.track("purchase")
        assert client.customer == {"registered": "john123"}  # the hook got a copy
    assert fresh.events()[0]["customer_ids"] == {"registered": "someone-else"}


@pytest.mark.parametrize("mode", MODES)
def test_a_hook_changing_a_per_call_customer_changes_only_that_command(fresh: LocalServer, mode: str) -> None:
    """The client reuses the ids of a string customer= from one call to the next: what a hook did to
    one command's ids must not reach the next command for that customer."""
    def rename_first(command: Dict[str, Any]) -> Dict[str, Any]:
        if command["properties"].get("n") == 0:
            command["customer_ids"]["registered"] = "someone-else"
        return command

    with make(fresh, mode, before_send=rename_first) as client:
        for number in range(3):
            client.track("purchase", {"n": number}, customer="ann")
        client.track("purchase", {"n": 3}, customer="bob")
        client.track("purchase", {"n": 4}, customer="ann")
        assert client.flush(5) is True
    seen = {event["properties"]["n"]: event["customer_ids"]["registered"] for event in fresh.events()}
    assert seen == {0: "someone-else", 1: "ann", 2: "ann", 3: "bob", 4: "ann"}


@pytest.mark.parametrize("mode", MODES)
def test_before_send_may_set_the_command_id_and_track_returns_it(fresh: LocalServer, mode: str) -> None:
    def keyed(command: Dict[str, Any]) -> Dict[str, Any]:
        command["command_id"] = "order-" + str(command["properties"]["order"])
        return command

    with make(fresh, mode, before_send=keyed) as client:
        assert client.track("purchase", {"order": 42}) == "order-42"
        assert client.track("purchase", {"order": 42}) == "order-42"
        assert client.flush(5) is True
    assert [event["command_id"] for event in fresh.events()] == ["order-42"]


@pytest.mark.parametrize("mode", MODES)
def test_before_send_returning_none_drops_the_command_as_filtered(fresh: LocalServer, mode: str) -> None:
    reports, on_error = collector()

    def no_debug(command: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return None if command.get("type") == "debug" else command

    with make(fresh, mode, before_send=no_debug, on_error=on_error) as client:
        dropped = client.track("debug", {"x": 1})
        client.track("purchase")
        assert client.flush(5) is True  # a filtered command is not a lost one
        stats = client.stats()
    assert COMMAND_ID_RE.fullmatch(dropped)
    assert [event["type"] for event in fresh.events()] == ["purchase"]
    assert stats["filtered"] == 1 and stats["failed"] == 0 and stats["sent"] == 1
    assert reports == []


@pytest.mark.parametrize("mode", MODES)
def test_before_send_that_raises_drops_the_command_and_reports_it(
    fresh: LocalServer, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    reports, on_error = collector()

    def broken(command: Dict[str, Any]) -> Dict[str, Any]:
        if "email" in command["properties"]:
            raise KeyError("no redaction rule for email")
        return command

    with make(fresh, mode, before_send=broken, on_error=on_error) as client:
        command_id = client.track("signup", {"email": "j@example.com"})  # does not raise
        client.track("purchase")
        assert client.flush(5) is False  # a command was lost since the last flush
        assert client.flush(5) is True
        assert client.stats()["failed"] == 1
    assert [event["type"] for event in fresh.events()] == ["purchase"]  # never sent as it was
    assert "j@example.com" not in str([request["body"] for request in fresh.requests()])
    ((error, commands),) = reports
    assert "before_send raised KeyError" in str(error) and "no redaction rule" in str(error)
    assert commands == [{"name": "crm/events", "data": {
        "customer_ids": {"registered": "john123"}, "type": "signup", "properties": {"email": "j@example.com"},
        "timestamp": commands[0]["data"]["timestamp"], "command_id": command_id,
    }}]
    # Without on_error, the failure is logged (and still counted, never sent).
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        with make(fresh, mode, before_send=broken) as client:
            client.track("signup", {"email": "x@example.com"})
            assert client.stats()["failed"] == 1
    assert any("before_send raised KeyError" in record.getMessage() for record in caplog.records)
    assert len(fresh.events()) == 1


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda c: c["properties"].update(score=float("nan")), ["properties['score']", "nan"]),
        (lambda c: c.update(timestamp=1700000000000), ["milliseconds"]),
        (lambda c: c.update(timestamp=None), ["timestamp", "None"]),
        (lambda c: c["properties"].update(at=datetime.datetime(2024, 1, 2)), ["properties['at']", "no time zone"]),
        (lambda c: c.update(customer_ids=12), ["customer_ids", "int 12"]),
        (lambda c: c.update(type=""), ["event type"]),
        (lambda c: c.update(command_id="a b"), ["command_id 'a b'"]),
        (lambda c: c.update(name="crm/customers"), ["name must stay 'crm/events'"]),
        (lambda c: c.pop("properties"), ["missing: properties"]),
        (lambda c: c.update(company_id="other"), ["unknown: 'company_id'"]),
        (lambda c: c.update(customer_ids={"registered": "x" * 200_000}), ["customer_ids: the ids take 200017 bytes"]),
        (
            lambda c: c.update(customer_ids={"registered": "x" * 60_000}, properties={"p": "y" * 70_000}),
            ["the properties take 70008 bytes as JSON, too many for one command", "customer ids (60017)"],
        ),
    ],
)
def test_before_send_returning_an_invalid_command_drops_and_reports_it(
    fresh: LocalServer, change: Any, words: List[str]
) -> None:
    reports, on_error = collector()

    def hook(command: Dict[str, Any]) -> Dict[str, Any]:
        change(command)
        return command

    with make(fresh, "blocking", before_send=hook, on_error=on_error) as client:
        client.track("purchase", {"score": 1})
        assert client.stats()["failed"] == 1
    ((error, commands),) = reports
    assert "before_send returned an invalid command" in str(error)
    assert all(word in str(error) for word in words), str(error)
    assert commands[0]["data"]["properties"] == {"score": 1}  # as the caller made it
    assert fresh.requests() == []


def test_before_send_returning_a_non_dict_is_reported(fresh: LocalServer) -> None:
    reports, on_error = collector()
    with make(fresh, "buffered", before_send=lambda command: "yes", on_error=on_error) as client:  # type: ignore[arg-type,return-value]
        client.update({"a": 1})
        assert client.flush(5) is False
    ((error, _),) = reports
    assert "must return a dict or None, not str" in str(error)
    assert fresh.requests() == []


def test_before_send_must_be_callable(fresh: LocalServer) -> None:
    with pytest.raises(TypeError, match="before_send must be callable, not dict"):
        make(fresh, "buffered", before_send={})  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_before_send_runs_on_the_callers_thread_and_a_slow_hook_stalls_only_its_caller(
    fresh: LocalServer, mode: str
) -> None:
    release = threading.Event()
    entered = threading.Event()
    threads: Dict[str, int] = {}

    def hook(command: Dict[str, Any]) -> Dict[str, Any]:
        customer = command["customer_ids"]["registered"]
        threads[customer] = threading.get_ident()
        if customer == "slow":
            entered.set()
            assert release.wait(10)
        return command

    with make(fresh, mode, before_send=hook) as client:
        slow_ident: List[int] = []

        def slow_caller() -> None:
            slow_ident.append(threading.get_ident())
            client.track("e", customer="slow")

        slow = threading.Thread(target=slow_caller)
        slow.start()
        try:
            assert entered.wait(5)
            started = time.monotonic()
            client.track("e", customer="fast")  # not held up by the hook that is still running
            assert client.flush(5) is True
            assert time.monotonic() - started < 2
            assert [event["customer_ids"]["registered"] for event in fresh.events()] == ["fast"]
        finally:
            release.set()
            slow.join(5)
        assert client.flush(5) is True
    assert threads == {"slow": slow_ident[0], "fast": threading.get_ident()}
    assert sorted(event["customer_ids"]["registered"] for event in fresh.events()) == ["fast", "slow"]


# -- enabled=False ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_disabled_client_checks_everything_and_sends_nothing(fresh: LocalServer, mode: str) -> None:
    threads_before = threading.active_count()
    hooked: List[Dict[str, Any]] = []
    client = make(fresh, mode, enabled=False, before_send=lambda command: hooked.append(command) or command)
    assert client.enabled is False and client.buffered is (mode == "buffered") and "disabled" in repr(client)
    assert COMMAND_ID_RE.fullmatch(client.track("purchase", {"amount": 5}))
    assert client.track("purchase", command_id="order-1") == "order-1"
    assert client.update({"name": "John"}, customer="mary", command_id="u1") == "u1"
    client.identify("peter", {"age": 30})
    assert client.get_html("Banner left") == ""
    assert client.flush(1) is True
    for bad_call, error in [
        (lambda: client.track(""), ValueError),
        (lambda: client.track("e", {"x": float("nan")}), ValueError),
        (lambda: client.track("e", timestamp=1700000000000), ValueError),
        (lambda: client.track("e", {"at": datetime.datetime(2024, 1, 2)}), ValueError),
        (lambda: client.track("e", command_id="no spaces"), ValueError),
        (lambda: client.track("e", customer=12345), TypeError),  # type: ignore[arg-type]
        (lambda: client.update(None), TypeError),  # type: ignore[arg-type]
        (lambda: client.get_html(""), ValueError),
        (lambda: client.flush(-1), ValueError),
    ]:
        with pytest.raises(error):
            bad_call()
    assert threading.active_count() == threads_before  # no worker thread
    stats = client.stats()
    assert stats["discarded"] == 4 and stats["sent"] == 0 and stats["queued"] == 0
    client.close()
    with pytest.raises(seven_segments.ClientClosedError):
        client.track("purchase")
    with pytest.raises(seven_segments.ClientClosedError):
        client.get_html("Banner left")
    assert fresh.requests() == [] and fresh.stats()["requests"] == 0
    assert hooked == []  # nothing to send, so nothing to hook


def test_disabled_settings_are_still_checked(fresh: LocalServer) -> None:
    with pytest.raises(TypeError, match="enabled must be True or False, not str"):
        make(fresh, "blocking", enabled="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        make(fresh, "buffered", enabled=False, batch_size=0)
    with pytest.raises(ValueError, match="target"):
        SevenSegments(TOKEN, target="ftp://example.com", enabled=False)


# -- stats() of a blocking client, on_error payloads --------------------------------------------------


def test_blocking_stats_count_sent_retried_failed(fresh: LocalServer, dead_url: str) -> None:
    with make(fresh, "blocking") as client:
        client.track("a")
        fresh.faults.fail_next(1, status=503)
        client.update({"b": 1})
        stats = client.stats()
    assert (stats["sent"], stats["retried"], stats["failed"], stats["queued"]) == (2, 1, 0, 0)
    with SevenSegments(TOKEN, "john123", target=dead_url, retry_deadline=0) as client:
        with pytest.raises(seven_segments.ServiceUnavailable):
            client.track("a")
        assert client.stats()["failed"] == 1 and client.stats()["sent"] == 0


def test_blocking_stats_are_exact_across_threads(fresh: LocalServer) -> None:
    with make(fresh, "blocking") as client:
        workers = [threading.Thread(target=lambda: [client.track("t") for _ in range(25)]) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        assert client.stats()["sent"] == 100
    assert len(fresh.events()) == 100


def test_on_error_commands_carry_no_token_and_keep_the_command_id(fresh: LocalServer, dead_url: str) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john123", target=dead_url, buffered=True, retry_deadline=0.1,
                           flush_interval=0.01, on_error=on_error)
    try:
        command_id = client.track("purchase", {"amount": 5}, command_id="order-77")
        update_id = client.update({"tier": "gold"})
        assert client.flush(5) is False
    finally:
        client.close(1)
    commands = [command for _, batch in reports for command in batch]
    assert TOKEN not in repr(reports)
    assert all("company_id" not in command["data"] for command in commands)
    assert sorted(command["data"]["command_id"] for command in commands) == sorted([command_id, update_id])
    # Everything needed to send them again, and sending again applies each once.
    with make(fresh, "blocking") as again:
        for command in commands + commands:
            data = command["data"]
            if command["name"] == "crm/events":
                again.track(data["type"], data["properties"], customer=data["customer_ids"],
                            timestamp=data["timestamp"], command_id=data["command_id"])
            else:
                again.update(data["properties"], customer=data["ids"], timestamp=data["timestamp"],
                             command_id=data["command_id"])
    assert [event["command_id"] for event in fresh.events()] == ["order-77"]
    assert fresh.customer("john123") == {"tier": "gold"}


# -- DNS ------------------------------------------------------------------------------------------------

NO_SUCH_HOST = "http://no-such-host.invalid:8765"  # the .invalid TLD never resolves (RFC 2606)


def test_unresolvable_target_fails_at_once_naming_the_host() -> None:
    started = time.monotonic()
    with SevenSegments(TOKEN, "john123", target=NO_SUCH_HOST, retry_deadline=1) as client:
        with pytest.raises(SevenSegmentsError) as caught:
            client.track("purchase")
    assert "cannot resolve no-such-host.invalid" in str(caught.value)
    assert TOKEN not in str(caught.value)
    if not isinstance(caught.value, seven_segments.ServiceUnavailable):  # "no such host": not retried
        assert time.monotonic() - started < 1
        assert client.stats()["retried"] == 0


def test_unresolvable_target_in_buffered_mode_is_reported_at_once() -> None:
    reports, on_error = collector()
    started = time.monotonic()
    client = SevenSegments(TOKEN, "john123", target=NO_SUCH_HOST, buffered=True, retry_deadline=1,
                           flush_interval=0.01, on_error=on_error)
    try:
        command_id = client.track("purchase")
        assert client.flush(5) is False
    finally:
        client.close(1)
    ((error, commands),) = reports
    assert "cannot resolve no-such-host.invalid" in str(error)
    assert commands[0]["data"]["command_id"] == command_id
    assert time.monotonic() - started < 3


def _gaierror(code: int) -> BaseException:
    """The chain that requests raises for a failed name lookup: ConnectionError <- ... <- gaierror."""
    import requests

    cause = socket.gaierror(code, "lookup failed")
    outer = requests.ConnectionError(OSError("Max retries exceeded"))
    outer.args[0].__cause__ = cause
    return outer


def test_dns_failure_decisions() -> None:
    permanent = _unresolved("bulk", "https://api.exampel.com", _gaierror(socket.EAI_NONAME))
    assert type(permanent) is SevenSegmentsError
    assert str(permanent).startswith("bulk: cannot resolve api.exampel.com: no such host")
    passing = _unresolved("bulk", "https://api.example.com", _gaierror(socket.EAI_AGAIN))
    assert isinstance(passing, TransientError) and "cannot resolve api.example.com" in str(passing)
    import requests

    assert _unresolved("bulk", "https://api.example.com", requests.ConnectionError("refused")) is None
    proxy = requests.exceptions.ProxyError(OSError("proxy"))
    proxy.args[0].__cause__ = socket.gaierror(socket.EAI_NONAME, "x")
    assert _unresolved("bulk", "https://api.example.com", proxy) is None  # the proxy's name, not the target's


# -- exported types -------------------------------------------------------------------------------------


def test_public_types_are_exported() -> None:
    for name in ("Customer", "Timestamp", "ErrorCallback", "AnalysisType", "BeforeSend", "CommandDict"):
        assert name in seven_segments.__all__ and hasattr(seven_segments, name)
    assert set(get_args(seven_segments.AnalysisType)) == set(ANALYSIS_TYPES)

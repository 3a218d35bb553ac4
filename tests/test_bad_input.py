"""Bad input raises TypeError/ValueError at the call, before anything is sent, naming the bad value.

And the conversions the client makes (datetime, Decimal, UUID, Enum, tuple, set, Mapping) as the
server stored them. Blocking and buffered clients behave the same at the call.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import time
import types
import uuid
from collections.abc import Mapping
from typing import Any, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seven_segments import AuthenticatedSevenSegments, SevenSegments
from seven_segments.protocol import MAX_COMMAND_BYTES
from seven_segments.testing import LocalServer

pytestmark = pytest.mark.timeout(30)

TOKEN = "bad-input-token-SECRET-2718"


@pytest.fixture(params=["blocking", "buffered"])
def client(request: pytest.FixtureRequest, fresh: LocalServer) -> Iterator[SevenSegments]:
    buffered = request.param == "buffered"
    made = SevenSegments(TOKEN, customer="john123", target=fresh.url, buffered=buffered, flush_interval=0.05)
    assert made.buffered is buffered
    yield made
    made.close(5)


def nothing_sent(client: SevenSegments, server: LocalServer) -> None:
    """Everything accepted was delivered, and the server saw no request at all."""
    assert client.flush(5) is True
    assert server.requests() == []
    assert server.events() == []


# -- tracking arguments ----------------------------------------------------------------------------


def test_no_customer_identified(fresh: LocalServer) -> None:
    for buffered in (False, True):
        client = SevenSegments(TOKEN, target=fresh.url, buffered=buffered)
        with pytest.raises(ValueError, match="no customer identified"):
            client.track("purchase")
        with pytest.raises(ValueError, match="no customer identified"):
            client.update({"a": 1})
        with pytest.raises(ValueError, match="no customer identified"):
            client.get_html("Banner left")
        nothing_sent(client, fresh)
        client.close(5)


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ("", ValueError, ["event type", "''"]),
        (5, TypeError, ["event type", "int", "5"]),
        (None, TypeError, ["event type", "None"]),
        (b"purchase", TypeError, ["event type", "bytes"]),
        ("x" * 257, ValueError, ["event type", "257"]),
    ],
)
def test_bad_event_type(client: SevenSegments, fresh: LocalServer, bad: Any, error: type, words: List[str]) -> None:
    with pytest.raises(error) as caught:
        client.track(bad)
    for word in words:
        assert word in str(caught.value)
    nothing_sent(client, fresh)


def test_an_event_type_is_checked_at_every_call_after_a_good_one(client: SevenSegments, fresh: LocalServer) -> None:
    """The client remembers the last event type it checked: a good one first changes nothing."""

    class Shouting(str):
        def __str__(self) -> str:
            return "shouted"

    name = "".join(["vi", "ew"])  # a str made at run time: another object than the literal
    for event_type in ("view", "view", name, Shouting("quiet"), Shouting("quiet")):
        client.track(event_type)
    class Agreeable(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    for bad in ("", "x" * 257, 5, Agreeable(""), Agreeable("x" * 300)):  # Agreeable("") == "view"
        with pytest.raises((TypeError, ValueError), match="event type"):
            client.track(bad)  # type: ignore[arg-type]
        client.track("view")
    assert client.flush(5) is True
    assert [event["type"] for event in fresh.events()] == ["view"] * 3 + ["quiet"] * 2 + ["view"] * 5


def test_event_type_of_256_characters_is_fine(client: SevenSegments, fresh: LocalServer) -> None:
    client.track("y" * 256)
    assert client.flush(5) is True
    assert [event["type"] for event in fresh.events()] == ["y" * 256]


@pytest.mark.parametrize(
    "bad, words",
    [([1, 2], ["properties", "list", "[1, 2]"]), ("abc", ["properties", "str", "'abc'"]), (5, ["properties", "int"])],
)
def test_properties_not_a_dict(client: SevenSegments, fresh: LocalServer, bad: Any, words: List[str]) -> None:
    with pytest.raises(TypeError) as caught:
        client.track("e", bad)
    for word in words:
        assert word in str(caught.value)
    with pytest.raises(TypeError):
        client.update(bad)
    nothing_sent(client, fresh)


def test_update_none_properties(client: SevenSegments, fresh: LocalServer) -> None:
    with pytest.raises(TypeError, match="properties"):
        client.update(None)  # type: ignore[arg-type]
    nothing_sent(client, fresh)


@pytest.mark.parametrize("properties, where", [({1: "a"}, "key 1"), ({"n": {2: "b"}}, "key 2"), ({None: 1}, "key None")])
def test_non_string_keys(client: SevenSegments, fresh: LocalServer, properties: Dict[Any, Any], where: str) -> None:
    with pytest.raises(TypeError) as caught:
        client.track("e", properties)
    assert where in str(caught.value)
    assert "strings" in str(caught.value)
    nothing_sent(client, fresh)


def test_nan_nested_exact_message(client: SevenSegments, fresh: LocalServer) -> None:
    with pytest.raises(ValueError) as caught:
        client.track("e", {"cart": [1, 2, float("nan")]})
    assert str(caught.value) == "properties['cart'][2]: float nan is not valid JSON"
    nothing_sent(client, fresh)


@pytest.mark.parametrize(
    "properties, where, shown",
    [
        ({"x": float("nan")}, "properties['x']", "nan"),
        ({"x": float("inf")}, "properties['x']", "inf"),
        ({"x": float("-inf")}, "properties['x']", "-inf"),
        ({"a": {"b": float("inf")}}, "properties['a']['b']", "inf"),
        ({"a": ({"b": [float("nan")]},)}, "properties['a'][0]['b'][0]", "nan"),
        ({"d": decimal.Decimal("NaN")}, "properties['d']", "NaN"),
        ({"d": decimal.Decimal("Infinity")}, "properties['d']", "Infinity"),
    ],
)
def test_non_finite_numbers(client: SevenSegments, fresh: LocalServer, properties: Dict[str, Any], where: str, shown: str) -> None:
    with pytest.raises(ValueError) as caught:
        client.track("e", properties)
    message = str(caught.value)
    assert message.startswith(where + ":"), message
    assert shown in message and "not valid JSON" in message
    with pytest.raises(ValueError):
        client.update(properties)
    nothing_sent(client, fresh)


def test_a_decimal_with_a_huge_exponent_is_refused_at_once(fresh: LocalServer) -> None:
    """What ``json.loads(..., parse_float=Decimal)`` makes of ``1e1000000``: converting it to an int
    first held the interpreter's lock for half a minute, stopping every thread of the process."""
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url)
    huge = json.loads('{"cart": [{"price": 1e1000000}]}', parse_float=decimal.Decimal)
    started = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        client.track("e", huge)
    assert time.perf_counter() - started < 1.0  # microseconds; generous for a busy machine
    assert str(caught.value).startswith("properties['cart'][0]['price']: Decimal 1E+1000000 has more than 4300 digits")
    nothing_sent(client, fresh)


def _a_function() -> None:
    pass


@pytest.mark.parametrize(
    "value, kind",
    [(object(), "object"), (b"bytes", "bytes"), (bytearray(b"x"), "bytearray"), (_a_function, "function"), (1j, "complex")],
)
def test_values_that_are_not_json(client: SevenSegments, fresh: LocalServer, value: Any, kind: str) -> None:
    with pytest.raises(TypeError) as caught:
        client.track("e", {"good": 1, "bad": [value]})
    message = str(caught.value)
    assert message.startswith("properties['bad'][0]:"), message
    assert kind in message and "not valid JSON" in message
    nothing_sent(client, fresh)


def test_cycle_is_value_error_not_recursion(client: SevenSegments, fresh: LocalServer) -> None:
    cyclic: Dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError) as caught:
        client.track("e", cyclic)
    assert not isinstance(caught.value, RecursionError)
    assert "properties['self']" in str(caught.value) and "cycle" in str(caught.value)
    looped: List[Any] = [1]
    looped.append(looped)
    with pytest.raises(ValueError, match="cycle"):
        client.update({"list": looped})
    nothing_sent(client, fresh)


def test_properties_too_large(client: SevenSegments, fresh: LocalServer) -> None:
    with pytest.raises(ValueError, match="bytes"):
        client.track("e", {"big": "x" * 200_000})
    nothing_sent(client, fresh)


# -- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error",
    [
        (-1, ValueError),
        (-0.5, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1700000000", TypeError),
        (True, TypeError),
        (datetime.date(2024, 1, 2), TypeError),
    ],
)
def test_bad_timestamp(client: SevenSegments, fresh: LocalServer, bad: Any, error: type) -> None:
    with pytest.raises(error) as caught:
        client.track("e", timestamp=bad)
    assert "timestamp" in str(caught.value)
    with pytest.raises(error):
        client.update({"a": 1}, timestamp=bad)
    nothing_sent(client, fresh)


def test_naive_datetime_timestamp(client: SevenSegments, fresh: LocalServer) -> None:
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    with pytest.raises(ValueError) as caught:
        client.track("e", timestamp=naive)
    assert "2024-01-02T03:04:05" in str(caught.value) and "time zone" in str(caught.value)
    nothing_sent(client, fresh)


@pytest.mark.parametrize("where", ["top", "nested", "listed"])
def test_naive_datetime_in_properties_refused_like_timestamp(
    client: SevenSegments, fresh: LocalServer, where: str
) -> None:
    """One rule for moments: a naive datetime is refused in properties too, naming where it is."""
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    properties: Dict[str, Any] = {
        "top": {"when": naive},
        "nested": {"order": {"paid_at": naive}},
        "listed": {"times": [datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc), naive]},
    }[where]
    path = {"top": "properties['when']", "nested": "properties['order']['paid_at']", "listed": "properties['times'][1]"}
    with pytest.raises(ValueError) as caught:
        client.track("e", properties)
    assert str(caught.value).startswith(path[where] + " 2024-01-02T03:04:05 has no time zone")
    with pytest.raises(ValueError, match="no time zone"):
        client.update(properties)
    nothing_sent(client, fresh)


@pytest.mark.parametrize("millis", [1700000000000, 1700000000000.5, 32503680000])
def test_milliseconds_timestamp_refused(client: SevenSegments, fresh: LocalServer, millis: float) -> None:
    with pytest.raises(ValueError) as caught:
        client.track("e", timestamp=millis)
    assert "looks like milliseconds" in str(caught.value) and str(millis) in str(caught.value)
    with pytest.raises(ValueError, match="milliseconds"):
        client.update({"a": 1}, timestamp=millis)
    with pytest.raises(ValueError, match="year 3000"):
        client.track("e", timestamp=datetime.datetime(3000, 1, 1, tzinfo=datetime.timezone.utc))
    nothing_sent(client, fresh)


def test_latest_accepted_timestamp(client: SevenSegments, fresh: LocalServer) -> None:
    client.track("e", timestamp=32503679999.5)  # 2999-12-31T23:59:59.5Z
    assert client.flush(5) is True
    assert [event["timestamp"] for event in fresh.events()] == [32503679999.5]


def test_aware_datetime_before_epoch_refused_before_sending(fresh: LocalServer) -> None:
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url)
    before_epoch = datetime.datetime(1960, 1, 1, tzinfo=datetime.timezone.utc)
    try:
        with pytest.raises(ValueError, match="timestamp"):
            client.track("e", timestamp=before_epoch)
    finally:
        assert fresh.requests() == []


# -- customers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, error, words",
    [
        ("", ValueError, ["customer", "''"]),
        ({}, ValueError, ["customer", "empty dict"]),
        ({"registered": 5}, TypeError, ["customer['registered']", "5"]),
        ({"registered": ""}, TypeError, ["customer['registered']"]),
        ({"": "x"}, TypeError, ["customer", "id type"]),
        ({1: "x"}, TypeError, ["customer", "id type 1"]),
        (5, TypeError, ["customer", "int"]),
        (["john"], TypeError, ["customer", "list"]),
    ],
)
def test_bad_customer(fresh: LocalServer, bad: Any, error: type, words: List[str]) -> None:
    with pytest.raises(error) as caught:
        SevenSegments(TOKEN, customer=bad, target=fresh.url)
    for word in words:
        assert word in str(caught.value)
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url)
    with pytest.raises(error):
        client.track("e", customer=bad)
    with pytest.raises(error):
        client.update({"a": 1}, customer=bad)
    with pytest.raises(error):
        client.identify(bad)
    assert client.customer == {"registered": "john123"}  # a refused identify changes nothing
    assert fresh.requests() == []


_A_200_KB_ID = "x" * 200_000
_5000_ID_TYPES = {f"id-type-{number:05d}": f"id-{number:05d}" for number in range(5000)}


@pytest.mark.parametrize("customer", [_A_200_KB_ID, _5000_ID_TYPES], ids=["a 200 KB id", "5,000 id types"])
def test_customer_ids_no_command_can_carry_are_refused_at_the_call(
    client: SevenSegments, fresh: LocalServer, customer: Any
) -> None:
    """They were accepted, then answered 413 (and split in halves with the commands queued with them)."""
    calls = [
        lambda: client.track("e", customer=customer),
        lambda: client.update({"a": 1}, customer=customer),
        lambda: client.identify(customer),
        lambda: client.customer_context(customer),
        lambda: client.get_html("Banner", customer=customer),
        lambda: SevenSegments(TOKEN, customer=customer, target=fresh.url),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"^customer: the ids take \d+ bytes as JSON, more than any command can carry"):
            call()
    assert client.customer == {"registered": "john123"}
    nothing_sent(client, fresh)


def test_a_command_too_large_as_a_whole_is_refused_at_the_call_naming_its_largest_part(
    client: SevenSegments, fresh: LocalServer
) -> None:
    with pytest.raises(ValueError, match=r"^the properties take 70008 bytes as JSON, too many for one command: with customer ids \(40017\), "):
        client.track("e", {"p": "x" * 70_000}, customer="i" * 40_000)
    with pytest.raises(ValueError, match=r"^the customer ids take 70013 bytes as JSON, too many .* a command may take at most 102400$"):
        client.update({"p": "x" * 40_000}, customer={"cookie": "c" * 70_000})
    with pytest.raises(ValueError, match=r"^the properties take 104008 bytes as JSON"):  # counted 52,009 before escaping
        client.track("e", {"q": '"' * 52_000})
    client.identify("i" * 60_000)  # fits, with small properties
    with pytest.raises(ValueError, match=r"^the customer ids take 60017 bytes as JSON, too many for one command: with properties \(50008\)"):
        client.track("e", {"p": "x" * 50_000})
    client.track("e", {"p": "x" * 40_000})
    with client.customer_context({"email": "e" * 2000}):
        with pytest.raises(ValueError, match=r"^the properties take 101008 bytes as JSON, too many for one command: with customer ids \(2012\)"):
            client.update({"p": "x" * 101_000})
        client.update({"p": "x" * 100_000})
    assert client.flush(5) is True
    assert [request["status"] for request in fresh.requests()] in ([200, 200], [200])  # nothing answered 413
    assert len(fresh.events()) == 1 and fresh.customer({"email": "e" * 2000}) == {"p": "x" * 100_000}


def test_a_command_up_to_the_servers_limit_is_sent_and_one_byte_more_refused_at_the_call(
    client: SevenSegments, fresh: LocalServer
) -> None:
    _up_to_the_servers_limit(client, fresh)


def test_a_command_up_to_the_servers_limit_is_spooled_and_sent_and_one_byte_more_refused_at_the_call(
    fresh: LocalServer, tmp_path: Any
) -> None:
    with SevenSegments(TOKEN, customer="john123", target=fresh.url, buffered=True, spool=str(tmp_path)) as client:
        _up_to_the_servers_limit(client, fresh)


def _up_to_the_servers_limit(client: SevenSegments, fresh: LocalServer) -> None:
    def data(text: str) -> Dict[str, Any]:
        return {
            "company_id": TOKEN, "customer_ids": {"registered": "john123"}, "type": "e", "properties": {"s": text},
            "timestamp": 1700000000.5, "command_id": "c" * 16,
        }

    def server_size(text: str) -> int:  # as the server measures a command's data
        return len(json.dumps(data(text), separators=(",", ":"), ensure_ascii=False).encode())

    room = MAX_COMMAND_BYTES - server_size("")
    over = "\u00e9" * ((room + 1) // 2) + "x" * ((room + 1) % 2)  # one byte more, two bytes a character
    assert server_size(over) == MAX_COMMAND_BYTES + 1
    with pytest.raises(ValueError, match=r"^the properties take \d+ bytes as JSON, too many for one command"):
        client.track("e", {"s": over}, timestamp=1700000000.5, command_id="c" * 16)
    # The client counts the timestamp as the longer of its two spellings (1700000000500000e-6 in a
    # bulk body, 1700000000.5 as the server writes it again): up to 7 bytes less than the server allows.
    client.track("e", {"s": "x" * (room - 7)}, timestamp=1700000000.5, command_id="c" * 16)
    assert client.flush(5) is True
    assert [request["status"] for request in fresh.requests()] == [200]
    assert len(fresh.events()[0]["properties"]["s"]) == room - 7


def test_bad_campaign_name(fresh: LocalServer) -> None:
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url)
    for bad in ("", None, 5):
        with pytest.raises(ValueError, match="campaign_name"):
            client.get_html(bad)  # type: ignore[arg-type]
    assert fresh.requests() == []


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["ftp://x", "http://", "not a url", ""])
def test_bad_target(target: str) -> None:
    with pytest.raises(ValueError) as caught:
        SevenSegments(TOKEN, target=target)
    assert "target" in str(caught.value) and repr(target) in str(caught.value)
    with pytest.raises(ValueError) as caught:
        AuthenticatedSevenSegments("user", "pw", target=target)
    assert repr(target) in str(caught.value)


def test_target_not_a_string() -> None:
    with pytest.raises(TypeError, match="target"):
        SevenSegments(TOKEN, target=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("token, error", [("", ValueError), ("   ", ValueError), (None, TypeError), (123, TypeError)])
def test_bad_token(token: Any, error: type) -> None:
    with pytest.raises(error, match="token"):
        SevenSegments(token)


def test_bad_password_and_username() -> None:
    with pytest.raises(ValueError, match="password"):
        AuthenticatedSevenSegments("user", "")
    with pytest.raises(ValueError, match="username"):
        AuthenticatedSevenSegments("", "pw")


@pytest.mark.parametrize(
    "keyword, value, error",
    [
        ("timeout", 0, ValueError),
        ("timeout", -1, ValueError),
        ("timeout", float("nan"), ValueError),
        ("timeout", "10", TypeError),
        ("retry_deadline", -1, ValueError),
        ("batch_size", 0, ValueError),
        ("batch_size", 1001, ValueError),
        ("flush_interval", 0, ValueError),
    ],
)
def test_bad_settings(keyword: str, value: Any, error: type) -> None:
    with pytest.raises(error) as caught:
        SevenSegments(TOKEN, buffered=True, **{keyword: value})
    assert keyword in str(caught.value)


def test_unknown_analysis_type(fresh: LocalServer) -> None:
    client = AuthenticatedSevenSegments("user", "pw-SECRET-xyz", target=fresh.url)
    with pytest.raises(ValueError) as caught:
        client.export_analysis("funnels", {"analysis_id": "a"})
    assert "'funnels'" in str(caught.value)
    assert "pw-SECRET-xyz" not in str(caught.value)
    with pytest.raises(ValueError, match="float nan"):
        client.export_analysis("funnel", {"analysis_id": "a", "x": float("nan")})
    with pytest.raises(TypeError):
        client.export_analysis("funnel", ["analysis_id"])  # type: ignore[arg-type]
    assert fresh.requests() == []


# -- bad calls lose nothing ------------------------------------------------------------------------


def test_bad_call_between_good_ones_loses_nothing(client: SevenSegments, fresh: LocalServer) -> None:
    client.track("good", {"n": 1})
    with pytest.raises(ValueError):
        client.track("bad", {"x": float("nan")})
    with pytest.raises(TypeError):
        client.track("bad", {"x": object()})
    client.track("good", {"n": 2})
    assert client.flush(5) is True
    assert [(event["type"], event["properties"]) for event in fresh.events()] == [("good", {"n": 1}), ("good", {"n": 2})]
    assert client.stats()["failed"] == 0


# -- conversions -----------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Size(enum.IntEnum):
    LARGE = 3


class ReadOnly(Mapping):
    def __init__(self, data: Dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_conversions(client: SevenSegments, fresh: LocalServer) -> None:
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-90ab-cdef-1234-567890abcdef")
    properties = {
        "when": moment,
        "when_elsewhere": datetime.datetime(2024, 1, 2, 4, 4, 5, 600000, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        "day": datetime.date(2024, 1, 2),
        "at": datetime.time(3, 4, 5),
        "price": decimal.Decimal("1.5"),
        "count": decimal.Decimal("3"),
        "id": ident,
        "color": Color.RED,
        "level": Color.GREEN,
        "size": Size.LARGE,
        "pair": (1, "a"),
        "tags": {"b", "a", "c"},
        "frozen": frozenset({3}),
        "nested": ReadOnly({"inner": ReadOnly({"x": (Color.RED, decimal.Decimal("0.25"))})}),
        "proxy": types.MappingProxyType({"k": "v"}),
    }
    client.track("e", properties)
    client.update(ReadOnly({"since": datetime.date(2020, 5, 6), "score": decimal.Decimal("10")}))
    assert client.flush(5) is True
    (event,) = fresh.events()
    stored = event["properties"]
    assert stored == {
        "when": "2024-01-02T03:04:05+00:00",
        "when_elsewhere": "2024-01-02T04:04:05.600000+01:00",
        "day": "2024-01-02",
        "at": "03:04:05",
        "price": 1.5,
        "count": 3,
        "id": "12345678-90ab-cdef-1234-567890abcdef",
        "color": "red",
        "level": 2,
        "size": 3,
        "pair": [1, "a"],
        "tags": ["a", "b", "c"],
        "frozen": [3],
        "nested": {"inner": {"x": ["red", 0.25]}},
        "proxy": {"k": "v"},
    }
    assert type(stored["count"]) is int and type(stored["price"]) is float
    assert fresh.customer("john123") == {"since": "2020-05-06", "score": 10}


def test_bool_and_none_and_big_int_preserved(client: SevenSegments, fresh: LocalServer) -> None:
    client.track("e", {"t": True, "f": False, "none": None, "big": 2**70, "neg": -1, "zero": 0.0, "s": "ünï"})
    assert client.flush(5) is True
    stored = fresh.events()[0]["properties"]
    assert stored == {"t": True, "f": False, "none": None, "big": 2**70, "neg": -1, "zero": 0.0, "s": "ünï"}
    assert stored["t"] is True and type(stored["neg"]) is int


def test_lone_surrogate_refused_before_sending(fresh: LocalServer) -> None:
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url, retry_deadline=0.5)
    try:
        with pytest.raises(ValueError, match=r"properties\['s'\]"):
            client.track("e", {"s": "a\ud800b"})
    finally:
        assert fresh.requests() == []


# -- property-based round trip ---------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
_PROPERTIES = st.dictionaries(st.text(max_size=10), _JSON, max_size=6)


@pytest.fixture(scope="module")
def blocking_client(shared_server: LocalServer) -> Iterator[SevenSegments]:
    with SevenSegments(TOKEN, customer="john123", target=shared_server.url) as made:
        yield made


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(properties=_PROPERTIES, event_type=st.text(min_size=1, max_size=256))
def test_any_json_properties_round_trip(
    shared_server: LocalServer, blocking_client: SevenSegments, properties: Dict[str, Any], event_type: str
) -> None:
    shared_server.reset()
    expected = json.loads(json.dumps(properties))
    blocking_client.track(event_type, properties)
    blocking_client.update(properties)
    (event,) = shared_server.events()
    assert event["type"] == event_type
    assert event["properties"] == expected
    bodies = [request["body"] for request in shared_server.requests()]
    assert bodies[0]["properties"] == expected and bodies[1]["properties"] == expected
    # Floats keep their exact value (no rounding through the wire or the store).
    assert json.dumps(event["properties"], sort_keys=True) == json.dumps(expected, sort_keys=True)


@settings(max_examples=50, deadline=None)
@given(value=st.floats() | st.sampled_from([math.nan, math.inf, -math.inf]))
def test_floats_accepted_iff_finite(value: float) -> None:
    from seven_segments.serialization import capture_properties

    if math.isfinite(value):
        assert capture_properties({"v": [value], "w": value})[0] == {"v": [value], "w": value}
    else:
        with pytest.raises(ValueError, match=r"properties\['v'\]\[0\]: float"):
            capture_properties({"v": [value]})
        with pytest.raises(ValueError, match=r"properties\['w'\]: float"):
            capture_properties({"w": value})


class Key(str, enum.Enum):
    A = "a"


def test_str_enum_keys_become_their_value(fresh: LocalServer) -> None:
    client = SevenSegments(TOKEN, customer="john123", target=fresh.url)
    client.track("e", {Key.A: 1, "n": {Key.A: 2}})
    assert fresh.events()[0]["properties"] == {"a": 1, "n": {"a": 2}}


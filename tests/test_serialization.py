"""A queued command as the JSON of a bulk command: pure checks, no sockets."""

from __future__ import annotations

import collections
import contextlib
import decimal
import enum
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seven_segments import serialization
from seven_segments.serialization import (
    MAX_TIMESTAMP,
    BulkCommandEncoder,
    capture_properties,
    capture_properties_json,
    check_command_size,
    customer_ids,
)
from seven_segments.json_writer import STDLIB, JsonWriter, orjson_writer

from .conftest import examples

#: The orjson writer, when orjson is installed (``pip install 'seven-segments[fast]'``).
ORJSON = orjson_writer()
needs_orjson = pytest.mark.skipif(ORJSON is None, reason="orjson is not installed")


@contextlib.contextmanager
def writing_with(writer: JsonWriter) -> Iterator[None]:
    """Properties are written by ``writer`` inside the block."""
    previous = serialization._use_writer(writer)
    try:
        yield
    finally:
        serialization._use_writer(previous)


@pytest.fixture
def stdlib_writer() -> Iterator[None]:
    with writing_with(STDLIB):
        yield

@settings(max_examples=examples(300), deadline=None)
@given(st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True))
def test_the_timestamp_is_written_to_the_microsecond(timestamp: float) -> None:
    encoder = BulkCommandEncoder("token")
    command = ("crm/events", {"registered": "john"}, "view", {"n": 1}, timestamp, "id-1")
    data = json.loads(encoder.encode(command))["data"]
    written = data["timestamp"]
    assert isinstance(written, float) and abs(written - timestamp) <= 5e-7 + timestamp * 4e-16
    assert data["properties"] == {"n": 1} and data["command_id"] == "id-1" and data["company_id"] == "token"


def test_commands_of_both_kinds_are_whole_bulk_commands() -> None:
    encoder = BulkCommandEncoder('to"ken')
    ids = {"registered": "jöhn"}
    event = json.loads(encoder.encode(("crm/events", ids, "vïew", {"a": "é"}, 1700000000.25, "e-1")))
    update = json.loads(encoder.encode(("crm/customers", ids, None, {}, 1700000000.0, "u-1")))
    assert event == {
        "name": "crm/events",
        "data": {
            "company_id": 'to"ken', "customer_ids": ids, "type": "vïew", "properties": {"a": "é"},
            "timestamp": 1700000000.25, "command_id": "e-1",
        },
    }
    assert update == {
        "name": "crm/customers",
        "data": {"company_id": 'to"ken', "ids": ids, "properties": {}, "timestamp": 1700000000.0, "command_id": "u-1"},
    }
    reported = BulkCommandEncoder.as_dict(("crm/events", ids, "vïew", {"a": 1}, 5.0, "e-2"))
    assert reported == {"name": "crm/events", "data": {"customer_ids": ids, "type": "vïew", "properties": {"a": 1}, "timestamp": 5.0, "command_id": "e-2"}}


def test_each_command_carries_its_own_customer_and_type_whatever_the_encoder_saw_before() -> None:
    """The encoder reuses the JSON of the last ids and type it saw (same object, or equal ids): a
    run of commands for one customer, one for another, then the first again, each says its own."""
    encoder = BulkCommandEncoder("token")
    sequence = [
        ({"registered": "ann"}, "view"), ({"registered": "ann"}, "view"), ({"registered": "bob"}, "view"),
        ({"registered": "bob"}, "buy"), ({"cookie": "c1", "registered": "ann"}, "buy"), ({"registered": "ann"}, "buy"),
    ]
    shared = sequence[0][0]
    sequence.append((shared, "view"))
    for number, (ids, kind) in enumerate(sequence):
        data = json.loads(encoder.encode(("crm/events", ids, kind, {"n": number}, 1.0, f"id-{number}")))["data"]
        assert (data["customer_ids"], data["type"], data["properties"]) == (ids, kind, {"n": number})
        update = json.loads(encoder.encode(("crm/customers", ids, None, {"n": number}, 1.0, f"u-{number}")))["data"]
        assert update["ids"] == ids


def test_on_error_gets_a_copy_of_the_shared_ids() -> None:
    ids = {"registered": "ann"}
    reported = BulkCommandEncoder.as_dict(("crm/events", ids, "view", {}, 1.0, "id-1"))
    reported["data"]["customer_ids"]["registered"] = "changed by a callback"
    assert ids == {"registered": "ann"}


# What a client with a spool queues: the properties' JSON text, checked exactly as a copy is. --------

#: Strings of characters JSON and UTF-8 treat specially (escapes, non-ASCII, a lone surrogate: which
#: ``st.text`` never makes), and of any other.
_characters = st.sampled_from(["a", "é", "\ud800", '"', "\\", "\n", "\x00", "\x7f", "\u2028", "💥"]) | st.characters()


def _strings(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(_characters, max_size=max_size).map("".join)


_plain_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), _strings(8),
)
_values = st.recursive(_plain_values, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def _outcome(capture: Callable[[], Any]) -> Any:
    try:
        return capture()
    except (TypeError, ValueError) as error:
        return (type(error), str(error))


def _assert_written_as_the_checked_copy(properties: Any) -> None:
    """``capture_properties_json`` gives the JSON of ``capture_properties``' copy, or its error: with
    the standard library, exactly ``json.dumps``' text; with orjson, the same JSON value."""
    careful = _outcome(lambda: capture_properties(properties))
    with writing_with(STDLIB):
        written = _outcome(lambda: capture_properties_json(properties))
    if isinstance(careful, tuple) and isinstance(careful[0], type):
        assert written == careful
    else:
        text = json.dumps(careful[0], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        assert written == (text, len(text))
        assert json.loads(written[0]) == careful[0]
    if ORJSON is not None:
        with writing_with(ORJSON):
            fast = _outcome(lambda: capture_properties_json(properties))
        _assert_the_same_json_or_error(fast, written)


def _assert_the_same_json_or_error(fast: Any, written: Any) -> None:
    """Two outcomes of ``capture_properties_json``: the same error, or texts of the same JSON value
    whose lengths (what the queue counts) are those of the texts."""
    if isinstance(written, tuple) and isinstance(written[0], type):
        assert fast == written
    else:
        assert json.loads(fast[0]) == json.loads(written[0]) and fast[1] == len(fast[0])


@settings(max_examples=examples(400), deadline=None)
@given(st.dictionaries(_strings(6), _values, max_size=6))
@example({"lone": "\ud800"})
@example({"a": 1, "\ud800": 2})
def test_the_json_of_properties_is_the_json_of_their_checked_copy_or_the_same_error(properties: Dict[str, Any]) -> None:
    _assert_written_as_the_checked_copy(properties)


def test_the_json_of_properties_names_the_bad_value_as_the_copy_does() -> None:
    with pytest.raises(ValueError, match=r"properties\['b'\]: float nan is not valid JSON"):
        capture_properties_json({"a": 1, "b": float("nan")})
    with pytest.raises(TypeError, match=r"properties\['when'\]: bytes b'x' is not valid JSON; decode it"):
        capture_properties_json({"ok": "yes", "when": b"x"})
    with pytest.raises(TypeError, match="properties must be a dict, not list"):
        capture_properties_json([1])
    with pytest.raises(ValueError, match="a command may take at most"):
        capture_properties_json({"big": "x" * 200_000})
    assert capture_properties_json(None) == ("{}", 2) and capture_properties_json({}) == ("{}", 2)
    assert capture_properties_json({"at": datetime(2026, 1, 2, tzinfo=timezone.utc), "n": 1}) == (
        '{"at":"2026-01-02T00:00:00+00:00","n":1}', 40,
    )


class _Text(str):
    def __str__(self) -> str:
        return "not this"


class _Number(int):
    def __repr__(self) -> str:
        return "not this"


class _Level(enum.IntEnum):
    HIGH = 3


class _Ratio(float):
    def __repr__(self) -> str:
        return "not this"


class _Colour(str, enum.Enum):
    RED = "red"


@pytest.mark.parametrize(
    "properties",
    [
        {"s": _Text("shown")}, {_Text("key"): 1}, {"n": _Number(7)}, {"level": _Level.HIGH}, {"r": _Ratio(0.5)},
        {_Colour.RED: 1}, {"c": _Colour.RED}, {"z": -0.0, "big": 1e16, "huge": 1e308, "tiny": 5e-324},
        {"i": 2**63, "j": -(2**64), "k": 10**4299}, {"quote\"back\\slash\n\u2028": "\x00\x7f"},
        {"": ""}, {"a": []}, {"a": {}}, collections.OrderedDict(a=1), {"n": 10**4300}, {1: 2}, {None: 1},
        {"b": b"x"}, {"c": 1j}, {"nan": float("nan")}, {"inf": float("-inf")},
    ],
)
def test_the_json_of_unusual_properties_is_the_json_of_their_checked_copy_or_the_same_error(properties: Any) -> None:
    _assert_written_as_the_checked_copy(properties)


@pytest.mark.parametrize(
    "properties",
    [
        {f"k{number:04d}": 0 for number in range(4200)},  # 42 KB of text, counted 122 KB: refused
        {f"k{number:04d}": True for number in range(4200)},
        {f"k{number:04d}": 0.5 for number in range(3200)},
        {"a": "x" * 102392},  # 102,400 characters of text, counted 102,401
    ],
    ids=["ints", "booleans", "floats", "one string at the edge"],
)
def test_properties_refused_as_too_large_for_a_copy_are_refused_as_json(properties: Dict[str, Any]) -> None:
    with pytest.raises(ValueError) as careful:
        capture_properties(properties)
    with pytest.raises(ValueError) as written:
        capture_properties_json(properties)
    assert str(written.value) == str(careful.value) and "a command may take at most 102400" in str(careful.value)


def test_the_largest_properties_a_copy_takes_are_written_whole() -> None:
    properties = {f"k{number:04d}": 0 for number in range(3000)}  # counted about 87 KB: accepted
    copy, _ = capture_properties(properties)
    assert capture_properties_json(properties)[0] == json.dumps(copy, separators=(",", ":"))


def test_the_keys_written_once_are_kept_only_up_to_a_bound(monkeypatch: pytest.MonkeyPatch, stdlib_writer: None) -> None:
    monkeypatch.setattr(serialization, "_KEY_JSON", {})
    monkeypatch.setattr(serialization, "_SHAPES", {})
    for number in range(serialization._SHAPES_KEPT + serialization._KEYS_KEPT + 500):
        assert capture_properties_json({f"key-{number}": number})[0] == f'{{"key-{number}":{number}}}'
    assert len(serialization._SHAPES) == serialization._SHAPES_KEPT
    assert len(serialization._KEY_JSON) == serialization._KEYS_KEPT


def test_long_keys_are_not_kept(monkeypatch: pytest.MonkeyPatch, stdlib_writer: None) -> None:
    """A key the cache kept would stay for the life of the process, refused properties' keys too."""
    monkeypatch.setattr(serialization, "_KEY_JSON", {})
    monkeypatch.setattr(serialization, "_SHAPES", {})
    long_key = "k" * 1_000_000
    with pytest.raises(ValueError, match="a command may take at most"):
        capture_properties_json({long_key: 1})
    assert capture_properties_json({"k" * 65: 1, "n": [1]})[0] == '{"' + "k" * 65 + '":1,"n":[1]}'
    assert capture_properties_json({"k" * 65: 1})[0] == '{"' + "k" * 65 + '":1}'
    assert capture_properties_json({"k" * 64: 1})[0] == '{"' + "k" * 64 + '":1}'
    assert list(serialization._KEY_JSON) == ["n"]  # the general loop's (a shape takes no nested value)
    assert list(serialization._SHAPES) == [("k" * 64,)]


def test_a_command_queued_with_the_json_of_its_properties_is_encoded_and_reported_as_with_a_copy() -> None:
    encoder = BulkCommandEncoder("token")
    ids = {"registered": "ann"}
    for path, kind in (("crm/events", "view"), ("crm/customers", None)):
        copy = (path, ids, kind, {"a": "é", "n": 2.5}, 7.0, "id-1")
        text = (path, ids, kind, capture_properties_json({"a": "é", "n": 2.5})[0], 7.0, "id-1")
        assert encoder.encode(text) == encoder.encode(copy)
        assert BulkCommandEncoder.as_dict(text) == BulkCommandEncoder.as_dict(copy)


def test_company_of_finds_the_token_of_an_encoded_command() -> None:
    from seven_segments.serialization import BulkCommandEncoder

    token = 'to"k\\en-ü-€'
    payload = BulkCommandEncoder(token).encode(("crm/events", {"registered": "x"}, "view", {"company_id": "no"}, 1.0, "c1"))
    assert BulkCommandEncoder.company_of(payload) == token
    assert BulkCommandEncoder.company_of(b'{"name": "bulk", "data": {"company_id" : "spaced"}}') == "spaced"
    for payload in (b"{}", b'{"data": {"company_id": 5}}', b'{"data": {"company_id": "\\ud800'):
        assert BulkCommandEncoder.company_of(payload) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1e-1000000", 0.0),  # the nearest float, as json.loads("1e-1000000") gives
        ("-1.5e-400", -0.0),
        ("0e1000000", 0),  # zero, whatever its exponent
        ("1e4299", 10**4299),  # 4300 digits: the most an int may have
        ("1." + "1" * 100_000, 1.1111111111111112),  # many digits: the nearest float
        ("1" * 4300, int("1" * 4300)),
    ],
)
def test_decimals_near_the_limits_are_converted(text: str, expected: Any) -> None:
    copy, _ = capture_properties({"d": decimal.Decimal(text)})
    assert copy["d"] == expected and type(copy["d"]) is type(expected)


@pytest.mark.parametrize("text", ["1e4300", "-1e4300", "1e1000000", "-9.99e999999999", "1" * 4301, "1" * 5000 + ".5"])
def test_decimals_past_4300_digits_before_the_point_are_refused_at_once(text: str) -> None:
    started = time.perf_counter()
    for capture in (capture_properties, capture_properties_json):
        with pytest.raises(ValueError, match=r"^properties\['d'\]: Decimal .* has more than 4300 digits"):
            capture({"d": decimal.Decimal(text)})
    assert time.perf_counter() - started < 1.0


def test_ints_past_4300_digits_are_refused_whatever_the_interpreters_limit() -> None:
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("no int-to-str limit on this interpreter")
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        for value in (10**4300, -(10**4300), 10**20000):
            with pytest.raises(ValueError, match="more than 4300 digits"):
                capture_properties({"n": [value]})
        assert capture_properties({"n": [-(10**4299)]})[0] == {"n": [-(10**4299)]}
    finally:
        sys.set_int_max_str_digits(limit)


def test_a_flat_int_past_4300_digits_is_refused_as_json_whatever_the_interpreters_limit(stdlib_writer: None) -> None:
    """The standard library's loop writes flat ints itself: one past 4300 digits is refused as
    ``capture_properties`` refuses it, even where the interpreter would write it."""
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("no int-to-str limit on this interpreter")
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(ValueError, match=r"^properties\['n'\]: int with more than 4300 digits"):
            capture_properties_json({"a": 1, "n": 10**4300})
        assert capture_properties_json({"n": -(2**63), "m": 2**63})[0] == f'{{"n":{-(2**63)},"m":{2**63}}}'
    finally:
        sys.set_int_max_str_digits(limit)


_valid_text = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(['"', "\\", "\n", "\x00", "é", "💥"]), min_size=1, max_size=12)


@settings(max_examples=examples(200), deadline=None)
@given(
    path=st.sampled_from(["crm/events", "crm/customers"]),
    ids=st.dictionaries(_valid_text, _valid_text, min_size=1, max_size=3),
    kind=_valid_text,
    properties=st.dictionaries(_valid_text, _valid_text | st.integers() | st.floats(allow_nan=False, allow_infinity=False), max_size=4),
    timestamp=st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True),
    as_json=st.booleans(),
    token=_valid_text,
)
# orjson writes this float longer than the standard library does (0.00006103515625, 6.103515625e-05)
@example(path="crm/events", ids={"0": "0"}, kind="0", properties={"0": 6.103515625e-05}, timestamp=0.0, as_json=False, token="0")
def test_the_size_checked_at_the_call_is_what_the_pump_measures_and_no_less_than_the_servers(
    path: str, ids: Dict[str, str], kind: str, properties: Dict[str, Any], timestamp: float, as_json: bool, token: str
) -> None:
    captured = capture_properties_json(properties)[0] if as_json else capture_properties(properties)[0]
    command = (path, ids, kind if path == "crm/events" else None, captured, timestamp, "c-1")
    size = check_command_size(command, token)
    payload = BulkCommandEncoder(token).encode(command)
    pumps = len(payload) - len('{"name":"' + path + '","data":}')  # the pump refuses a command past the limit
    servers = len(json.dumps(json.loads(payload)["data"], separators=(",", ":"), ensure_ascii=False).encode())
    assert max(pumps, servers) <= size <= max(pumps, servers) + 24  # only the timestamp's spelling differs


@needs_orjson
def test_json_written_at_the_call_is_measured_in_the_servers_spelling_too() -> None:
    """orjson writes 1e-07 as 1e-7, a byte shorter than the standard library (the server): the size
    of properties written by orjson at the call is no less than the server's."""
    assert ORJSON is not None
    with writing_with(ORJSON):
        written, _ = serialization.capture_properties_written({key: 1e-07 for key in "abcdefgh"})
    assert written.count(b"1e-7,") == 7
    command = ("crm/events", {"registered": "a"}, "view", written, 1700000000.123456, "c-1")
    payload = BulkCommandEncoder("token").encode(command)
    servers = len(json.dumps(json.loads(payload)["data"], separators=(",", ":"), ensure_ascii=False).encode())
    assert check_command_size(command, "token") >= servers


@pytest.mark.parametrize("id_length", [1, serialization.SMALL_IDS_CHARACTERS - 2, 15_000])
def test_properties_within_the_room_fit_even_when_every_character_is_escaped(id_length: int) -> None:
    """The call measures a command only when its properties count more than ``properties_room``
    (of any small ids, or of the ``LargeCustomerIds`` it has): below it, the command fits whatever
    its characters (here all escaped to six bytes)."""
    token, ids = "\x01" * 40, customer_ids({"\x02": "\x03" * id_length})
    if id_length > serialization.SMALL_IDS_CHARACTERS:
        assert isinstance(ids, serialization.LargeCustomerIds) and ids.json_bytes == 6 * id_length + 13
        room = serialization.properties_room(token, ids.json_bytes)
    else:
        assert type(ids) is dict
        room = serialization.properties_room(token)
    properties, size = capture_properties({"\x04": "\x05" * (room - 9)})
    assert size == room
    command = ("crm/events", ids, "\x06" * 256, properties, MAX_TIMESTAMP - 1e-6, "c" * 64)
    assert check_command_size(command, token) <= serialization.MAX_COMMAND_BYTES
# The two writers (orjson when installed, the standard library otherwise): the same checks, the same
# errors, the same JSON values on the wire. ------------------------------------------------------

#: What callers pass besides plain JSON: moments (aware and naive), decimals (NaN among them),
#: UUIDs, tuples, sets, and keys that are not strings.
_rich_values = st.recursive(
    _plain_values | st.datetimes(timezones=st.none() | st.just(timezone.utc)) | st.dates()
    | st.decimals(places=3) | st.decimals(allow_nan=True) | st.uuids(),
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple)
    | st.frozensets(st.integers(-3, 3), max_size=3)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 3), inner, max_size=3),
    max_leaves=6,
)

_commands = st.tuples(
    st.sampled_from([("crm/events", "view"), ("crm/customers", None)]),
    st.dictionaries(st.text("ab\"é💥", min_size=1, max_size=4), st.text("ab\\é", min_size=1, max_size=4), min_size=1, max_size=2),
    st.dictionaries(_strings(6), _values | _rich_values, max_size=6),
    st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True),
)


@needs_orjson
@settings(max_examples=examples(300), deadline=None)
@given(_commands)
@example((("crm/events", "view"), {"registered": "a"}, {"big": 2**64, "small": -(2**63) - 1, "top": 2**64 - 1}, 1.0))
@example((("crm/events", "view"), {"registered": "a"}, {"huge": 10**4299, "nested": [{"x": 2**70}]}, 1.0))
@example((("crm/events", "view"), {"registered": "a"}, {"nan": float("nan"), "x": 1}, 1.0))
@example((("crm/events", "view"), {"registered": "a"}, {"lone": ["\ud800"]}, 1.0))
def test_both_writers_accept_refuse_and_write_the_same_commands(command: Any) -> None:
    """Checked on the caller (as a copy, or as JSON for a spool), then encoded in the pump, with each
    writer: the same error naming the same path, or bulk commands of the same JSON value."""
    (path, kind), ids, properties, timestamp = command
    outcomes = []
    for writer in (STDLIB, ORJSON):
        assert writer is not None
        with writing_with(writer):
            copy = _outcome(lambda: capture_properties(properties))
            text = _outcome(lambda: capture_properties_json(properties))
            if isinstance(copy, tuple) and isinstance(copy[0], type):
                outcomes.append((copy, text, None, None))
                continue
            encoder = BulkCommandEncoder("token")
            from_copy = json.loads(encoder.encode((path, ids, kind, copy[0], timestamp, "id-1")))
            from_text = json.loads(encoder.encode((path, ids, kind, text[0], timestamp, "id-1")))
            assert from_copy == from_text
            outcomes.append((copy, text, from_copy, json.loads(text[0])))
    (copy, text, encoded, parsed), (fast_copy, fast_text, fast_encoded, fast_parsed) = outcomes
    assert fast_copy == copy  # the checks do not depend on the writer
    _assert_the_same_json_or_error(fast_text, text)
    assert fast_encoded == encoded and fast_parsed == parsed


@needs_orjson
def test_orjson_never_sees_what_it_would_write_wrongly() -> None:
    """orjson writes NaN as null and refuses integers past 64 bits: the checks refuse the one and
    the standard library writes the other, naming the same paths as without orjson."""
    assert ORJSON is not None
    with writing_with(ORJSON):
        with pytest.raises(ValueError, match=r"properties\['n'\]: float nan is not valid JSON"):
            capture_properties_json({"a": 1, "n": float("nan")})
        with pytest.raises(ValueError, match=r"properties\['l'\]\[1\]: float inf is not valid JSON"):
            capture_properties_json({"l": [1, float("inf")]})
        with pytest.raises(ValueError, match=r"properties\['at'\] 2026-01-02T00:00:00 has no time zone"):
            capture_properties_json({"at": datetime(2026, 1, 2)})
        with pytest.raises(TypeError, match=r"properties: key 1 is int; keys must be strings"):
            capture_properties_json({1: 2})
        assert capture_properties_json({"big": 2**64, "n": 1}) == ('{"big":18446744073709551616,"n":1}', 34)
        cycle: Any = []
        cycle.append(cycle)
        with pytest.raises(ValueError, match=r"properties\['c'\]" + r"\[0\]" * 32 + r": nested deeper than 32 levels"):
            capture_properties_json({"c": cycle})
        with pytest.raises(TypeError, match=r"properties\['o'\]: object <object object at"):
            capture_properties_json({"o": object()})
        copy, _ = capture_properties({"big": [-(2**70)]})
        encoded = BulkCommandEncoder("token").encode(("crm/events", {"registered": "a"}, "view", copy, 1.0, "id-1"))
        assert b'"properties":{"big":[-1180591620717411303424]}' in encoded


@pytest.mark.slow
def test_the_standard_library_writes_when_orjson_cannot_be_imported() -> None:
    """Without orjson (its import blocked), the package imports, checks, and writes with json."""
    script = """
import json, sys
sys.modules["orjson"] = None  # import orjson raises ImportError
from seven_segments import serialization
from seven_segments.client import _encode
assert serialization._WRITER.name == "json" and serialization._FAST_DUMPS is None and serialization._WRITER.fast_dumps is None, serialization._WRITER
text, size = serialization.capture_properties_json({"a": 1.5, "b": [2 ** 70], "c": "\u00e9"})
assert (text, size) == ('{"a":1.5,"b":[1180591620717411303424],"c":"\u00e9"}', 46), (text, size)
copy, _ = serialization.capture_properties({"n": 1})
body = serialization.BulkCommandEncoder("t").encode(("crm/events", {"registered": "a"}, "view", copy, 1.0, "i"))
assert json.loads(body)["data"]["properties"] == {"n": 1}
assert json.loads(_encode({"a": [1, "\u00e9"]})) == {"a": [1, "\u00e9"]}
try:
    serialization.capture_properties_json({"x": float("nan")})
except ValueError as error:
    assert str(error) == "properties['x']: float nan is not valid JSON", error
else:
    raise AssertionError("NaN accepted")
assert "orjson" not in [name for name in sys.modules if sys.modules[name] is not None]
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


# A buffered client's track/update hand the caller's own dict to the engine's encoder, which checks,
# writes and measures it in one pass: the same errors, and the same bytes, as checking it first. ----


def _writers() -> "list[JsonWriter]":
    return [STDLIB] if ORJSON is None else [STDLIB, ORJSON]


@settings(max_examples=examples(300), deadline=None)
@given(_commands)
@example((("crm/events", "view"), {"registered": "a"}, {"nan": float("nan"), "x": 1}, 1.0))
@example((("crm/events", "view"), {"registered": "a"}, {"big": 2**64, "s": "\ud800"}, 1.0))
@example((("crm/customers", None), {"registered": "a"}, {"at": datetime(2026, 1, 2), "b": None}, 1.0))
def test_the_encoder_checks_a_callers_dict_as_the_call_does(command: Any) -> None:
    (path, kind), ids, properties, timestamp = command
    for writer in _writers():
        with writing_with(writer):
            encoder = BulkCommandEncoder("token")
            whole = _outcome(lambda: encoder.encode((path, ids, kind, properties, timestamp, "id-1")))
            written = _outcome(lambda: serialization.capture_properties_written(properties))
            if isinstance(written, tuple) and isinstance(written[0], type):
                assert whole == written
            else:
                assert whole == encoder.encode((path, ids, kind, written[0], timestamp, "id-1"))


@pytest.mark.parametrize("writer", _writers(), ids=lambda writer: writer.name)
@pytest.mark.parametrize("large_ids", [False, True])
def test_the_encoder_measures_a_callers_dict_as_the_call_does(writer: JsonWriter, large_ids: bool) -> None:
    """Properties past the room are measured exactly, up to the server's limit and one byte past it."""
    token = "t" * 40
    ids = customer_ids({"email": "e" * 40_000}) if large_ids else customer_ids("ann")
    with writing_with(writer):
        encoder = BulkCommandEncoder(token)
        room = serialization.properties_room(token)
        for length in (room - 10, room - 9, room + 1, 30_000):
            encoder.encode(("crm/events", ids, "view", {"s": "x" * length}, 1.5, "id-1"))
        command = ("crm/events", ids, "view", {"s": ""}, 1.5, "id-1")
        room_left = serialization.MAX_COMMAND_BYTES - check_command_size(command, token)
        fits = ("crm/events", ids, "view", {"s": "x" * room_left}, 1.5, "id-1")
        assert json.loads(encoder.encode(fits))["data"]["properties"]["s"] == "x" * room_left
        too_large = ("crm/events", ids, "view", {"s": "x" * (room_left + 1)}, 1.5, "id-1")
        with pytest.raises(ValueError, match=r"^the (properties|customer ids) take \d+ bytes as JSON, too many"):
            encoder.encode(too_large)


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(_strings(6), max_size=6, unique=True), st.data())
def test_a_shapes_writer_writes_what_the_careful_path_does_or_leaves_it_to_it(keys: Any, data: Any) -> None:
    """The standard library's writers made for the keys (and the value types) of the first dict
    write any later dict of those keys as the checked copy's JSON, or refuse it as the copy does:
    alone (at the call) and inside a whole bulk command (the encoder)."""
    dicts = [{key: data.draw(_plain_values) for key in keys} for _ in range(3)]
    timestamp = data.draw(st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True))
    saved = serialization._SHAPES
    serialization._SHAPES = {}
    try:
        with writing_with(STDLIB):
            encoder = BulkCommandEncoder("token")
            for properties in dicts + dicts[:1]:
                careful = _outcome(lambda: capture_properties(properties))
                written = _outcome(lambda: capture_properties_json(properties))
                encoded = _outcome(lambda: encoder.encode(("crm/events", {"registered": "j"}, "view", properties, timestamp, "id-1")))
                if isinstance(careful, tuple) and isinstance(careful[0], type):
                    assert written == careful and encoded == careful
                else:
                    text = json.dumps(careful[0], separators=(",", ":"), ensure_ascii=False, allow_nan=False)
                    assert written == (text, len(text))
                    command = json.loads(encoded)
                    assert command["data"]["properties"] == careful[0] and command["data"]["command_id"] == "id-1"
                    assert command["data"]["timestamp"] == round(timestamp * 1e6) / 1e6
        assert list(serialization._SHAPES) == [tuple(keys)]
    finally:
        serialization._SHAPES = saved


@pytest.mark.parametrize(
    "later",
    [{"a": None, "b": 1}, {"a": "x", "b": float("nan")}, {"a": "x", "b": 2**63}, {"a": "\ud800", "b": 1},
     {"a": "x", "b": True}, {"a": "x", "b": [1]}, {"a": "x", "b": -(2**63) + 1}, {"a": "é💥", "b": 1},
     {"a": "x" * 30_000, "b": 1}],
)
def test_a_shapes_writer_takes_only_the_types_it_was_made_for(later: Dict[str, Any]) -> None:
    """At the call (capture_properties_json) and in the encoder (a caller's dict, customer ids
    outside ASCII): the checked copy's JSON, or its error."""
    saved = serialization._SHAPES
    serialization._SHAPES = {}
    try:
        with writing_with(STDLIB):
            assert capture_properties_json({"a": "first", "b": 0})[0] == '{"a":"first","b":0}'
            careful = _outcome(lambda: capture_properties(later))
            written = _outcome(lambda: capture_properties_json(later))
            encoder = BulkCommandEncoder("token")
            encoded = _outcome(lambda: encoder.encode(("crm/events", {"registered": "jöhn"}, "view", later, 1.0, "id-1")))
            if isinstance(careful, tuple) and isinstance(careful[0], type):
                assert written == careful and encoded == careful
            else:
                assert json.loads(written[0]) == careful[0] == json.loads(encoded)["data"]["properties"]
    finally:
        serialization._SHAPES = saved


@pytest.mark.parametrize("writer", ["json", "orjson"])
def test_one_encoder_shared_by_threads_never_mixes_customers(writer: str) -> None:
    """A buffered client's callers share its encoder: what it keeps of the last customer and event
    type is replaced whole, so a command never carries another thread's customer or type."""
    if writer == "orjson" and ORJSON is None:
        pytest.skip("orjson is not installed")
    import threading

    encoder = BulkCommandEncoder("token")
    wrong: list = []
    start = threading.Barrier(4)

    def calls(n: int) -> None:
        ids, kind = {"registered": f"customer-{n}"}, f"type-{n}"
        start.wait()
        for i in range(2000):
            path = "crm/events" if i % 3 else "crm/customers"
            command = (path, dict(ids) if i % 2 else ids, kind if path == "crm/events" else None, {"n": n}, 1.0, f"id-{n}")
            data = json.loads(encoder.encode(command))["data"]
            if data.get("customer_ids", data.get("ids")) != ids or data.get("type", kind) != kind:
                wrong.append(data)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # a switch between almost any two bytecodes
    try:
        with writing_with(ORJSON if writer == "orjson" else STDLIB):  # type: ignore[arg-type]
            threads = [threading.Thread(target=calls, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert wrong == []

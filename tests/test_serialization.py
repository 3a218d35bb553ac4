"""Properties written as JSON on the caller's thread, and the command's JSON: pure checks, no sockets."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Any, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seven_segments.protocol import MAX_COMMAND_BYTES
from seven_segments.serialization import (
    MAX_TIMESTAMP,
    BulkCommandEncoder,
    capture_properties,
    compact_json_encoder,
    decode_properties,
    encode_properties,
)

_write = compact_json_encoder()

#: Flat values as callers pass them, bad ones included: lone surrogates, nan, infinities.
flat_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=()), max_size=20),
)
flat_keys = st.text(st.characters(blacklist_categories=()), max_size=10)


def _outcome(call: Any, *args: Any) -> Any:
    try:
        return ("ok", call(*args))
    except (TypeError, ValueError) as error:
        return (type(error), str(error))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(flat_keys, flat_values, max_size=8))
def test_the_fast_path_accepts_and_refuses_exactly_what_capture_does(properties: Dict[str, Any]) -> None:
    def slow(value: Dict[str, Any]) -> bytes:
        captured, _ = capture_properties(value)
        return _write(captured).encode()

    assert _outcome(encode_properties, properties) == _outcome(slow, properties)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)), max_size=8))
def test_encoded_properties_decode_to_an_equal_fresh_dict(properties: Dict[str, Any]) -> None:
    decoded = decode_properties(encode_properties(properties))
    assert decoded == properties and decoded is not properties


@pytest.mark.parametrize("key", [1, 1.5, True, None])
def test_keys_that_are_not_strings_are_refused_not_written_as_text(key: Any) -> None:
    with pytest.raises(TypeError, match="keys must be strings"):
        encode_properties({key: "value"})


def test_other_mappings_and_nested_values_take_the_converting_path() -> None:
    assert encode_properties(OrderedDict(b=1, a=[1, {"x": (2, 3)}])) == b'{"b":1,"a":[1,{"x":[2,3]}]}'
    assert encode_properties(None) == encode_properties({}) == b"{}"


def test_the_exact_size_is_checked() -> None:
    room = MAX_COMMAND_BYTES - len('{"k":""}')
    assert len(encode_properties({"k": "x" * room})) == MAX_COMMAND_BYTES
    with pytest.raises(ValueError, match=f"{MAX_COMMAND_BYTES + 1} bytes as JSON"):
        encode_properties({"k": "x" * (room + 1)})


def test_non_finite_floats_are_named() -> None:
    with pytest.raises(ValueError, match=r"properties\['score'\]: float nan is not valid JSON"):
        encode_properties({"ok": 1, "score": math.nan})


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=MAX_TIMESTAMP, exclude_max=True))
def test_the_timestamp_is_written_to_the_microsecond(timestamp: float) -> None:
    encoder = BulkCommandEncoder("token")
    command = ("crm/events", {"registered": "john"}, "view", b'{"n":1}', timestamp, "id-1")
    data = json.loads(encoder.encode(command))["data"]
    written = data["timestamp"]
    assert isinstance(written, float) and abs(written - timestamp) <= 5e-7 + timestamp * 4e-16
    assert data["properties"] == {"n": 1} and data["command_id"] == "id-1" and data["company_id"] == "token"


def test_commands_of_both_kinds_are_whole_bulk_commands() -> None:
    encoder = BulkCommandEncoder('to"ken')
    ids = {"registered": "jöhn"}
    event = json.loads(encoder.encode(("crm/events", ids, "vïew", b'{"a":"\xc3\xa9"}', 1700000000.25, "e-1")))
    update = json.loads(encoder.encode(("crm/customers", ids, None, b"{}", 1700000000.0, "u-1")))
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
    reported = BulkCommandEncoder.as_dict(("crm/events", ids, "vïew", b'{"a":1}', 5.0, "e-2"))
    assert reported == {"name": "crm/events", "data": {"customer_ids": ids, "type": "vïew", "properties": {"a": 1}, "timestamp": 5.0, "command_id": "e-2"}}

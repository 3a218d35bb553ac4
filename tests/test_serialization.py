"""A queued command as the JSON of a bulk command: pure checks, no sockets."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from seven_segments.serialization import MAX_TIMESTAMP, BulkCommandEncoder

@settings(max_examples=300, deadline=None)
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

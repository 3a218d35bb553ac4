"""The spool's file format (seven_segments/spool/format.py): records, parsing, ``is_command``.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import random

import pytest

from seven_segments.spool import (
    HEADER_BYTES,
    is_command,
    parse_records,
)

from .helpers import NOT_COMMANDS, payload, number_of, _record_bytes, command

pytestmark = pytest.mark.timeout(60)


def test_parse_records_never_yields_garbage() -> None:
    """Whatever the damage, parse_records returns only records whose checksum holds."""
    folder_data = bytearray(b"7SSPOOL\x01" + bytes(8))
    import struct
    import zlib

    for number in range(50):
        body = payload(number)
        folder_data += struct.pack("<HII", 0xA7FF, len(body), zlib.crc32(body)) + body
    generator = random.Random(3)
    for _ in range(200):
        damaged = bytearray(folder_data)
        for _ in range(generator.randint(1, 5)):
            damaged[generator.randrange(HEADER_BYTES, len(damaged))] = generator.randrange(256)
        cut = generator.randrange(HEADER_BYTES, len(damaged) + 1)
        data = bytes(damaged[:cut])
        records, lost = parse_records(data)
        for offset, start, end in records:
            number_of(data[start:end])
        if data != bytes(folder_data):
            assert lost >= 1 or len(records) <= 50


def test_parse_records_stops_at_the_unwritten_rest() -> None:
    """Zeros after the last record are a preallocated segment's unwritten rest: no record lost; a
    record cut short before them is one lost."""
    head = b"7SSPOOL\x01" + bytes(8)
    written = head + b"".join(_record_bytes(payload(number)) for number in range(3))
    records, lost = parse_records(written + bytes(5000))
    assert ([number_of(written[start:end]) for _, start, end in records], lost) == ([0, 1, 2], 0)
    torn = _record_bytes(payload(3))[:30]
    records, lost = parse_records(written + torn + bytes(5000))
    assert (len(records), lost) == (3, 1)
    records, lost = parse_records(head + bytes(100))  # a segment made, nothing written
    assert (records, lost) == ([], 0)



def test_is_command() -> None:
    assert is_command(command(1)) and is_command(b'{"name": "crm/customers", "data": {"ids": {}}}')
    assert [payload for payload in NOT_COMMANDS if is_command(payload)] == []

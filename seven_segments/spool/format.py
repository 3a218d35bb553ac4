"""The spool's file format: a segment's header, its records, and the ack file of confirmed offsets.

A segment starts with a header (``7SSPOOL`` magic, a format version byte, the moment it was made;
since version 2, the target the spool was made for: a 2-byte length and that many bytes of UTF-8)
followed by records::

    magic (2 bytes) | payload length (uint32 LE) | crc32 of the payload (uint32 LE) | payload

Zeros after the last record are the unwritten rest of a preallocated segment; readers stop there.
An ack file (``<name>.ack``) holds the offsets of the confirmed records, 8 bytes each. Pure
functions of bytes: no file is opened here.
"""

from __future__ import annotations

import array
import json
import struct
import sys
import zlib
from typing import List, NamedTuple, Set, Tuple

from ..protocol import PATH_CUSTOMERS, PATH_EVENTS
from ..serialization import escapes_lone_surrogate

__all__ = [
    "ACK_SUFFIX",
    "DEFAULT_MAX_BYTES",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_SEGMENT_FILE_BYTES",
    "RECORD_HEADER_BYTES",
    "RECOVER_CHUNK",
    "Record",
    "SEGMENT_BYTES",
    "SEGMENT_SUFFIX",
    "SpoolError",
    "TEMP_SUFFIX",
    "is_command",
    "parse_records",
]

#: The disk a spool may use, per process (its own segments and those it took over).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: A segment is sealed, and a new one started, when the next record would take it past this size.
SEGMENT_BYTES = 4 * 1024 * 1024
#: ``recover`` yields at most this many records at a time (one bulk request).
RECOVER_CHUNK = 1000
#: The format written; files of a higher version are refused. Version 2 added the target to the header.
FORMAT_VERSION = 2
#: A record longer than this is taken for damage (a command is at most 100 KiB).
MAX_RECORD_BYTES = 16 * 1024 * 1024

SEGMENT_SUFFIX = ".seg"
ACK_SUFFIX = ".ack"
TEMP_SUFFIX = ".tmp"

FILE_MAGIC = b"7SSPOOL"
#: magic (7 bytes), version (1 byte), created (ns since the epoch, uint64 LE).
FILE_HEADER = struct.Struct("<7sBQ")
HEADER_BYTES = FILE_HEADER.size
#: Since version 2, the header goes on with the target: its length in bytes, then its UTF-8.
TARGET_LENGTH = struct.Struct("<H")
#: Bytes 0xFF 0xA7 start every record (0xFF never occurs in UTF-8 text, so JSON payloads never
#: contain it: after damage, the next record is found by looking for it).
RECORD_MAGIC = 0xA7FF
_RECORD_MAGIC_BYTES = struct.pack("<H", RECORD_MAGIC)
RECORD_HEADER = struct.Struct("<HII")
RECORD_HEADER_BYTES = RECORD_HEADER.size
ACK = struct.Struct("<Q")

#: No spool writes a larger segment file: a full one, or one made for a single record of the
#: largest size, with the longest header.
MAX_SEGMENT_FILE_BYTES = (
    SEGMENT_BYTES + HEADER_BYTES + TARGET_LENGTH.size + 0xFFFF + RECORD_HEADER_BYTES + MAX_RECORD_BYTES
)
#: The longest header: read this much to know a file's target.
MAX_HEADER_BYTES = HEADER_BYTES + TARGET_LENGTH.size + 0xFFFF

#: One appended (or recovered) record, ``(segment name, offset)``: what ``confirm`` is given back.
#: Opaque to callers. A plain tuple, which costs a fifth of an object with slots to make on every
#: ``track``; of a string and an int, so that the garbage collector stops tracking it (a queue of a
#: million records that pointed at their segment object made each full collection take 50+ ms, a
#: pause for whichever thread of the application triggered it).
Record = Tuple[str, int]


class SpoolError(ValueError):
    """The spool's folder cannot be used (a file, a link, another user's or open to others' writing,
    not writable, written by a newer version)."""


def valid_at(data: bytes, view: memoryview, position: int) -> int:
    """The end of the record at ``position`` when one is there whole and sound, else -1."""
    if len(data) - position < RECORD_HEADER_BYTES:
        return -1
    magic, length, crc = RECORD_HEADER.unpack_from(data, position)
    length = int(length)
    start = position + RECORD_HEADER_BYTES
    end: int = start + length
    if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return -1
    if zlib.crc32(view[start:end]) != crc:
        return -1
    return end


def parse_records(data: bytes, start: int = HEADER_BYTES) -> Tuple[List[Tuple[int, int, int]], int]:
    """The sound records of a segment's bytes (``(offset, payload start, payload end)``), and how
    many were lost to damage or a cut (a count of record starts in each damaged stretch, at least 1).

    Zero bytes from some point to the end are the unwritten rest of a preallocated segment: they
    end the records and lose none."""
    view = memoryview(data)
    records: List[Tuple[int, int, int]] = []
    lost = 0
    position = start
    size = len(data)
    while position < size:
        end = valid_at(data, view, position)
        if end >= 0:
            records.append((position, position + RECORD_HEADER_BYTES, end))
            position = end
            continue
        if data.count(0, position) == size - position:
            break  # the unwritten, preallocated rest
        following = data.find(_RECORD_MAGIC_BYTES, position + 1)
        while following != -1 and valid_at(data, view, following) < 0:
            following = data.find(_RECORD_MAGIC_BYTES, following + 1)
        if following == -1:
            following = size
        lost += max(1, data.count(_RECORD_MAGIC_BYTES, position, following))
        position = following
    return records, lost


class Header(NamedTuple):
    """What a segment's header says."""

    version: int
    created: int
    #: The target it was written for ("" when it does not say: version 1, or a spool made without one).
    target: str
    #: Where its first record starts.
    start: int


def header_bytes(created_ns: int, target_block: bytes) -> bytes:
    """A new segment's header, of this format version (``target_block``: see ``target_block``)."""
    return FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, created_ns) + target_block


def read_header(data: bytes, path: str) -> Header:
    """The header of a segment's first bytes; raises ``SpoolError`` for a non-segment. A header of a
    newer version is read as far as its fixed part (``start`` 0)."""
    if len(data) < HEADER_BYTES:
        raise SpoolError(f"spool file {path} is shorter than a segment header ({len(data)} bytes)")
    magic, version, created = FILE_HEADER.unpack_from(data, 0)
    if magic != FILE_MAGIC:
        raise SpoolError(f"spool file {path} is not a seven_segments spool segment")
    if version < 2:
        return Header(version, created, "", HEADER_BYTES)
    if version > FORMAT_VERSION:
        return Header(version, created, "", 0)
    start = HEADER_BYTES + TARGET_LENGTH.size
    end = start + (TARGET_LENGTH.unpack_from(data, HEADER_BYTES)[0] if len(data) >= start else 0)
    if len(data) < end or len(data) < start:
        raise SpoolError(f"spool file {path} is shorter than its header ({len(data)} bytes)")
    try:
        target = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolError(f"spool file {path} has a damaged header (its target is not UTF-8)") from None
    return Header(version, created, target, end)


def is_newer(head: bytes) -> bool:
    """Whether a file's first bytes are the header of a format newer than this one writes."""
    return len(head) >= HEADER_BYTES and head[:7] == FILE_MAGIC and head[7] > FORMAT_VERSION


def target_block(target: str) -> bytes:
    """The end of a version 2 header: ``target``'s length and UTF-8 bytes."""
    encoded = target.encode("utf-8")
    if len(encoded) > 0xFFFF:
        raise ValueError(f"a spool's target must be at most 65535 bytes of UTF-8, not {len(encoded)}")
    return TARGET_LENGTH.pack(len(encoded)) + encoded


def newer(path: str, version: int) -> SpoolError:
    """The error for a file written in a newer format version."""
    return SpoolError(
        f"spool file {path} was written in format version {version}, newer than this seven_segments "
        f"understands ({FORMAT_VERSION}): upgrade seven_segments, or use another spool folder"
    )


def _refuse_constant(name: str) -> object:
    raise ValueError(name)


_COMMAND_NAMES = frozenset({PATH_EVENTS, PATH_CUSTOMERS})


def is_command(payload: bytes) -> bool:
    """Whether ``payload`` is one ``bulk`` command: a JSON object ``{"name": "crm/events" or
    "crm/customers", "data": {...}}`` in UTF-8 (no NaN or Infinity, which JSON lacks, nor an escaped
    lone surrogate, which is no text). What ``track``
    spools always is; checked when a record is replayed, never when it is written. Decoding it is
    the cheapest check that is sound: a payload that passes cannot make the server refuse the
    ``bulk`` request that holds it as a whole (400), only, at worst, that command."""
    try:
        command = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return (
        type(command) is dict
        and command.get("name") in _COMMAND_NAMES
        and type(command.get("data")) is dict
        and not escapes_lone_surrogate(payload, command)  # a server could not read it
    )


def ack_bytes(offsets: List[int]) -> bytes:
    """``offsets`` as ack entries (``ACK``: uint64, little-endian), in one step."""
    entries = array.array("Q", offsets)
    if sys.byteorder == "big":
        entries.byteswap()
    return entries.tobytes()


def parse_acks(data: bytes) -> Set[int]:
    """The confirmed offsets in an ack file's bytes (a cut last entry is ignored)."""
    whole = len(data) - len(data) % ACK.size
    return {offset for (offset,) in ACK.iter_unpack(data[:whole])}

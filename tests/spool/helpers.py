"""Helpers of the spool's tests: payloads that say which they are, children, folders."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
from typing import Dict, List, Tuple


from seven_segments.spool import (
    Record,
    Spool,
)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGGER = "seven_segments.spool"


def payload(number: int, pad: int = 40) -> bytes:
    """A payload that says which it is, so that garbage or a mix-up cannot pass for it."""
    return json.dumps({"id": number, "pad": "p" * (pad + number % 17)}).encode()


def number_of(data: bytes) -> int:
    number = json.loads(data)["id"]
    assert data == payload(number), data  # whole, and not some other record's bytes
    return int(number)


def recover_all(spool: Spool) -> List[Tuple[Record, bytes]]:
    found: List[Tuple[Record, bytes]] = []
    for chunk in spool.recover():
        assert 0 < len(chunk) <= 1000
        found.extend(chunk)
    return found


def segments(folder: str) -> List[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".seg"))


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    return env


#: What every child script starts with (they import the spool package themselves).
CHILD_PRELUDE = """
import importlib.util, sys
"""


def start_child(script: str, *args: str) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(script), *args],
        env=child_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def read_line(process: "subprocess.Popen[bytes]", timeout: float = 10.0) -> bytes:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the child said nothing in time"
    return process.stdout.readline()


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def _record_bytes(body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack("<HII", 0xA7FF, len(body), zlib.crc32(body)) + body


def command(number: int) -> bytes:
    """A bulk command as the client spools it."""
    return b'{"name":"crm/events","data":{"company_id":"t","customer_ids":{"registered":"c"},"type":"view",' \
        b'"properties":{"n":%d},"timestamp":1700000000e0,"command_id":"id-%d"}}' % (number, number)


def recover_all_targets(spool: Spool) -> List[Tuple[Record, bytes]]:
    return [item for chunk in spool.recover(every_target=True) for item in chunk]


NOT_COMMANDS = [
    b"",  # what 10 bytes of a torn record header make: an empty payload, whose CRC-32 is 0
    b"null",
    b'{"x":1}',
    b'["crm/events"]',
    b'{"name":"crm/other","data":{}}',
    b'{"name":"crm/events","data":[]}',
    b'{"name":"crm/events","data":{',  # cut
    b'{"name":"crm/events","data":{"n":NaN}}',  # no JSON
    b'{"name":"crm/events","data":{"n":"\xff"}}',  # not UTF-8
    '{"name":"crm/events","data":{}}'.encode("utf-16"),  # JSON, but not in UTF-8
    b"[" * 100_000,  # too deep to decode
    b'{"name":"crm/events","data":{}} {}',  # two values
]

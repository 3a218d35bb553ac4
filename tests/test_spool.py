"""The durable spool (seven_segments/spool.py) on real files, with real processes and real signals.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest

from seven_segments import spool as spool_module
from seven_segments.spool import (
    FORMAT_VERSION,
    HEADER_BYTES,
    RECORD_HEADER_BYTES,
    Record,
    Spool,
    SpoolError,
    inspect,
    is_command,
    parse_records,
)

from .conftest import exit_code

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


#: Children load seven_segments/spool.py alone (it imports nothing of the package): importing the
#: package would load requests, most of a second per child on this machine.
CHILD_PRELUDE = f"""
import importlib.util, sys
_spec = importlib.util.spec_from_file_location("seven_segments.spool", {os.path.join(ROOT, "seven_segments", "spool.py")!r})
_module = importlib.util.module_from_spec(_spec)
sys.modules["seven_segments.spool"] = _module
_spec.loader.exec_module(_module)
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


@pytest.fixture
def folder(tmp_path: "os.PathLike[str]") -> str:
    return os.path.join(os.fspath(tmp_path), "spool")


# -- in one process ---------------------------------------------------------------------------------


def test_round_trip_confirm_in_random_order(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder, segment_bytes=4096)
    assert stat_mode(folder) == 0o700
    records = [writer.append(payload(number)) for number in range(500)]
    assert all(record is not None for record in records)
    confirmed = random.Random(7).sample(range(500), 300)
    chunks = [confirmed[start : start + 37] for start in range(0, 300, 37)]
    for chunk in chunks:  # out of order, as requests complete
        writer.confirm([records[number] for number in chunk])  # type: ignore[misc]
    writer.confirm([records[confirmed[0]]])  # type: ignore[list-item]  # twice: no harm
    stats = writer.stats()
    assert (stats["appended"], stats["confirmed"], stats["kept"]) == (500, 300, 200)
    assert writer.close() == 200
    assert writer.close() == 200  # idempotent
    assert writer.append(b"late") is None
    for name in os.listdir(folder):
        assert stat_mode(os.path.join(folder, name)) == 0o600

    reader = Spool(folder)
    found = recover_all(reader)
    numbers = [number_of(data) for _, data in found]
    assert numbers == sorted(set(range(500)) - set(confirmed))  # oldest first, each once
    assert reader.stats()["replayed"] == 200
    assert recover_all(reader) == []  # already taken
    reader.confirm([record for record, _ in found])
    assert reader.close() == 0
    assert segments(folder) == [] and os.listdir(folder) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def stat_mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def test_no_growth_while_confirmed(folder: str) -> None:
    writer = Spool(folder, segment_bytes=64 * 1024)
    pending: List[Record] = []
    biggest = 0
    for number in range(50_000):
        record = writer.append(payload(number, pad=100))
        assert record is not None
        pending.append(record)
        if len(pending) == 500:
            random.shuffle(pending)
            writer.confirm(pending)
            pending = []
            if number % 5000 == 4999:
                biggest = max(biggest, folder_bytes(folder))
    assert biggest <= 3 * 64 * 1024 + 4096, biggest  # the live segment, at most one sealed, their acks
    stats = writer.stats()
    assert stats["appended"] == stats["confirmed"] == 50_000 and stats["kept"] == 0
    assert stats["files"] == 1 and stats["kept_bytes"] <= 64 * 1024
    assert writer.close() == 0
    assert os.listdir(folder) == []


def test_max_bytes_drops_and_counts(folder: str) -> None:
    writer = Spool(folder, max_bytes=20_000)
    kept = [writer.append(payload(number, pad=200)) for number in range(200)]
    accepted = [record for record in kept if record is not None]
    stats = writer.stats()
    assert 0 < len(accepted) < 200 and stats["dropped"] == 200 - len(accepted)
    assert stats["kept_bytes"] <= 20_000
    writer.confirm(accepted)  # space given back: accepted again
    assert writer.append(payload(1)) is not None
    writer.close()


def test_appends_from_many_threads(folder: str) -> None:
    writer = Spool(folder, segment_bytes=16 * 1024)
    results: List[List[Record]] = [[] for _ in range(4)]

    def burst(index: int) -> None:
        for number in range(index * 10_000, index * 10_000 + 2000):
            record = writer.append(payload(number))
            assert record is not None
            results[index].append(record)

    threads = [threading.Thread(target=burst, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.close() == 8000
    reader = Spool(folder)
    numbers = sorted(number_of(data) for _, data in recover_all(reader))
    assert numbers == sorted(n for i in range(4) for n in range(i * 10_000, i * 10_000 + 2000))
    reader.close()


def test_damaged_file_skips_and_warns(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder)
    records = [writer.append(payload(number)) for number in range(100)]
    writer.close()
    (name,) = segments(folder)
    path = os.path.join(folder, name)
    with open(path, "r+b") as file:
        data = bytearray(file.read())
        # record 30: a byte of its payload; record 60: its length field.
        data[records[30][1] + RECORD_HEADER_BYTES + 5] ^= 0xFF  # type: ignore[index]
        data[records[60][1] + 4] ^= 0x40  # type: ignore[index]
        file.seek(0)
        file.write(data)
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    numbers = [number_of(data) for _, data in recover_all(reader)]
    assert numbers == [n for n in range(100) if n not in (30, 60)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and " 2 records" in warnings[0], warnings
    assert reader.stats()["damaged"] == 2
    reader.close()


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


def _record_bytes(body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack("<HII", 0xA7FF, len(body), zlib.crc32(body)) + body


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


def test_segments_are_preallocated_and_given_back_when_sealed_or_closed(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192)
    assert segments(folder) == []  # the folder was proved writable; a nearly full disk does not stop the start
    assert writer.append(payload(0)) is not None
    (first,) = segments(folder)
    assert os.path.getsize(os.path.join(folder, first)) == 8192  # reserved when made
    records = [writer.append(payload(number)) for number in range(1, 300)]  # several segments
    assert all(record is not None for record in records)
    names = segments(folder)
    assert len(names) > 2
    sizes = [os.path.getsize(os.path.join(folder, name)) for name in names]
    assert all(size < 8192 for size in sizes[:-1]) and sizes[-1] == 8192  # sealed: cut to what they hold
    assert writer.stats()["kept_bytes"] == sum(sizes)
    assert writer.close() == 300
    assert os.path.getsize(os.path.join(folder, names[-1])) < 8192  # closed: the rest given back too
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(300))
    reader.close()


def test_the_next_segment_is_made_ahead_and_taken_over_by_the_append_that_needs_it(folder: str, monkeypatch: Any) -> None:
    writer = Spool(folder, segment_bytes=8192)
    most = (8192 - HEADER_BYTES) // len(_record_bytes(payload(0)))  # records of one segment, at least
    assert writer.append(payload(0)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 1  # less than half full: nothing is made ahead
    number = 1
    while writer.stats()["files"] == 1:  # the pump calls prepare_next after each take
        assert writer.append(payload(number)) is not None
        number += 1
        writer.prepare_next()
    assert most // 3 < number < most  # made once half full, before it is needed
    assert writer.stats()["kept_bytes"] == 2 * 8192  # the spare is reserved, and counts against the bound
    made: List[Any] = []
    make = Spool._make_segment
    monkeypatch.setattr(Spool, "_make_segment", lambda self, *args, **kw: made.append(args) or make(self, *args, **kw))
    (first, _) = segments(folder)  # oldest first
    while os.path.getsize(os.path.join(folder, first)) == 8192:  # until the first is full and sealed
        assert writer.append(payload(number)) is not None and number < 2 * most
        number += 1
    for number in range(number, number + 10):  # and on, in the spare
        assert writer.append(payload(number)) is not None
    assert made == []  # the append that found the first segment full only switched to the spare
    assert writer.stats()["files"] == 2
    assert writer.close() == number + 1
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(number + 1))
    reader.close()


def test_no_segment_is_made_ahead_when_the_bound_leaves_no_room_for_it(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192, max_bytes=4 * 8192)
    number = 0
    while writer.stats()["files"] < 3:  # two sealed, the third being written: no room for a fourth and a last
        assert writer.append(payload(number)) is not None
        number += 1
    for number in range(number, number + 60):  # the third more than half full
        assert writer.append(payload(number)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 3
    assert writer.close() == number + 1


def test_a_closed_spool_leaves_no_spare_behind(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192)
    for number in range(80):  # more than half of the first segment
        assert writer.append(payload(number)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 2
    assert writer.close() == 80
    assert len(segments(folder)) == 1  # the one with records; the empty spare is deleted


def test_records_are_not_tracked_by_the_garbage_collector(folder: str) -> None:
    # A queue of records that pointed at objects made every full collection walk them all: a pause
    # of tens of milliseconds, during an outage, for whichever application thread triggered it.
    writer = Spool(folder)
    record = writer.append(payload(0))
    gc.collect()
    assert record is not None and not gc.is_tracked(record)
    writer.close()
    reader = Spool(folder)
    ((recovered, _),) = recover_all(reader)
    gc.collect()
    assert not gc.is_tracked(recovered)
    reader.close()


def test_a_dead_writers_reserved_rest_is_given_back_when_taken_over(folder: str) -> None:
    writer = Spool(folder, segment_bytes=64 * 1024)
    for number in range(10):
        assert writer.append(payload(number)) is not None
    (name,) = segments(folder)
    path = os.path.join(folder, name)
    assert os.path.getsize(path) == 64 * 1024
    writer._closed = True  # stand in for a kill: the map and the lock go, the file stays as it is
    for segment in list(writer._segments.values()):
        assert segment.view is not None
        segment.view.close()
        os.close(segment.fd)
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(10))
    assert os.path.getsize(path) < 4096  # cut to its records: a crash loop does not fill the bound
    assert reader.stats()["kept_bytes"] == os.path.getsize(path)
    reader.close()


def test_an_exception_inside_append_leaves_the_lock_free(folder: str) -> None:
    """A KeyboardInterrupt (a signal handler's exception) raised while append holds the lock: the
    lock is released, so other threads' appends and close() do not hang."""
    writer = Spool(folder)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    writer._next_segment = interrupted  # type: ignore[assignment,method-assign]
    with pytest.raises(KeyboardInterrupt):
        writer.append(payload(0))
    del writer._next_segment  # type: ignore[attr-defined]
    results: List[Any] = []
    other = threading.Thread(target=lambda: results.append(writer.append(payload(1))))
    other.start()
    other.join(5)
    assert not other.is_alive() and results[0] is not None
    assert writer.close() == 1


def test_append_from_within_append_is_dropped_and_harms_nothing(folder: str) -> None:
    """A signal handler or logging handler that tracks while this thread is inside append (making a
    segment, say) gets its command dropped and counted; the outer append and the files are intact."""
    writer = Spool(folder, segment_bytes=4096)
    make_segment = writer._next_segment
    nested: List[Any] = []

    def with_a_handler_tracking(*args: Any) -> Any:
        nested.append(writer.append(payload(999)))
        return make_segment(*args)

    writer._next_segment = with_a_handler_tracking  # type: ignore[method-assign]
    first = writer.append(payload(0))
    del writer._next_segment  # type: ignore[attr-defined]
    assert nested == [None] and first is not None
    records = [writer.append(payload(number)) for number in range(1, 100)]
    assert all(record is not None for record in records)
    stats = writer.stats()
    assert (stats["appended"], stats["dropped"]) == (100, 1)
    assert stats["kept_bytes"] == sum(os.path.getsize(os.path.join(folder, name)) for name in segments(folder))
    assert writer.close() == 100
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(100))
    reader.close()


def test_bad_folders(tmp_path: "os.PathLike[str]") -> None:
    base = os.fspath(tmp_path)
    a_file = os.path.join(base, "a-file")
    with open(a_file, "w") as file:
        file.write("x")
    with pytest.raises(SpoolError, match=f"{a_file} is a file"):
        Spool(a_file)
    under_a_file = os.path.join(a_file, "spool")
    with pytest.raises(SpoolError, match=under_a_file):
        Spool(under_a_file)
    with pytest.raises(ValueError, match="spool_max_bytes"):
        Spool(os.path.join(base, "s"), max_bytes=0)
    with pytest.raises(TypeError, match="folder path"):
        Spool(5)  # type: ignore[arg-type]
    if os.geteuid() != 0:
        locked = os.path.join(base, "read-only")
        os.mkdir(locked, 0o500)
        try:
            with pytest.raises(SpoolError, match=f"{locked} cannot be written"):
                Spool(locked)
            with pytest.raises(SpoolError, match=os.path.join(locked, "inner")):
                Spool(os.path.join(locked, "inner"))
        finally:
            os.chmod(locked, 0o700)
    else:  # root writes anywhere, but not where no folder can be made
        with pytest.raises(SpoolError, match="/proc/1/no-spool-here"):
            Spool("/proc/1/no-spool-here")


def test_newer_format_refused(folder: str) -> None:
    Spool(folder).close()
    newer = os.path.join(folder, "other-1-abcd-1.seg")
    with open(newer, "wb") as file:
        file.write(b"7SSPOOL" + bytes([FORMAT_VERSION + 1]) + bytes(8) + b"future records")
    with pytest.raises(SpoolError, match=rf"{newer} was written in format version {FORMAT_VERSION + 1}"):
        Spool(folder)
    assert [entry.version for entry in inspect(folder).files] == [FORMAT_VERSION + 1]


def test_group_readable_folder_made_private(folder: str) -> None:
    os.makedirs(folder)
    os.chmod(folder, 0o755)
    Spool(folder).close()
    assert stat_mode(folder) == 0o700



NOBODY = 65534


def test_a_folder_of_another_user_or_open_to_others_is_refused(tmp_path: "os.PathLike[str]") -> None:
    """Its files hold the company token and are replayed: a folder another user owns, or can write
    to (group or others, sticky or not), or a link to a folder, is refused, naming the path and why."""
    base = os.fspath(tmp_path)
    refused = {}
    for mode in (0o1777, 0o777, 0o770, 0o720, 0o702):
        path = os.path.join(base, f"mode-{mode:o}")
        os.mkdir(path)
        os.chmod(path, mode)
        refused[path] = rf"{re.escape(path)} can be written by (its group|others) \(mode {mode:o}\)"
    real = os.path.join(base, "real")
    Spool(real).close()
    link = os.path.join(base, "link")
    os.symlink(real, link)
    refused[link] = rf"{re.escape(link)} is a symbolic link"
    if os.geteuid() == 0:
        owned = os.path.join(base, "nobodys")
        os.mkdir(owned, 0o700)
        os.chown(owned, NOBODY, NOBODY)
        refused[owned] = rf"{re.escape(owned)} belongs to another user \(uid {NOBODY};"
    for path, reason in refused.items():
        before = os.lstat(path)
        with pytest.raises(SpoolError, match=reason):
            Spool(path)
        with pytest.raises(SpoolError, match=reason):
            inspect(path)
        after = os.lstat(path)
        assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)  # left as it was
        assert os.path.islink(path) or os.listdir(path) == []  # nothing written there


def test_a_planted_ack_link_is_never_followed(folder: str, tmp_path: "os.PathLike[str]", caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder)
    for number in range(3):
        writer.append(payload(number))
    assert writer.close() == 3
    (name,) = segments(folder)
    victim = os.path.join(os.fspath(tmp_path), "victim")
    original = struct.pack("<Q", HEADER_BYTES)  # read as an ack file, it would confirm the first record
    with open(victim, "wb") as file:
        file.write(original)
    ack = os.path.join(folder, name[: -len(".seg")] + ".ack")
    os.symlink(victim, ack)
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    found = recover_all(reader)
    assert [number_of(data) for _, data in found] == [0, 1, 2]  # the link was not read as acks
    reader.confirm([found[0][0]])
    reader.confirm([found[1][0]])
    with open(victim, "rb") as file:
        assert file.read() == original  # nothing appended through the link
    assert os.path.islink(ack)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(ack in text and "not a regular file" in text for text in warnings), warnings
    assert reader.close() == 1


def test_a_segment_that_is_not_a_regular_file_is_skipped_and_the_others_replayed(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Spool(folder, segment_bytes=1024)
    for number in range(20):
        writer.append(payload(number))
    assert writer.close() == 20
    zero = os.path.join(folder, "0-zero.seg")  # sorted first; its header would say "made at 0": first
    os.symlink("/dev/zero", zero)
    fifo = os.path.join(folder, "1-fifo.seg")
    os.mkfifo(fifo, 0o600)  # opening it to read would wait for a writer
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(20))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for path in (zero, fifo):
        assert any(path in text and "not a regular file" in text for text in warnings), warnings
    assert inspect(folder).commands == 20  # inspect skips them too
    reader.close()

# -- processes --------------------------------------------------------------------------------------

BURST = """
import os, sys, threading, json
from seven_segments.spool import Spool
spool = Spool(sys.argv[1], segment_bytes=32 * 1024)

def payload(number, pad=40):
    return json.dumps({"id": number, "pad": "p" * (pad + number % 17)}).encode()

def burst(first):
    number = first
    while True:
        if spool.append(payload(number)) is None:
            os._exit(3)
        os.write(1, b"%d\\n" % number)  # after append returned: one write, atomic on a pipe
        number += 1

for first in (0, 10_000_000):
    threading.Thread(target=burst, args=(first,), daemon=True).start()
threading.Event().wait(30)
"""


@pytest.mark.slow
def test_sigkill_mid_burst_loses_nothing_appended(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    child = start_child(BURST, folder)
    assert child.stdout is not None
    reported: Set[int] = set()
    buffer = b""
    deadline = time.monotonic() + 20
    while len(reported) < 3000 and time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 5)
        assert ready, child.stderr.read() if child.stderr else ""
        buffer += os.read(child.stdout.fileno(), 65536)
        *lines, buffer = buffer.split(b"\n")
        reported.update(int(line) for line in lines)
    child.send_signal(signal.SIGKILL)
    rest, _ = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    lines = (buffer + rest).split(b"\n")
    reported.update(int(line) for line in lines[:-1])  # the last may be cut by the kill
    assert len(reported) >= 3000

    # A torn last record, as a kill in the middle of a copy leaves it: right after the last record,
    # followed by the zeros of the segment's preallocated rest.
    last = max(segments(folder), key=lambda name: os.path.getmtime(os.path.join(folder, name)))
    torn_path = os.path.join(folder, last)
    with open(torn_path, "r+b") as file:
        data = file.read()
        body = payload(99_999_999)
        import struct
        import zlib

        file.seek(len(data.rstrip(b"\0")))  # payloads are JSON: they never end with a zero byte
        file.write(struct.pack("<HII", 0xA7FF, len(body), zlib.crc32(body)) + body[: len(body) // 2])

    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    found = recover_all(reader)
    numbers = [number_of(data) for _, data in found]
    assert len(numbers) == len(set(numbers))  # exactly once
    assert reported <= set(numbers), sorted(reported - set(numbers))[:10]
    assert 99_999_999 not in numbers
    # Each thread's records in its own order (oldest first).
    for low, high in ((0, 10_000_000), (10_000_000, 20_000_000)):
        mine = [n for n in numbers if low <= n < high]
        assert mine == sorted(mine)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # The torn record we appended, and at most one per writing thread that the kill caught mid-write
    # (threads write their reserved places at once): one warning per file, naming it.
    assert any(torn_path in w for w in warnings) and all(folder in w for w in warnings), warnings
    lost = sum(int(re.search(r": (\d+) records? cut short", w).group(1)) for w in warnings)  # type: ignore[union-attr]
    assert 1 <= lost <= 3, warnings
    reader.confirm([record for record, _ in found])
    assert reader.close() == 0
    assert segments(folder) == []


LIVE_WRITER = """
import sys, json
from seven_segments.spool import Spool
spool = Spool(sys.argv[1], segment_bytes=2048)
for number in range(int(sys.argv[2]), int(sys.argv[2]) + 50):
    assert spool.append(json.dumps({"id": number, "pad": "p" * (40 + number % 17)}).encode()) is not None
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_live_writer_files_never_taken(folder: str) -> None:
    writer = start_child(LIVE_WRITER, folder, "1000")
    try:
        assert read_line(writer) == b"ready\n"
        assert len(segments(folder)) >= 2
        reader = Spool(folder)
        assert recover_all(reader) == []
        report = inspect(folder)
        assert report.commands == 50 and all(entry.alive for entry in report.files)
        writer.kill()
        writer.wait(10)
        report = inspect(folder)
        mine = {os.path.basename(s.path) for s in reader._segments.values()}
        assert all(not entry.alive for entry in report.files if entry.name not in mine)
        found = recover_all(reader)
        assert sorted(number_of(data) for _, data in found) == list(range(1000, 1050))
        assert recover_all(reader) == []
        reader.confirm([record for record, _ in found])
        assert reader.close() == 0
        assert segments(folder) == []
    finally:
        writer.kill()
        writer.wait(10)


RECOVER_AND_CONFIRM = """
import sys, json
from seven_segments.spool import Spool
spool = Spool(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
numbers = []
for chunk in spool.recover():
    numbers.extend(json.loads(data)["id"] for _, data in chunk)
    spool.confirm([record for record, _ in chunk])
print(json.dumps(numbers), flush=True)
spool.close()
"""


@pytest.mark.slow
def test_two_processes_recovering_at_once_share_nothing(folder: str) -> None:
    for part in range(20):
        writer = Spool(folder)
        for number in range(part * 100, part * 100 + 100):
            writer.append(payload(number))
        writer.close()
    readers = [start_child(RECOVER_AND_CONFIRM, folder) for _ in range(2)]
    try:
        for reader in readers:
            assert read_line(reader) == b"ready\n"
        for reader in readers:
            assert reader.stdin is not None
            reader.stdin.write(b"go\n")
            reader.stdin.flush()
        results = []
        for reader in readers:
            out, err = reader.communicate(timeout=20)
            assert reader.returncode == 0, err
            results.append(json.loads(out.splitlines()[-1]))
        first, second = set(results[0]), set(results[1])
        assert not first & second
        assert sorted(results[0] + results[1]) == list(range(2000))
        assert segments(folder) == []
    finally:
        for reader in readers:
            reader.kill()
            reader.wait(10)


FORK_WHILE_A_SEGMENT_IS_MADE = """
import os, sys, threading, time
from seven_segments import spool as spool_module
slow = threading.Event()
real_map = spool_module._map_preallocated
def slow_map(*args):  # whatever the signature: a stale one failed in the thread, and nothing was tested
    slow.set()
    time.sleep(0.3)  # a thread in the middle of making a segment: the descriptor and its flock exist
    return real_map(*args)
spool_module._map_preallocated = slow_map
spool = spool_module.Spool(sys.argv[1])
writer = threading.Thread(target=spool.append, args=(b'{"n": 1}',))
writer.start()
assert slow.wait(5), "the segment was never made"
pid = os.fork()
if pid == 0:
    folder = os.path.realpath(sys.argv[1])
    mine = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(folder):
            mine.append(target)
    print(len(mine), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
writer.join()
spool.close()
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc")
@pytest.mark.slow
def test_a_fork_while_a_segment_is_made_leaves_the_child_none_of_the_parents_files(folder: str) -> None:
    # The child kept the descriptor of the segment being made, and with it the parent's flock: once
    # the parent died, its file looked alive for as long as the child lived (found by review).
    result = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_A_SEGMENT_IS_MADE, folder], capture_output=True, text=True, timeout=30,
        env=child_env(), cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n", result.stdout
    assert "Traceback" not in result.stderr, result.stderr  # the writer thread failed: the fork proved nothing


def test_a_close_during_a_write_never_sends_the_record_into_a_file_that_reused_the_descriptor(
    folder: str, tmp_path: Any, monkeypatch: Any
) -> None:
    # With pwrite (spool_fsync=True), the record is written outside the lock: a close meanwhile closed
    # the descriptor, and the lowest free number goes to the next file opened (found by review).
    spool = Spool(folder, fsync=True)
    assert spool.append(payload(0)) is not None
    writing = threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
        writing.set()
        time.sleep(0.3)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", slow_pwrite)
    writer = threading.Thread(target=spool.append, args=(payload(1),))
    writer.start()
    assert writing.wait(5)
    spool.close()
    other = os.path.join(os.fspath(tmp_path), "unrelated")
    with open(other, "wb") as file:  # takes the lowest free descriptor number
        writer.join(5)
        file.flush()
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    assert os.path.getsize(other) == 0
    reader = Spool(folder)
    assert sorted(number_of(data) for _, data in recover_all(reader)) == [0, 1]
    reader.close()


def test_the_lock_a_fork_waits_for_is_per_process(monkeypatch: Any) -> None:
    # A fork that skips the at-fork hooks (uwsgi) copies the lock as it is: a child whose parent was
    # making a segment at that moment would wait for it forever.
    parents = spool_module._making()
    assert parents.acquire(timeout=5)
    try:
        monkeypatch.setattr(os, "getpid", lambda: -12345)  # the child, as its first use sees it
        childs = spool_module._making()
        assert childs is not parents and childs.acquire(blocking=False)
        childs.release()
    finally:
        monkeypatch.undo()
        parents.release()


def test_ctrl_c_during_a_slow_fsync_leaves_no_descriptor_behind(folder: str, monkeypatch: Any) -> None:
    spool = Spool(folder, fsync=True)
    assert spool.append(payload(0)) is not None
    real_fsync = os.fsync

    def interrupted(fd: int) -> None:
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise KeyboardInterrupt  # SIGINT on the main thread, while the disk syncs

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        spool.append(payload(1))
    assert spool.close() == 2  # the record was written: it stays for the next client
    assert [file.alive for file in inspect(folder).files] == [False]  # its descriptor (and lock) let go


def test_a_child_forgets_its_parents_fork_locks() -> None:
    # The child's copy of its parent's lock may be held; a later process may get the parent's id.
    held = threading.Lock()
    held.acquire()
    spool_module._MAKING_BY_PID[-4242] = held
    spool_module._forget_the_parents()
    assert -4242 not in spool_module._MAKING_BY_PID
    assert spool_module._making().acquire(timeout=1)
    spool_module._making().release()


def test_a_dead_writers_file_that_cannot_be_read_is_let_go_of_whatever_the_error(folder: str, monkeypatch: Any) -> None:
    writer = Spool(folder)
    assert writer.append(payload(0)) is not None
    writer._closed = True  # stand in for a kill: the map and the lock go, the file stays as it is
    for segment in list(writer._segments.values()):
        assert segment.view is not None
        segment.view.close()
        os.close(segment.fd)

    def out_of_memory(self: Any, segment: Any, *rest: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(Spool, "_read_taken", out_of_memory)
    reader = Spool(folder)
    with pytest.raises(MemoryError):
        recover_all(reader)
    assert [file.alive for file in inspect(folder).files] == [False]  # not locked by the reader
    monkeypatch.undo()
    assert [number_of(data) for _, data in recover_all(reader)] == [0]
    reader.close()


@pytest.mark.slow
def test_forked_child_gets_its_own_files(folder: str) -> None:
    parent = Spool(folder, segment_bytes=2048)
    for number in range(30):
        assert parent.append(payload(number)) is not None
    parents_files = set(segments(folder))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own files, then exit without closing (as a crash would)
        status = 1
        try:
            os.close(read_end)
            for number in range(100, 130):
                assert parent.append(payload(number)) is not None
            assert parent.stats()["appended"] == 30
            os.write(write_end, json.dumps(sorted(set(segments(folder)) - parents_files)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        childs_files = json.loads(pipe.read() or b"[]")
    _, wait_status = os.waitpid(pid, 0)
    assert exit_code(wait_status) == 0
    assert childs_files and not set(childs_files) & parents_files
    assert all(str(pid) in name for name in childs_files)
    # The child is gone; the parent's locks are not: another process takes the child's files only.
    reader = start_child(RECOVER_AND_CONFIRM, folder)
    assert read_line(reader) == b"ready\n"
    out, err = reader.communicate(b"go\n", timeout=20)
    assert reader.returncode == 0, err
    assert sorted(json.loads(out.splitlines()[-1])) == list(range(100, 130))
    assert set(parents_files) <= set(segments(folder))
    assert parent.append(payload(31)) is not None
    assert parent.close() == 31


FULL_DISK = """
import json, resource, sys
from seven_segments.spool import Spool
spool = Spool(sys.argv[1], **json.loads(sys.argv[2]))
def append(n):
    return spool.append(json.dumps({"id": n, "pad": "p" * (300 + n % 17)}).encode())
results = [append(0)]  # a first file, made before the limit
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))
results += [append(n) for n in range(1, 300)]
accepted = [n for n, record in enumerate(results) if record is not None]
print(json.dumps({"accepted": accepted, "stats": spool.stats()}), flush=True)
"""


@pytest.mark.parametrize(
    "options",
    [
        # Mapped: the first segment (64 KiB) was made before the limit; the next cannot be reserved.
        {"segment_bytes": 64 * 1024},
        # pwrite: writes fail once the file reaches the limit.
        {"fsync": True},
    ],
    ids=["mapped", "pwrite"],
)
@pytest.mark.slow
def test_full_disk_drops_without_dying(folder: str, caplog: pytest.LogCaptureFixture, options: Dict[str, object]) -> None:
    child = start_child(FULL_DISK, folder, json.dumps(options))
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err  # no death by SIGXFSZ, no exception
    answer = json.loads(out)
    accepted, stats = answer["accepted"], answer["stats"]
    assert 0 < len(accepted) < 300
    assert stats["appended"] == len(accepted) and stats["dropped"] == 300 - len(accepted)
    # a failed write seals its file and the next command starts a new one: accepted ones need not be a prefix
    assert b"cannot write to the spool" in err and err.count(b"WARNING") <= 1
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    numbers = [json.loads(data)["id"] for _, data in recover_all(reader)]
    assert numbers == accepted  # the file stayed readable: no torn record
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    reader.close()


def test_sigxfsz_ignored_only_when_default(folder: str) -> None:
    previous = signal.getsignal(signal.SIGXFSZ)
    try:
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        Spool(folder).close()
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN

        def handler(signum: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGXFSZ, handler)
        Spool(folder).close()
        assert signal.getsignal(signal.SIGXFSZ) is handler
    finally:
        signal.signal(signal.SIGXFSZ, previous)


def test_inspect(folder: str) -> None:
    writer = Spool(folder, segment_bytes=2048)
    records = [writer.append(payload(number)) for number in range(40)]
    writer.confirm(records[:10])  # type: ignore[arg-type]
    report = inspect(folder)
    assert report.commands == 30 and all(entry.alive for entry in report.files)
    assert report.bytes == sum(os.path.getsize(os.path.join(folder, name)) for name in segments(folder))
    writer.close()
    report = inspect(folder)
    assert report.commands == 30 and not any(entry.alive for entry in report.files)
    with pytest.raises(SpoolError, match="does not exist"):
        inspect(folder + "-missing")


def test_leftovers_cleaned_up(folder: str) -> None:
    """An ack file whose segment is gone, and an old unnamed segment of a dead maker, are removed;
    a fresh temporary file (its maker may be about to lock it) is not."""
    Spool(folder).close()
    orphan = os.path.join(folder, "gone-1-abcd-1.ack")
    old_temp = os.path.join(folder, ".gone-1-abcd-2.tmp")
    new_temp = os.path.join(folder, ".gone-1-abcd-3.tmp")
    for path in (orphan, old_temp, new_temp):
        with open(path, "wb") as file:
            file.write(b"7SSPOOL\x01" + bytes(8))
    os.utime(old_temp, (time.time() - 120, time.time() - 120))
    reader = Spool(folder)
    assert recover_all(reader) == []
    assert not os.path.exists(orphan) and not os.path.exists(old_temp) and os.path.exists(new_temp)
    reader.close()


def test_fsync_mode_round_trip(folder: str) -> None:
    writer = Spool(folder, fsync=True, segment_bytes=1024)
    records = [writer.append(payload(number)) for number in range(30)]
    assert all(record is not None for record in records)
    writer.confirm(records[:10])  # type: ignore[arg-type]
    assert writer.close() == 20
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(10, 30))
    reader.close()


@pytest.mark.parametrize("options", [{}, {"fsync": True}], ids=["mapped", "pwrite"])
def test_threads_appending_at_once_each_find_their_own_record(folder: str, options: Dict[str, Any]) -> None:
    """Records appended from many threads at once (copied into the map under the lock, or written with
    pwrite outside it): every record is where its record says."""
    import threading

    spool = Spool(folder, segment_bytes=64 * 1024, **options)
    records: List[Any] = []
    lock = threading.Lock()

    def append(thread: int) -> None:
        for number in range(2000):
            record = spool.append(json.dumps({"thread": thread, "n": number}).encode())
            assert record is not None
            with lock:
                records.append((thread, number, record))

    workers = [threading.Thread(target=append, args=(index,)) for index in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Confirm every record of thread 0 and 1; after a kill, exactly those of threads 2 and 3 come back.
    spool.confirm([record for thread, _, record in records if thread < 2])
    spool._closed = True  # stand in for a kill: the files stay as they are, with their locks let go
    for segment in list(spool._segments.values()):
        if segment.view is not None:
            segment.view.close()  # a kill unmaps it (and closes the map's own descriptor)
        os.close(segment.fd)
        if segment.ack_fd >= 0:
            os.close(segment.ack_fd)
    reader = Spool(folder)
    found = sorted((body["thread"], body["n"]) for body in (json.loads(data) for _, data in recover_all(reader)))
    assert found == sorted((thread, number) for thread, number, _ in records if thread >= 2)
    reader.close()


def command(number: int) -> bytes:
    """A bulk command as the client spools it."""
    return b'{"name":"crm/events","data":{"company_id":"t","customer_ids":{"registered":"c"},"type":"view",' \
        b'"properties":{"n":%d},"timestamp":1700000000e0,"command_id":"id-%d"}}' % (number, number)


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


def test_is_command() -> None:
    assert is_command(command(1)) and is_command(b'{"name": "crm/customers", "data": {"ids": {}}}')
    assert [payload for payload in NOT_COMMANDS if is_command(payload)] == []


def test_a_whole_record_that_is_no_command_is_skipped_counted_and_its_place_settled(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Replayed, it made its whole bulk request refused (400), which failed the good commands with it
    # for good; alone, an empty one made the client send {"commands": []} for ever (issue 24).
    writer = Spool(folder)
    good: List[Record] = []
    for number in range(1000):
        if number % 100 == 50:
            assert writer.append(NOT_COMMANDS[(number // 100) % len(NOT_COMMANDS)]) is not None
        good.append(writer.append(command(number)))  # type: ignore[arg-type]
    assert writer.close() == 1010
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder, accepts=is_command)
    found = recover_all(reader)
    assert [data for _, data in found] == [command(number) for number in range(1000)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "10 records whole but not a command" in warnings[0], warnings
    assert reader.stats()["damaged"] == 10
    reader.confirm([record for record, _ in found])
    assert segments(folder) == []  # nothing else waits in it: deleted
    reader.close()
    alone = Spool(folder)
    alone.append(b"")
    alone.close()
    reader = Spool(folder, accepts=is_command)
    assert recover_all(reader) == [] and segments(folder) == []
    reader.close()


def test_each_file_is_replayed_only_for_the_target_it_was_written_for(folder: str) -> None:
    # A client made on the folder for another target sent these commands there, where they were
    # refused and deleted (issue 24).
    for target, numbers in (("http://a.example", range(0, 3)), ("http://b.example", range(3, 5)), ("", range(5, 6))):
        writer = Spool(folder, target=target)
        for number in numbers:
            writer.append(payload(number))
        writer.close()
    version_1 = os.path.join(folder, "old-1-abcd-1.seg")  # written before targets were: says none
    with open(version_1, "wb") as file:
        file.write(b"7SSPOOL\x01" + bytes(8) + _record_bytes(payload(6)))
    assert sorted(entry.target for entry in inspect(folder).files) == ["", "", "http://a.example", "http://b.example"]
    reader = Spool(folder, target="http://b.example")
    found = recover_all(reader)
    assert sorted(number_of(data) for _, data in found) == [3, 4, 5, 6]  # its own, and those naming none
    files = {entry.target: entry for entry in inspect(folder).files}
    assert files["http://a.example"].commands == 3 and not files["http://a.example"].alive  # not even locked
    reader.confirm([record for record, _ in found])
    reader.close()
    assert inspect(folder).commands == 3
    other = Spool(folder, target="http://a.example")
    assert sorted(number_of(data) for _, data in recover_all(other)) == [0, 1, 2]
    other.close()  # not confirmed: kept
    every = Spool(folder, target="http://c.example")
    found = recover_all_targets(every)
    assert sorted((every.target_of(name), number_of(data)) for (name, _), data in found) == [
        ("http://a.example", 0), ("http://a.example", 1), ("http://a.example", 2),
    ]
    every.close()


def recover_all_targets(spool: Spool) -> List[Tuple[Record, bytes]]:
    return [item for chunk in spool.recover(every_target=True) for item in chunk]

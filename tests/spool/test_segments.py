"""Segments and their locks (seven_segments/spool/segments.py, processes.py): many threads, real processes, kills, forks, full disks.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Set

import pytest

from seven_segments import spool as spool_module
from seven_segments.spool import (
    Record,
    Spool,
    inspect,
)

from ..conftest import exit_code
from .helpers import ROOT, LOGGER, payload, number_of, recover_all, segments, child_env, start_child, read_line

pytestmark = pytest.mark.timeout(60)


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
        mine = {os.path.basename(s.path) for s in reader._held.segments.values()}
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
from seven_segments.spool import files
real_map = files.map_preallocated
def slow_map(fd, length, start):
    slow.set()
    time.sleep(0.3)  # a thread in the middle of making a segment: the descriptor and its flock exist
    return real_map(fd, length, start)
files.map_preallocated = slow_map
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
    spool._held.closed = True  # stand in for a kill: the files stay as they are, with their locks let go
    for segment in list(spool._held.segments.values()):
        if segment.view is not None:
            segment.view.close()  # a kill unmaps it (and closes the map's own descriptor)
        os.close(segment.fd)
        if segment.ack_fd >= 0:
            os.close(segment.ack_fd)
    reader = Spool(folder)
    found = sorted((body["thread"], body["n"]) for body in (json.loads(data) for _, data in recover_all(reader)))
    assert found == sorted((thread, number) for thread, number, _ in records if thread >= 2)
    reader.close()

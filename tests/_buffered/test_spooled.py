"""Buffered mode with a durable spool: real processes killed with SIGKILL mid-burst, replayed by another."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from seven_segments import InvalidRequest, SevenSegments
from seven_segments.spool import Spool, SpoolError, inspect
from seven_segments.testing import LocalServer

from ..conftest import TOKEN, collector, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")]

BURST = """
import sys
from seven_segments import SevenSegments
client = SevenSegments(sys.argv[3], "john", target=sys.argv[1], buffered=True, spool=sys.argv[2], flush_interval=0.05)
number = 0
while True:
    client.track("view", {"n": number})
    number += 1
    if number % 200 == 0:
        sys.stdout.write(f"{number}\\n")  # every event before this one was accepted: it is in the spool
        sys.stdout.flush()
"""


def kill_mid_burst(target: str, spool: Path, after: int, ready: Any = lambda: True) -> int:
    """Run a process that tracks without end; SIGKILL it once it reports ``after`` events (and
    ``ready()`` holds); return the number of events it had reported as accepted."""
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BURST), target, str(spool), TOKEN],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert process.stdout is not None
    accepted = 0
    deadline = time.monotonic() + 30
    try:
        while (accepted < after or not ready()) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            accepted = int(line)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait(10)
    assert process.returncode == -signal.SIGKILL
    assert accepted >= after
    return accepted


def replay(server: LocalServer, spool: Path) -> SevenSegments:
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(spool))
    assert client.flush(30) is True
    return client


def delivered(server: LocalServer) -> List[int]:
    return delivered_numbers(server)


def back_up(dead_url: str) -> LocalServer:
    """The API that was down at ``dead_url``, answering again (a spool replays each command only to
    the target it was written for)."""
    return LocalServer(port=int(dead_url.rsplit(":", 1)[1]))


@pytest.mark.slow
def test_sigkill_with_the_api_down_loses_nothing_accepted(dead_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    accepted = kill_mid_burst(dead_url, spool, after=3000)
    with back_up(dead_url) as server:
        client = replay(server, spool)
        numbers = delivered(server)
        client.close()
    assert set(range(accepted)) <= set(numbers)  # every event accepted before the kill arrived...
    assert len(numbers) == len(set(numbers))  # ...once
    stats = client.stats()
    assert stats["replayed"] >= accepted and stats["sent"] == stats["replayed"]
    assert [name for name in os.listdir(spool) if name.endswith(".seg")] == []  # space given back


@pytest.mark.slow
def test_sigkill_while_the_api_is_up_and_losing_answers_delivers_each_event_once(server: LocalServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    server.faults.random(0.2, seed=3, kinds=["drop_after", "503"], retry_after=0.01)  # applied, answer lost
    # killed once some requests were applied and their answers lost
    accepted = kill_mid_burst(server.url, spool, after=4000, ready=lambda: server.stats()["faults"].get("drop_after"))
    server.faults.random(0)
    before = len(server.events())
    assert before > 0  # some were delivered by the killed process itself
    client = replay(server, spool)
    numbers = delivered(server)
    assert set(range(accepted)) <= set(numbers)
    assert len(numbers) == len(set(numbers)), "an event was applied twice"
    assert server.stats()["duplicates"] > 0  # replayed commands the server had applied were acknowledged, not applied
    client.close()


@pytest.mark.slow
def test_exit_with_the_api_down_keeps_what_it_could_not_send(dead_url: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    script = """
import logging, sys
from seven_segments import SevenSegments
logging.basicConfig(level=logging.WARNING, format="%(message)s")
client = SevenSegments("exit-token", "john", target=sys.argv[1], buffered=True, spool=sys.argv[2], shutdown_timeout=0.3)
for number in range(500):
    client.track("view", {"n": number})
"""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), dead_url, str(spool)],
        capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 0, result.stderr
    assert f"500 commands were kept in the spool {spool}" in result.stderr
    assert "lost" not in result.stderr and "exit-token" not in result.stderr
    with back_up(dead_url) as server:
        client = replay(server, spool)
        assert delivered(server) == list(range(500))
        client.close()


def test_a_forked_child_spools_to_its_own_files(server: LocalServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    client = SevenSegments(TOKEN, "parent", target=server.url, buffered=True, spool=str(spool))
    client.track("view", {"n": -1})
    assert client.flush(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for number in range(100):
                client.track("view", {"n": number}, customer="child")
            code = 0 if client.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    client.track("view", {"n": 1000})
    assert client.flush(10)
    client.close()
    assert delivered(server) == [-1] + list(range(100)) + [1000]


def test_a_spool_that_is_a_file_is_refused_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "not-a-folder"
    path.write_text("x")
    with pytest.raises(ValueError, match=str(path)):
        SevenSegments(TOKEN, "john", buffered=True, spool=str(path))
    with pytest.raises(ValueError, match="buffered=True"):
        SevenSegments(TOKEN, "john", spool=str(tmp_path / "spool"))


def test_a_spool_folder_of_another_user_or_open_to_others_is_refused_at_construction(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    spool.chmod(0o1777)  # like /tmp
    with pytest.raises(SpoolError, match=f"{spool} can be written by others"):
        SevenSegments(TOKEN, "john", buffered=True, spool=str(spool))
    if os.geteuid() == 0:
        spool.chmod(0o700)
        os.chown(spool, 65534, 65534)
        with pytest.raises(SpoolError, match=f"{spool} belongs to another user"):
            SevenSegments(TOKEN, "john", buffered=True, spool=str(spool))
    assert os.listdir(spool) == []


def test_a_segment_linked_to_dev_zero_is_skipped_and_the_good_ones_delivered(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    server.faults.fail_next(100_000, status=503)  # the API is down for the writer: its commands stay
    writer = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(spool), shutdown_timeout=0.1)
    for number in range(50):
        writer.track("view", {"n": number})
    writer.close()
    server.faults.clear()
    assert inspect(str(spool)).commands == 50
    zero = spool / "0-zero.seg"  # read first (sorted first, made "at 0")
    zero.symlink_to("/dev/zero")
    caplog.set_level(logging.WARNING, "seven_segments")
    client = replay(server, spool)
    assert delivered(server) == list(range(50))
    assert any(str(zero) in r.getMessage() and "not a regular file" in r.getMessage() for r in caplog.records)
    client.close()


def test_a_deleted_spool_folder_is_made_again_and_every_event_delivered(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "spool"
    caplog.set_level(logging.WARNING, "seven_segments")
    client = SevenSegments(  # files of 16 KiB: about a hundred events each
        TOKEN, "john", target=server.url, buffered=True, spool=str(spool), spool_max_bytes=64 * 1024, flush_interval=0.05,
    )
    for first in range(0, 300, 100):  # flushed in rounds: within spool_max_bytes
        for number in range(first, first + 100):
            client.track("view", {"n": number})
        assert client.flush(10)
    shutil.rmtree(spool)
    for number in range(300, 310):  # room for them in the current file, which is gone
        client.track("view", {"n": number})
    assert client.flush(10)
    client.track("view", {"n": 310})  # into a new file, not into the one that is gone
    assert spool.is_dir() and stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert [entry for entry in inspect(str(spool)).files if entry.alive]  # this process's new file
    for first in range(311, 1311, 100):
        for number in range(first, first + 100):
            client.track("view", {"n": number})
        assert client.flush(10)
    assert delivered(server) == list(range(1311))
    stats = client.stats()
    assert stats["dropped"] == 0 and stats["not_spooled"] == 0  # spooled again, in the new folder
    made = [r for r in caplog.records if "made again" in r.getMessage()]
    assert len(made) == 1 and str(spool) in made[0].getMessage()
    client.close()


@pytest.mark.parametrize("replacement", ["a link to another folder", "a folder others can write to"])
def test_a_spool_folder_replaced_while_the_client_runs_gets_no_file_and_every_event_is_delivered(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, replacement: str
) -> None:
    # Deleted and replaced (by a link, or by a folder open to others' writing) while the client ran,
    # the folder was checked no more: the next segments, with the company token, went into it.
    spool, other = tmp_path / "spool", tmp_path / "other"
    caplog.set_level(logging.WARNING, "seven_segments")
    client = SevenSegments(  # files of 16 KiB: about a hundred events each
        TOKEN, "john", target=server.url, buffered=True, spool=str(spool), spool_max_bytes=64 * 1024, flush_interval=0.05,
    )
    for number in range(100):
        client.track("view", {"n": number})
    assert client.flush(10)
    shutil.rmtree(spool)
    other.mkdir()
    other.chmod(0o777)
    if replacement == "a link to another folder":
        spool.symlink_to(other)
    else:
        other.rename(spool)
        other = spool
    for first in range(100, 400, 100):  # past the current file: new ones are made
        for number in range(first, first + 100):
            client.track("view", {"n": number})
        assert client.flush(10)
    assert os.listdir(other) == []
    assert delivered(server) == list(range(400))
    assert client.stats()["not_spooled"] > 0 and client.stats()["dropped"] == 0
    warned = [r.getMessage() for r in caplog.records if str(spool) in r.getMessage() and "cannot write" in r.getMessage()]
    assert len(warned) == 1 and ("link" in warned[0] or "written by others" in warned[0])
    client.close()


def test_a_full_disk_keeps_delivering_from_memory(
    server: LocalServer, tmp_path: Path, monkeypatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Less free disk than one segment: commands the spool cannot take are still sent (from memory)."""
    def no_room(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    caplog.set_level(logging.WARNING, "seven_segments")
    reports, on_error = collector()
    client = SevenSegments(
        TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"), on_error=on_error,
    )
    monkeypatch.setattr(os, "posix_fallocate", no_room)  # the disk has no room for the next file (4 MiB)
    for number in range(500):
        client.track("view", {"n": number})
    assert client.flush(10) is True
    assert delivered(server) == list(range(500))
    stats = client.stats()
    assert (stats["sent"], stats["not_spooled"], stats["dropped"]) == (500, 500, 0) and reports == []
    said = [r.getMessage() for r in caplog.records if "not in the spool" in r.getMessage()]
    assert len(said) == 1 and "No space left on device" in said[0], said
    client.close()


def test_commands_not_in_the_spool_are_reported_lost_at_close_with_the_api_down(dead_url: str, tmp_path: Path) -> None:
    """Only memory held them: at the close deadline they are failed and reported, not said kept."""
    reports, on_error = collector()
    client = SevenSegments(  # files of 1 KiB: the first few commands fit, the others go from memory
        TOKEN, "john", target=dead_url, buffered=True, spool=str(tmp_path / "spool"), spool_max_bytes=4096,
        shutdown_timeout=0.2, on_error=on_error,
    )
    for number in range(30):
        client.track("view", {"n": number})
    client.close()
    stats = client.stats()
    kept, lost = stats["kept_in_spool"], stats["not_spooled"]
    assert kept > 0 and lost > 0 and kept + lost == 30 and stats["failed"] == lost
    reported = sorted(command["data"]["properties"]["n"] for _, commands in reports for command in commands)
    assert len(reported) == lost
    assert inspect(str(tmp_path / "spool")).commands == kept
    reader = Spool(str(tmp_path / "spool"), target=dead_url)
    replayed = [json.loads(data)["data"]["properties"]["n"] for chunk in reader.recover() for _, data in chunk]
    assert sorted(replayed + reported) == list(range(30))
    reader.close()


def test_a_full_spool_sends_from_memory_counts_and_never_raises(server: LocalServer, tmp_path: Path) -> None:
    """Past spool_max_bytes, commands the API could take are not dropped: they go from memory."""
    reports: List[Any] = []
    client = SevenSegments(
        TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"), spool_max_bytes=64 * 1024,
        flush_interval=60, on_error=lambda error, commands: reports.append((error, commands)),
    )
    for number in range(2000):  # about 150 bytes each on disk: far more than 64 KiB
        client.track("view", {"n": number, "padding": "x" * 40})
    assert client.flush(10) is True
    stats = client.stats()
    assert stats["not_spooled"] > 0 and stats["sent"] == 2000 and stats["dropped"] == 0 and reports == []
    assert delivered(server) == list(range(2000))
    client.close()


def test_a_command_dropped_by_a_full_queue_is_reported_with_its_properties(dead_url: str, tmp_path: Path) -> None:
    """A client with a spool queues properties as their JSON text: on_error still gets them as a dict."""
    reports, on_error = collector()
    client = SevenSegments(
        TOKEN, "john", target=dead_url, buffered=True, spool=str(tmp_path / "spool"), max_queue_size=5,
        flush_interval=60, on_error=on_error,
    )
    for number in range(50):
        client.track("view", {"n": number, "when": "now", "ok": True, "price": 2.5, "none": None})
        client.update({"n": number})
    client.close(0)
    reported = [command for _, commands in reports for command in commands]
    assert client.stats()["dropped_queue_full"] > 0
    events = [command["data"] for command in reported if command["name"] == "crm/events"]
    updates = [command["data"] for command in reported if command["name"] == "crm/customers"]
    assert events and updates
    assert all(data["properties"] == {"n": data["properties"]["n"], "when": "now", "ok": True, "price": 2.5, "none": None} for data in events)
    assert all(list(data["properties"]) == ["n"] for data in updates)


def test_segments_after_the_first_are_made_by_the_worker_not_by_track(
    server: LocalServer, tmp_path: Path, monkeypatch: Any
) -> None:
    from seven_segments.spool import facade
    from seven_segments.spool.segments import SegmentMaker

    monkeypatch.setattr(facade, "SEGMENT_BYTES", 16 * 1024)
    makers: List[str] = []
    make = SegmentMaker.make

    def noting_the_thread(self: Any, *args: Any, **kwargs: Any) -> Any:
        makers.append(threading.current_thread().name)
        return make(self, *args, **kwargs)

    monkeypatch.setattr(SegmentMaker, "make", noting_the_thread)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"))
    for number in range(600):  # about 150 bytes each on disk: several 16 KiB segments
        client.track("view", {"n": number, "padding": "x" * 40})
        if number % 20 == 19:
            assert client.flush(10)  # the worker takes what was queued, and looks ahead
    client.close()
    assert len(makers) >= 5, makers
    on_callers = [name for name in makers[2:] if name != "seven-segments-worker"]  # the probe, the first one
    assert on_callers == [], makers
    assert len(server.events()) == 600


def test_a_queue_of_one_command_with_a_spool_still_delivers(server: LocalServer, tmp_path: Path) -> None:
    # The replay took what the spool held while fewer than max_queue_size // 2 (0 here) were held:
    # it never ended, and no new command was ever taken.
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"), max_queue_size=1)
    client.track("view")
    assert client.flush(5)
    client.close()
    assert [event["type"] for event in server.events()] == ["view"]


def let_go_in_an_outage(server: LocalServer, folder: str, count: int, **options: Any) -> SevenSegments:
    """A spooling client whose first ``count`` events (``{"n": 0..}``) the API, down from now on, never
    took within ``retry_deadline`` (0.3 s: short, since each test waits it out): let go of, on disk."""
    server.faults.fail_next(100_000, status=503)
    options = {"retry_deadline": 0.3, "flush_interval": 0.01, **options}
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder, **options)
    for number in range(count):
        client.track("view", {"n": number})
    assert client.flush(10) is False
    return client


def delivered_numbers(server: LocalServer) -> List[int]:
    return sorted(event["properties"]["n"] for event in server.events())


def test_an_outage_longer_than_retry_deadline_keeps_the_commands_in_the_spool_and_sends_them_after(
    server: LocalServer, tmp_path: Path
) -> None:
    # They were failed for good, and their records confirmed: deleted from the spool while the API
    # was down, although the API never refused them (found by review).
    folder = str(tmp_path / "spool")
    reports, on_error = collector()
    client = let_go_in_an_outage(server, folder, 10, on_error=on_error)
    assert inspect(folder).commands == 10  # still on disk
    stats = client.stats()
    assert (stats["kept_in_spool"], stats["failed"], stats["sent"]) == (10, 0, 0)
    assert reports == []  # not lost, so not reported as lost
    server.faults.clear()
    client.track("view", {"n": 10})  # the API answers again: what was let go of is read back and sent
    assert wait_until(lambda: len(server.events()) == 11, timeout=10)
    assert client.flush(5)
    stats = client.stats()
    assert (stats["kept_in_spool"], stats["sent"], stats["failed"]) == (0, 11, 0)
    client.close()
    assert delivered_numbers(server) == list(range(11))
    assert inspect(folder).commands == 0


def test_commands_let_go_of_in_an_outage_are_delivered_by_the_next_client_when_this_one_ends_first(
    server: LocalServer, tmp_path: Path, caplog: Any
) -> None:
    import logging

    folder = str(tmp_path / "spool")
    client = let_go_in_an_outage(server, folder, 5)
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        client.close(1)
    assert "5 commands were kept in the spool" in caplog.text
    server.faults.clear()
    later = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder)
    assert later.flush(10)
    later.close()
    assert delivered_numbers(server) == list(range(5))


SIGTERM_IN_APPEND = """
import os, signal, sys, time
from seven_segments import SevenSegments
from seven_segments import spool as spool_module
client = SevenSegments("token", "john", target=sys.argv[1], buffered=True, spool=sys.argv[2], shutdown_timeout=2)
for number in range(100):
    client.track("view", {"n": number})
(spool,) = list(spool_module._SPOOLS)
with spool._lock:  # as if SIGTERM landed in the middle of Spool.append, on this thread
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100):  # the handler runs here, between two bytecodes: it must not wait for the close
        time.sleep(0.002)
    print("released", flush=True)
time.sleep(30)  # the signal comes again now: the clients are closed, and the process ends by SIGTERM
"""


@pytest.mark.slow
def test_sigterm_while_this_thread_holds_the_spool_lock_closes_once_it_is_released(server: LocalServer, tmp_path: Path) -> None:
    # The handler waited for a close that needed the lock the interrupted append held: 60 s, past
    # Kubernetes' grace period (found by review).
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_APPEND, server.url, str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    took = time.monotonic() - started
    assert result.returncode == -signal.SIGTERM, result.stderr
    assert result.stdout == "released\n"
    assert took < 10, took
    assert delivered_numbers(server) == list(range(100))


LOGGING_HANDLER_THAT_TRACKS = """
import logging, os, sys, threading, time
from seven_segments import SevenSegments
folder = sys.argv[2]
os.makedirs(folder, mode=0o700)
with open(os.path.join(folder, "junk.seg"), "wb") as junk:  # warned about when it is taken over
    junk.write(b"not a segment at all, left by something else")
client = None
class Forward(logging.Handler):  # an application that turns the library's warnings into events
    def emit(self, record):
        while client is None:
            time.sleep(0.001)
        client.track("log", {"message": record.getMessage()[:50]})
logging.getLogger("seven_segments").addHandler(Forward(logging.WARNING))
client = SevenSegments("token", "john", target=sys.argv[1], buffered=True, spool=folder)
client.track("view", {"n": 1})
print(client.flush(10), flush=True)
client.close(5)
"""


@pytest.mark.slow
def test_a_logging_handler_that_tracks_a_spool_warning_hangs_nothing(server: LocalServer, tmp_path: Path) -> None:
    # The warning about a damaged file was logged while the lock that makes fork() wait was held; the
    # handler's track() needed that lock to make its first segment: the pump and every track hung.
    result = subprocess.run(
        [sys.executable, "-c", LOGGING_HANDLER_THAT_TRACKS, server.url, str(tmp_path / "spool")],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"
    assert sorted(event["type"] for event in server.events())[-1] == "view"


def test_a_flush_alone_sends_again_what_an_outage_let_go_of_once_the_api_answers(server: LocalServer, tmp_path: Path) -> None:
    folder = str(tmp_path / "spool")
    client = let_go_in_an_outage(server, folder, 10)
    server.faults.clear()
    assert client.flush(10) is True  # no new command: the flush itself reads them back and waits for them
    assert client.stats()["kept_in_spool"] == 0 and client.stats()["sent"] == 10
    client.close()
    assert delivered_numbers(server) == list(range(10))
    assert inspect(folder).commands == 0


def test_a_close_sends_what_an_outage_let_go_of_when_the_api_is_back(server: LocalServer, tmp_path: Path) -> None:
    # A container's disk goes with it: no next client on that folder would ever send them.
    folder = str(tmp_path / "spool")
    client = let_go_in_an_outage(server, folder, 10)
    server.faults.clear()
    client.close(5)
    assert delivered_numbers(server) == list(range(10))
    assert inspect(folder).commands == 0 and client.stats()["kept_in_spool"] == 0


def test_a_close_after_the_worker_went_idle_still_sends_what_an_outage_let_go_of(
    server: LocalServer, tmp_path: Path, monkeypatch: Any
) -> None:
    from seven_segments._buffered import thread

    monkeypatch.setattr(thread, "PUMP_IDLE_SECONDS", 0.05)
    client = let_go_in_an_outage(server, str(tmp_path / "spool"), 10)
    assert wait_until(lambda: not any(t.name == "seven-segments-worker" for t in threading.enumerate()), timeout=10)
    server.faults.clear()
    client.close(5)  # nothing in memory, the worker gone: the close still reads them back
    assert delivered_numbers(server) == list(range(10))


@pytest.mark.slow
def test_a_flush_during_an_outage_leaves_room_for_new_commands(server: LocalServer, tmp_path: Path) -> None:
    # The read-back a flush starts held every new command back, and the queue filled up with them.
    server.faults.fail_next(100_000, status=503)
    client = SevenSegments(
        TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"), retry_deadline=1,
        flush_interval=0.01, max_queue_size=100,
    )
    # 45 calls between flushes: room for them beside the 50 held even when a busy machine keeps the
    # pump from taking any meanwhile (60 did not always fit); the bug held them back and filled the
    # queue with 45 as with 60.
    for number in range(180):  # more than a queue's worth, let go of in turn
        client.track("view", {"n": number})
        if number % 45 == 44:  # each flush reads at most 25 back, while fewer than 50 are held
            assert client.flush(10) is False
    assert client.flush(0.5) is False
    for number in range(180, 190):  # at most 49 + 25 held already: room for these
        client.track("view", {"n": number})
    assert client.stats()["dropped_queue_full"] == 0
    client.close(0.5)


def test_a_close_with_the_api_still_down_tries_what_was_let_go_of_once_not_in_a_loop(
    server: LocalServer, tmp_path: Path
) -> None:
    # With retry_deadline shorter than the first backoff, each read-back was let go of at once and
    # read back at the next step: thousands of requests to a failing API during the close.
    client = let_go_in_an_outage(server, str(tmp_path / "spool"), 50, retry_deadline=0)
    before = len(server.requests())
    started = time.monotonic()
    client.close(1)
    assert len(server.requests()) - before <= 3
    assert time.monotonic() - started < 2
    assert client.stats()["kept_in_spool"] == 50


@pytest.mark.slow
def test_a_flush_during_an_outage_answers_once_what_it_read_back_is_let_go_of_again(
    server: LocalServer, tmp_path: Path
) -> None:
    server.faults.fail_next(100_000, status=503)
    client = SevenSegments(
        TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"), retry_deadline=1,
        flush_interval=0.01, max_queue_size=40,
    )
    for number in range(160):  # four read-back chunks of 10 (a quarter of the queue)
        client.track("view", {"n": number})
        if number % 30 == 29:
            client.flush(5)
    assert client.flush(5) is False
    started = time.monotonic()
    assert client.flush(None) is False  # not one retry_deadline per chunk until all 160 were tried
    assert time.monotonic() - started < 4  # it took 7 s
    client.close(0.2)


def test_a_let_go_command_damaged_on_disk_is_counted_lost_and_the_flush_says_so(
    server: LocalServer, tmp_path: Path, caplog: Any
) -> None:
    import logging

    from seven_segments.spool import HEADER_BYTES, RECORD_HEADER_BYTES

    folder = tmp_path / "spool"
    client = let_go_in_an_outage(server, str(folder), 5)
    (segment,) = folder.glob("*.seg")
    first = segment.read_bytes().index(b"\xff\xa7", HEADER_BYTES)  # after the header, which names the target
    fd = os.open(segment, os.O_RDWR)
    try:
        os.pwrite(fd, b"\xff", first + RECORD_HEADER_BYTES + 3)  # one byte of the first record
    finally:
        os.close(fd)
    server.faults.clear()
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        assert client.flush(10) is False  # four delivered, one lost: not all
    assert "cannot be read back" in caplog.text
    stats = client.stats()
    assert (stats["sent"], stats["failed"], stats["kept_in_spool"], stats["pending"]) == (4, 1, 0, 0)
    client.close()
    assert delivered_numbers(server) == [1, 2, 3, 4]


def spooled_command(number: int) -> bytes:
    """A command as a client for TOKEN spools it."""
    return json.dumps({
        "name": "crm/events",
        "data": {
            "company_id": TOKEN, "customer_ids": {"registered": "john"}, "type": "view", "properties": {"n": number},
            "timestamp": 1_700_000_000 + number, "command_id": f"cmd-{number}",
        },
    }, separators=(",", ":")).encode()


def left_by_a_dead_writer(folder: str, target: str, payloads: List[bytes]) -> None:
    """A segment written by the spool's own writer, whose process is gone (its file unlocked)."""
    from seven_segments.spool import Spool

    writer = Spool(folder, target=target)
    for payload in payloads:
        assert writer.append(payload) is not None
    assert writer.close() == len(payloads)


def test_a_record_that_is_no_command_is_never_sent_and_costs_no_other_command(server: LocalServer, tmp_path: Path) -> None:
    # Its batch of 1,000 was refused as a whole (400) and failed for good; decoding it for on_error
    # raised, so on_error heard of none: 999 events lost silently. Alone, the client sent
    # {"commands": []} for ever: flush() never True, each close its whole deadline (issue 24).
    folder = str(tmp_path / "spool")
    payloads = [spooled_command(number) for number in range(1000)]
    payloads.insert(500, b"")  # an empty payload has CRC-32 0: 10 bytes of a torn header make one
    left_by_a_dead_writer(folder, server.url, payloads)
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder, on_error=on_error)
    assert client.flush(10) is True
    assert delivered_numbers(server) == list(range(1000)) and reports == []
    assert all(request["status"] == 200 for request in server.requests())
    started = time.monotonic()
    client.close(5)
    assert time.monotonic() - started < 2
    assert inspect(folder).files == []  # the bad record's place settled with the rest: the file is gone
    left_by_a_dead_writer(folder, server.url, [b""])  # alone
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder)
    started = time.monotonic()
    assert client.flush(3) is True
    client.close(3)
    assert time.monotonic() - started < 2 and inspect(folder).files == []
    assert client.stats()["sent"] == 0


def test_a_huge_file_planted_as_a_segment_is_not_read_and_the_good_ones_are_delivered(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Read whole, a sparse file of gigabytes took the memory: MemoryError stopped the replay of every
    # other file (and flush() said True), or, without a memory limit, the process read it all.
    folder = str(tmp_path / "spool")
    left_by_a_dead_writer(folder, server.url, [spooled_command(number) for number in range(10)])
    [good] = [entry for entry in os.listdir(folder) if entry.endswith(".seg")]
    huge = Path(folder) / "0-huge.seg"  # read first (sorted first, made "at 0")
    with open(huge, "wb") as file:
        file.write((Path(folder) / good).read_bytes()[:16])
        file.truncate(64 * 1024 * 1024 * 1024)
    caplog.set_level(logging.WARNING, "seven_segments")
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder)
    assert client.flush(10) is True
    client.close()
    assert delivered_numbers(server) == list(range(10))
    assert any(str(huge) in r.getMessage() and "larger than any segment" in r.getMessage() for r in caplog.records)
    assert huge.stat().st_size == 64 * 1024 * 1024 * 1024  # left as it is
    assert [entry.commands for entry in inspect(folder).files] == [0]



def test_a_record_holding_a_lone_surrogate_is_no_command_and_costs_no_other_command(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its JSON is valid ("\ud800" is an escape), but no client writes it (track refuses such text)
    # and the server could not read it: the local server dropped every request holding it, so the
    # nine good commands of its batch were retried, let go of, and replayed so at every start.
    folder = str(tmp_path / "spool")
    poisoned = spooled_command(5).replace(b'"n":5', b'"n":5,"s":"\\ud800"')
    assert b'"s":"\\ud800"' in poisoned
    left_by_a_dead_writer(folder, server.url, [spooled_command(n) for n in range(5)] + [poisoned]
                          + [spooled_command(n) for n in range(6, 10)])
    caplog.set_level(logging.WARNING, "seven_segments")
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder, retry_deadline=2)
    assert client.flush(5) is True
    client.close()
    assert delivered_numbers(server) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert all(request["status"] == 200 for request in server.requests())
    assert any("not a command" in r.getMessage() for r in caplog.records) and inspect(folder).files == []


def test_a_segment_replaced_by_a_link_while_it_is_read_back_truncates_nothing_else(
    server: LocalServer, tmp_path: Path, monkeypatch: Any
) -> None:
    # Checked to be the file locked, then read and parsed, then cut back to its last record by its
    # name: os.truncate followed a link put there meanwhile, and cut the file it named.
    import seven_segments.spool as spool_module

    folder = tmp_path / "spool"
    server.faults.fail_next(100_000, status=503)
    writer = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(folder), shutdown_timeout=0.1)
    for number in range(5):
        writer.track("view", {"n": number})
    writer.close()
    server.faults.clear()
    [segment] = [entry for entry in os.listdir(folder) if entry.endswith(".seg")]
    with open(folder / segment, "ab") as file:
        file.write(bytes(4096))  # zeros, as a writer killed leaves: cut back when the file is read
    victim = tmp_path / "victim"
    victim.write_bytes(b"x" * 100_000)
    parse = spool_module.parse_records
    swapped: List[str] = []

    def swapping(data: bytes, start: int = spool_module.HEADER_BYTES) -> Any:
        if not swapped:
            [name] = [entry for entry in os.listdir(folder) if entry.endswith(".seg")]
            os.rename(folder / name, tmp_path / "kept.seg")
            (folder / name).symlink_to(victim)
            swapped.append(name)
        return parse(data, start)

    monkeypatch.setattr(spool_module.recovery, "parse_records", swapping)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(folder))
    assert client.flush(10) is True
    client.close()
    assert swapped and victim.read_bytes() == b"x" * 100_000
    assert delivered(server) == list(range(5))


def test_a_replayed_command_too_large_is_failed_without_a_request(server: LocalServer, tmp_path: Path) -> None:
    # Spooled before sizes were checked at the call (or planted), it went out with the others: each
    # request holding it was answered 413 and split, until it was alone (issue 24's point 8).
    folder = str(tmp_path / "spool")

    def large(number: int) -> bytes:
        command = json.loads(spooled_command(number))
        command["data"]["properties"]["pad"] = "x" * 200_000
        return json.dumps(command).encode()

    payloads = [large(n) if n in (15, 25) else spooled_command(n) for n in range(30)]
    left_by_a_dead_writer(folder, server.url, payloads)
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder, on_error=on_error)
    assert client.flush(10) is False
    assert client.stats() == {**client.stats(), "failed": 2, "sent": 28, "replayed": 30, "pending": 0}
    client.close()
    assert delivered_numbers(server) == [n for n in range(30) if n not in (15, 25)]
    assert all(request["status"] == 200 for request in server.requests())
    [(error, commands)] = reports
    assert isinstance(error, InvalidRequest) and error.status == 413 and len(error.errors) == 2
    assert all("more than 102400" in reason for reason in error.errors)
    assert [c["data"]["command_id"] for c in commands] == ["cmd-15", "cmd-25"]
    assert inspect(folder).files == []

def test_a_batch_refused_as_a_whole_with_400_is_split_and_delivered(server: LocalServer, tmp_path: Path) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, on_error=on_error, flush_interval=60)
    server.faults.fail_next(1, status=400)
    for number in range(10):
        client.track("view", {"n": number})
    assert client.flush(10) is True
    client.close()
    assert delivered_numbers(server) == list(range(10)) and reports == []
    assert [request["status"] for request in server.requests()] == [400, 200, 200]


def test_a_client_for_another_target_neither_sends_nor_deletes_the_commands_of_another(
    server: LocalServer, tmp_path: Path
) -> None:
    # Client B replayed client A's commands to B's server, where they were refused and deleted,
    # and B's on_error got them without their company (issue 24).
    folder = str(tmp_path / "spool")
    server.faults.fail_next(100_000, status=503)  # A's API is down: A's commands stay on disk
    first = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=folder, flush_interval=0.01)
    for number in range(5):
        first.track("view", {"n": number})
    first.close(0.3)
    assert inspect(folder).commands == 5
    server.faults.clear()
    with LocalServer() as other:
        reports, on_error = collector()
        second = SevenSegments("other-token", "jane", target=other.url, buffered=True, spool=folder, on_error=on_error)
        second.track("view", {"n": 100})
        assert second.flush(10) is True
        second.close()
        assert [event["properties"]["n"] for event in other.events()] == [100] and reports == []
        assert inspect(folder).commands == 5  # A's, neither sent to B's server nor deleted
    later = SevenSegments(TOKEN, "john", target=server.url + "/", buffered=True, spool=folder)
    assert later.flush(10) is True
    later.close()
    assert delivered_numbers(server) == list(range(5)) and inspect(folder).commands == 0

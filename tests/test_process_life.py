"""Buffered mode across threads, faults, forks and interpreter exit: real threads, processes, sockets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from seven_segments import SevenSegments
from seven_segments import serialization as serialization_module
from seven_segments._buffered import lifecycle as registry_module
from seven_segments.testing import LocalServer

from .conftest import TOKEN, exit_code

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_eight_threads_through_every_passing_fault_arrive_exactly_once(server: LocalServer) -> None:
    threads, per_thread = 8, 10_000
    server.faults.random(0.1, seed=11, retry_after=0.05)
    # batches of 100, so that 10% of some 800 requests fail
    client = SevenSegments(TOKEN, target=server.url, buffered=True, flush_interval=0.05, batch_size=100)
    start = threading.Barrier(threads)

    def produce(index: int) -> None:
        start.wait()
        for number in range(per_thread):
            client.track("view", {"thread": index, "n": number}, customer=f"user-{index}")

    producers = [threading.Thread(target=produce, args=(index,)) for index in range(threads)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    assert client.flush(90) is True
    stats = client.stats()
    client.close()
    server_stats = server.stats()
    events = server.events()
    seen = [(event["properties"]["thread"], event["properties"]["n"]) for event in events]
    assert len(seen) == threads * per_thread
    assert set(seen) == {(index, number) for index in range(threads) for number in range(per_thread)}
    assert stats["sent"] == threads * per_thread and stats["failed"] == stats["dropped"] == 0
    # every passing kind of failure really happened, and retries were needed
    assert {"drop_before", "drop_after", "command_retry"} <= set(server_stats["faults"])
    assert {"500", "503", "429"} <= set(server_stats["statuses"])
    assert stats["retried"] > 0 and server_stats["duplicates"] > 0


# --------------------------------------------------------------------------------------------
# fork


def _child(body: Any) -> int:
    """Fork; run ``body()`` in the child (bounded by an alarm) and exit with its status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            signal.alarm(20)
            status = 0 if body() else 3
        finally:
            os._exit(status)
    return pid


def _wait(pid: int, timeout: float = 30.0) -> Optional[int]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return exit_code(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_sends_its_own_events_and_never_the_parents(server: LocalServer) -> None:
    client = SevenSegments(TOKEN, "parent", target=server.url, buffered=True, flush_interval=60)
    for number in range(5):
        client.track("parent-event", {"n": number})  # queued, not yet sent at the fork
    server.faults.delay_next(1, 0.5)
    client.flush(0)  # the worker is inside a (slow) request while we fork

    def in_child() -> bool:
        for number in range(3):
            client.track("child-event", {"n": number}, customer="child")
        delivered = client.flush(10)
        stats = client.stats()
        client.close(5)
        return delivered and stats["queued"] == 3 and stats["sent"] == 3

    pid = _child(in_child)
    assert _wait(pid) == 0
    assert client.flush(10) is True
    client.close()
    kinds = sorted(event["type"] for event in server.events())
    assert kinds == ["child-event"] * 3 + ["parent-event"] * 5
    assert server.stats()["duplicates"] == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_fork_that_skips_the_at_fork_hooks_is_caught_by_the_pid_check(server: LocalServer, monkeypatch: Any) -> None:
    """uwsgi forks its workers without running ``os.register_at_fork`` hooks: ours are turned off here."""
    monkeypatch.setattr(registry_module, "_after_fork_in_child", lambda: None)
    monkeypatch.setattr(serialization_module, "_reseed_after_fork", lambda: None)
    client = SevenSegments(TOKEN, "parent", target=server.url, buffered=True, flush_interval=60)
    client.track("parent-event")
    assert client.flush(10)
    client.track("parent-queued")  # queued in the parent at the fork

    def in_child() -> bool:
        client.track("child-event", customer="child")
        return client.flush(10) and client.stats()["sent"] == 1

    pid = _child(in_child)
    assert _wait(pid) == 0
    assert client.flush(10)
    client.close()
    kinds = sorted(event["type"] for event in server.events())
    assert kinds == ["child-event", "parent-event", "parent-queued"]
    ids = [event["command_id"] for event in server.events()]
    assert len(set(ids)) == 3 and server.stats()["duplicates"] == 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multiprocessing_children_deliver_their_events(server: LocalServer) -> None:
    import multiprocessing

    client = SevenSegments(TOKEN, "parent", target=server.url, buffered=True, flush_interval=60)
    client.track("parent-event")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_mp_child, args=(client, index)) for index in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    client.close()
    kinds = sorted(event["type"] for event in server.events())
    assert kinds == ["child-event"] * 6 + ["parent-event"]


def _mp_child(client: SevenSegments, index: int) -> None:  # pragma: no cover - child
    client.track("child-event", customer=f"child-{index}")
    client.track("child-event", customer=f"child-{index}")
    # no flush, no close: multiprocessing ends children with os._exit, so atexit does not run


# --------------------------------------------------------------------------------------------
# exit

EXIT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(level=logging.WARNING)
    from seven_segments import SevenSegments
    url, count, shutdown = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    client = SevenSegments("exit-token", "john", target=url, buffered=True, shutdown_timeout=shutdown)
    for number in range(count):
        client.track("view", {"n": number})
    sys.stdout.write(repr(time.time()) + "\\n")
    sys.stdout.flush()
    # and simply end: no flush(), no close()
    """
)


def _pythons() -> List[str]:
    """This interpreter, and others named in SEVEN_SEGMENTS_TEST_PYTHONS (e.g. 3.12+, set up by .ci/run)."""
    found = [sys.executable]
    for name in os.environ.get("SEVEN_SEGMENTS_TEST_PYTHONS", "").split(os.pathsep):
        path = shutil.which(name) if name else None
        if path and path not in found:
            found.append(path)
    return found


def _version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def _run_exit_script(python: str, tmp_path: Path, url: str, count: int, shutdown: float) -> Dict[str, Any]:
    script = tmp_path / "track_and_end.py"
    script.write_text(EXIT_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [python, str(script), url, str(count), str(shutdown)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stdout, stderr = process.communicate(timeout=60)
    ended = time.time()
    assert stdout.strip(), stderr
    return {"code": process.returncode, "exit_seconds": ended - float(stdout.strip()), "stderr": stderr}


@pytest.mark.parametrize("python", _pythons(), ids=_version)
def test_a_script_that_tracks_and_simply_ends_delivers_everything(python: str, server: LocalServer, tmp_path: Path) -> None:
    result = _run_exit_script(python, tmp_path, server.url, 20_000, 10.0)
    assert result["code"] == 0, result["stderr"]
    assert len(server.events()) == 20_000
    assert "lost" not in result["stderr"]


@pytest.mark.parametrize("python", _pythons(), ids=_version)
def test_exit_with_the_server_down_ends_within_shutdown_timeout_and_reports_the_loss(
    python: str, dead_url: str, tmp_path: Path
) -> None:
    shutdown = 1.0
    result = _run_exit_script(python, tmp_path, dead_url, 1_000, shutdown)
    assert result["code"] == 0, result["stderr"]
    assert result["exit_seconds"] < shutdown + 1.0, result
    assert "1000 commands were lost at close" in result["stderr"]
    assert "exit-token" not in result["stderr"]

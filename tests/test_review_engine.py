"""Regression tests for defects found in a hostile review of the restructured buffered engine.

Each test failed on the code as reviewed (it was marked ``xfail(strict=True)`` until its fix, whose
commit removed the mark); a new finding comes in the same way.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from seven_segments import QueueFull, SevenSegments
from seven_segments.spool import inspect
from seven_segments.testing import LocalServer

TOKEN = "test-token-5f1c9d0e-secret"
NOWHERE = "http://127.0.0.1:9"


@pytest.mark.parametrize("setting", ["max_queue_size", "batch_size", "timeout", "retry_deadline", "flush_interval",
                                     "shutdown_timeout", "spool_max_bytes"])
def test_a_huge_integer_setting_is_refused_naming_the_setting(setting: str) -> None:
    with pytest.raises((TypeError, ValueError)) as refused:
        SevenSegments(TOKEN, target=NOWHERE, buffered=True, **{setting: 10**400})
    assert setting in str(refused.value)


@pytest.mark.parametrize("method", ["flush", "close"])
def test_a_huge_integer_timeout_is_refused_naming_it(method: str) -> None:
    client = SevenSegments(TOKEN, target=NOWHERE, buffered=True)
    try:
        with pytest.raises((TypeError, ValueError)) as refused:
            getattr(client, method)(10**400)
        assert "timeout" in str(refused.value)
    finally:
        client.close(0)


@pytest.mark.parametrize("target", [
    "https://user:hunter2-SECRET@api.example.com:99999",
    "ftp://user:hunter2-SECRET@api.example.com",
    "https://api.example.com/?company=hunter2-SECRET",
    "https://api.example.com/#hunter2-SECRET",
])
def test_a_refused_target_never_quotes_its_secrets(target: str) -> None:
    with pytest.raises(ValueError) as refused:
        SevenSegments(TOKEN, target=target)
    assert "hunter2-SECRET" not in str(refused.value)


def test_a_spooled_command_stays_on_disk_when_the_host_does_not_resolve(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.getaddrinfo

    def no_such_host(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "api.example.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    folder = os.path.join(os.fspath(tmp_path), "spool")
    client = SevenSegments(TOKEN, target="http://api.example.invalid", buffered=True, customer="c", spool=folder,
                           on_error=lambda error, commands: None)
    for _ in range(3):
        client.track("purchase")
    client.flush(5)
    client.close(1)
    assert inspect(folder).commands == 3  # for the next client on the folder, once the name resolves again


def test_an_empty_spool_folder_is_refused(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # private (0700): accepted, the spool would write its files here
    try:
        with pytest.raises(ValueError) as refused:
            SevenSegments(TOKEN, target=NOWHERE, buffered=True, spool="").close(0)
        assert "spool" in str(refused.value)
    finally:
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("setting", ["buffered", "gzip", "spool_fsync"])
def test_a_string_for_a_true_or_false_setting_is_refused_naming_it(setting: str) -> None:
    with pytest.raises(TypeError) as refused:
        SevenSegments(TOKEN, target=NOWHERE, **{setting: "false"}).close(0)
    assert setting in str(refused.value)


def test_a_command_dropped_by_a_closing_client_is_not_reported_as_queue_full(server: LocalServer) -> None:
    reports: list[Any] = []
    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True,
                           on_error=lambda error, commands: reports.append((error, commands)))
    client.track("view")
    core = client._engine._current()  # type: ignore[union-attr]
    core.begin_close()  # what exit (atexit, SIGTERM) does, while another thread still tracks
    client.track("late")
    core.finish_close()
    assert client.stats()["dropped_closed"] == 1 and client.stats()["dropped_queue_full"] == 0
    closed = [error for error, _ in reports if "closed" in str(error)]
    assert closed and not any(isinstance(error, QueueFull) for error in closed)


class _UwsgiMaster:
    """What ``sys.modules["uwsgi"]`` is in a uwsgi master that forks without the interpreter's hooks."""

    version = b"2.0.30"

    def __init__(self) -> None:
        self.opt: dict[str, Any] = {}

    @staticmethod
    def worker_id() -> int:
        return 0


def _our_threads() -> list[str]:
    import threading

    return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("seven-segments"))


def test_close_in_a_uwsgi_master_delivers_on_the_closing_thread(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import threading

    monkeypatch.setitem(sys.modules, "uwsgi", _UwsgiMaster())
    called_on: list[str] = []
    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True, shutdown_timeout=0.3,
                           on_error=lambda error, commands: called_on.append(threading.current_thread().name))
    client.track("view")
    server.faults.fail_next(10_000, status=503)
    try:
        client.close()
    finally:
        server.faults.clear()
    assert called_on == [threading.current_thread().name]


def test_a_client_dropped_in_a_uwsgi_master_starts_no_thread(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import gc
    import sys

    monkeypatch.setitem(sys.modules, "uwsgi", _UwsgiMaster())
    before = _our_threads()
    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True, shutdown_timeout=1.0)
    client.track("view")
    server.faults.delay_next(1, seconds=1.0)  # the delivery takes a while: any thread doing it is still there
    del client
    gc.collect()
    right_after = _our_threads()
    for _ in range(300):  # let a thread that did start finish before the server goes (at most 3 s)
        if _our_threads() == before:
            break
        time.sleep(0.01)
    assert right_after == before


def _spooled_by_a_dead_writer(folder: str, target: str, count: int) -> None:
    """``count`` commands left in ``folder`` by a writer that is gone (closed: its files unlocked)."""
    import json

    from seven_segments.spool import Spool

    writer = Spool(folder, target=target)
    for number in range(count):
        payload = {"name": "crm/events", "data": {
            "company_id": TOKEN, "customer_ids": {"registered": "c"}, "type": "view", "properties": {"n": number},
            "timestamp": 1_700_000_000 + number, "command_id": f"cmd-{number}"}}
        assert writer.append(json.dumps(payload).encode()) is not None
    assert writer.close() == count


def test_replaying_a_dead_writers_spool_keeps_within_the_queue_and_leaves_room_for_new_commands(
    server: LocalServer, tmp_path: os.PathLike[str]
) -> None:
    folder = os.path.join(os.fspath(tmp_path), "spool")
    _spooled_by_a_dead_writer(folder, server.url, 500)
    server.faults.fail_next(1_000_000, status=503)
    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True, spool=folder, max_queue_size=100,
                           retry_deadline=60, on_error=lambda error, commands: None)
    try:
        for _ in range(300):
            if client.stats()["replayed"]:
                break
            time.sleep(0.01)
        stats = client.stats()
        assert stats["replayed"] and stats["pending"] <= 100  # README: at most max_queue_size commands are held
        for _ in range(10):
            client.track("new")
        assert client.stats()["dropped_queue_full"] == 0
    finally:
        server.faults.clear()
        client.close(2)


def test_the_pump_does_not_spin_while_a_replay_waits_for_room(server: LocalServer, tmp_path: os.PathLike[str]) -> None:
    folder = os.path.join(os.fspath(tmp_path), "spool")
    _spooled_by_a_dead_writer(folder, server.url, 2500)  # a first chunk of replay fills more than half the queue
    server.latency = 2.0  # its first request stays in flight: no room to replay more meanwhile
    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True, spool=folder, max_queue_size=1500)
    try:
        for _ in range(300):
            if client.stats()["in_flight"]:
                break
            time.sleep(0.01)
        assert client.stats()["in_flight"]
        client.track("new")  # waits in the incoming queue until the dead writer's files are read
        started = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - started < 0.1  # this process sleeps; its pump should too
    finally:
        server.latency = 0.0
        client.close(0.5)

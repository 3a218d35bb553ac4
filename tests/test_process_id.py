"""The current process id, read once per process: right in the parent, in children and grandchildren."""

from __future__ import annotations

import os
from typing import Any, Iterator, List

import pytest

from seven_segments import process_id


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The module as in a process that never looked."""
    monkeypatch.setattr(process_id, "_PAGE", None)
    monkeypatch.setattr(process_id, "_looked", False)
    monkeypatch.setattr(process_id, "_pid", 0)
    yield


def test_it_is_this_processs_id(fresh: None) -> None:
    assert process_id.current_pid() == os.getpid() == process_id.current_pid()


def test_the_kernel_is_asked_only_in_a_process_forked_since_the_last_look(fresh: None, monkeypatch: Any) -> None:
    process_id.current_pid()
    if process_id._PAGE is None:
        pytest.skip("no page wiped on fork on this system")
    asked: List[int] = []
    real = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: asked.append(1) or real())
    for _ in range(100):
        assert process_id.current_pid() == real()
    assert asked == []  # the page said: no fork since the last look


def test_a_page_the_kernel_does_not_list_as_wiped_on_fork_is_not_trusted(fresh: None, monkeypatch: Any) -> None:
    """An emulator (qemu-user) accepts MADV_WIPEONFORK and ignores it: the smaps flag decides."""
    monkeypatch.setattr(process_id, "_listed_as_wiped_on_fork", lambda page: False)
    assert process_id.fork_watching_page() is None
    asked: List[int] = []
    real = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: asked.append(1) or real())
    assert process_id.current_pid() == real() and process_id.current_pid() == real()
    assert len(asked) == 2  # every look asks


def test_without_the_advice_every_look_asks(fresh: None, monkeypatch: Any) -> None:
    monkeypatch.setattr(process_id, "_WIPE_ON_FORK", None)
    assert process_id.fork_watching_page() is None
    assert process_id.current_pid() == os.getpid() and process_id._PAGE is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_children_and_grandchildren_see_their_own_id_without_any_fork_hook(fresh: None) -> None:
    """os.fork() here runs the interpreter's at-fork hooks, but the page does not need them (uwsgi
    forks without them): the kernel clears it in every child."""
    assert process_id.current_pid() == os.getpid()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        try:
            mine = [process_id.current_pid() == os.getpid(), process_id.current_pid() == os.getpid()]
            grandchild = os.fork()
            if grandchild == 0:
                os.write(write, b"1" if process_id.current_pid() == os.getpid() else b"0")
                os._exit(0)
            os.waitpid(grandchild, 0)
            os.write(write, b"1" if all(mine) else b"0")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"11"
    assert process_id.current_pid() == os.getpid()

"""The current process id, read once per process: right in the parent, in children and grandchildren."""

from __future__ import annotations

import os
import sys
from typing import Any, List

import pytest

from seven_segments import process_id

needs_the_page = pytest.mark.skipif(process_id._PAGE is None, reason="no MADV_WIPEONFORK page on this system")


def test_it_is_this_processs_id() -> None:
    assert process_id.current_pid() == os.getpid()


@needs_the_page
def test_the_kernel_is_asked_only_in_a_process_forked_since_the_last_look(monkeypatch: Any) -> None:
    asked: List[int] = []
    real = os.getpid
    monkeypatch.setattr(os, "getpid", lambda: asked.append(1) or real())
    for _ in range(100):
        assert process_id.current_pid() == real()
    assert asked == []  # the page said: no fork since the last look


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_children_and_grandchildren_see_their_own_id_without_any_fork_hook() -> None:
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


def test_without_the_page_it_is_os_getpid(monkeypatch: Any) -> None:
    monkeypatch.setattr(process_id, "_WIPE_ON_FORK", None)
    assert process_id.fork_watching_page() is None
    if sys.platform.startswith("linux"):
        monkeypatch.undo()
        page = process_id.fork_watching_page()
        assert page is not None and page[0] == 1
        page.close()

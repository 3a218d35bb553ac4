"""Shared fixtures: a fresh local server per test, and a URL where nothing listens."""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

# Import the package from this checkout even when it is not installed in the venv.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from seven_segments import SevenSegmentsError
from seven_segments.testing import LocalServer

TOKEN = "test-token-5f1c9d0e-secret"


@pytest.fixture
def server() -> Iterator[LocalServer]:
    """A fresh LocalServer on 127.0.0.1 for one test."""
    with LocalServer() as local_server:
        yield local_server


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LocalServer]:
    """One LocalServer for a whole test module (see ``fresh``)."""
    with LocalServer() as local_server:
        yield local_server


@pytest.fixture
def fresh(shared_server: LocalServer) -> LocalServer:
    """The module's server, emptied for this test: cheaper than a new one per test."""
    shared_server.reset()
    return shared_server


#: What an ``on_error`` callback receives: the error and the commands.
Report = Tuple[SevenSegmentsError, List[Dict[str, Any]]]


def collector() -> Tuple[List[Report], Any]:
    """A list of what ``on_error`` reported, and the callback that fills it."""
    reports: List[Report] = []
    return reports, lambda error, commands: reports.append((error, commands))


@pytest.fixture
def dead_url() -> str:
    """A loopback URL on a port that was free a moment ago: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def exit_code(wait_status: int) -> int:
    """The exit code of a waited-for child (``os.waitstatus_to_exitcode`` before Python 3.9)."""
    if hasattr(os, "waitstatus_to_exitcode"):
        return int(os.waitstatus_to_exitcode(wait_status))
    if os.WIFSIGNALED(wait_status):
        return -os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Poll a condition of a running client or server (1 ms steps, bounded); its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.001)
    return bool(predicate())

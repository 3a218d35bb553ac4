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

#: Modules whose tests start real web servers, interpreters, builds or benchmarks: marked ``slow``,
#: so that ``pytest -m "not slow"`` is the quick loop while working (CI runs everything). Elsewhere, a
#: test that starts an interpreter or waits long in real time carries ``@pytest.mark.slow`` itself.
SLOW_MODULES = frozenset({
    "test_benchmarks_smoke", "test_demo", "test_deployment", "test_deployment_customers", "test_import_kill",
    "test_packaging", "test_process_life", "test_server_cli", "test_typing",
})


#: Whether this run is the quick loop (``-m "not slow"``); set before the test modules are imported.
QUICK_LOOP = False


def pytest_configure(config: pytest.Config) -> None:
    """Note whether slow tests are left out (see ``examples``)."""
    global QUICK_LOOP
    QUICK_LOOP = "not slow" in (config.getoption("markexpr", "") or "")


def examples(count: int) -> int:
    """Hypothesis examples for a property test: ``count`` in the whole suite (CI, the README's
    command), a fifth of it (at least 30) in the quick loop, where the same properties are only
    sampled more thinly."""
    return max(30, count // 5) if QUICK_LOOP else count


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Mark the tests of ``SLOW_MODULES`` ``slow``."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


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


class Witness:
    """Another host, as a redirect would name it: a real HTTP listener on loopback that records every
    connection and every byte it receives, and answers each request with a success (so that a
    client following a redirect there would believe it delivered)."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        witness = self
        self.connections = 0
        self.received = bytearray()
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with witness._lock:
                    witness.received += self.requestline.encode() + bytes(self.headers) + body
                commands = body.count(b'"company_id"')
                answer = ('{"success": true, "data": "", "results": [%s]}'
                          % ", ".join(['{"status": "ok"}'] * commands)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def verify_request(self, request: Any, client_address: Any) -> bool:
                with witness._lock:
                    witness.connections += 1
                return True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def witness() -> Iterator[Witness]:
    """A second HTTP listener on loopback that counts the connections and bytes it gets."""
    listener = Witness()
    try:
        yield listener
    finally:
        listener.close()

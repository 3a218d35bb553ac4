"""Start the servers a scenario talks to: the counting sink, our local server, or a closed port.

Each server runs in a child process of the scenario runner and is driven over its stdin/stdout
(see :mod:`sink`), so it costs the measured process no CPU and no GIL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def closed_port_url() -> str:
    """A loopback URL where nothing listens: bind a port, then release it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


class Server:
    """A running sink (``kind="sink"``) or local 7SEGMENTS server (``kind="ours"``)."""

    def __init__(self, kind: str, start_timeout: float = 20.0, latency: float = 0.0) -> None:
        script = "ours_server.py" if kind == "ours" else "sink.py"
        self.latency = latency
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        self.kind = kind
        self._errors = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / script)] + (["--latency", repr(latency)] if latency else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            text=True,
            env=env,
            cwd=str(REPO),
        )
        line = self._readline(start_timeout)
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"{script} did not start: {line!r} {self._stderr()}")
        self.url = line.split()[1]

    def _readline(self, timeout: float) -> str:
        import selectors

        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise TimeoutError("server did not answer in time")
        return self.process.stdout.readline().strip()

    def _stderr(self) -> str:
        try:
            self._errors.seek(0)
            return self._errors.read()[-2000:]
        except Exception:
            return ""

    def command(self, text: str, timeout: float = 10.0) -> Dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        line = self._readline(timeout)
        if not line:
            raise RuntimeError(f"server exited: {self._stderr()}")
        return json.loads(line)

    def stats(self, lib: str) -> Dict[str, Any]:
        empty = {"received": 0, "unique": 0, "duplicates": 0, "requests": 0, "last_event_at": 0.0}
        return self.command("stats").get(lib, empty)

    def wait(self, lib: str, n: int, timeout: float, stall: float) -> Dict[str, Any]:
        """Wait until the server holds ``n`` unique events of ``lib`` (or timeout, or a stall)."""
        return self.command(f"wait {lib} {n} {timeout} {stall}", timeout=timeout + 10)

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except Exception:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: Set by ``runner.py --server sink`` to measure our client against the sink instead.
PREFER_LOCAL_SERVER = True


def start_for(lib: str, latency: float = 0.0) -> Server:
    """Our client (and the naive ``bulk`` clients) talk to the local server's counting-only mode; the
    peers talk to the sink.

    When the local server cannot start (not importable yet, or broken), our client falls back to the
    sink, which also speaks the 7SEGMENTS ``/bulk`` protocol; ``Server.kind`` says which it was.
    ``latency`` delays every answer of either server by that many seconds (``LocalServer(latency=...)``,
    ``sink.py --latency``).
    """
    if lib in ("ours", "floors", "floor_bulk", "floor_bulk_orjson") and PREFER_LOCAL_SERVER:
        try:
            return Server("ours", latency=latency)
        except Exception as exc:  # reported in the results as server="sink"
            print(f"local server unavailable, using the sink: {exc}", file=sys.stderr)
    return Server("sink", latency=latency)


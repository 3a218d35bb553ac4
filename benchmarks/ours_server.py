"""Run the project's local 7SEGMENTS server in counting-only mode behind the sink's control protocol.

Our client is measured against ``seven_segments.testing.LocalServer(counting_only=True)``, in its own
process, so that the server's CPU never counts against the client. This wrapper starts it, prints
``READY URL`` and then answers the same stdin commands as :mod:`sink` (``stats``, ``wait LIB N TIMEOUT
STALL``), reporting the server's counts under the library name ``ours``. ``--latency SECONDS`` starts
``LocalServer(counting_only=True, latency=SECONDS)``: every API answer is delayed by that long.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Dict


class Watcher:
    """Polls the server's counts and remembers when the event count last grew."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.events = 0
        self.last_event_at = 0.0

    def poll(self) -> Dict[str, Any]:
        raw = dict(self.server.stats())
        events = int(raw.get("events", 0)) + int(raw.get("customer_updates", 0) or 0)
        with self.lock:
            if events > self.events:
                self.events = events
                self.last_event_at = time.time()
            unique = self.events
            last = self.last_event_at
        duplicates = int(raw.get("duplicates", 0) or 0)
        return {
            "received": unique + duplicates,
            "unique": unique,
            "duplicates": duplicates,
            "requests": int(raw.get("requests", 0) or 0),
            "last_event_at": last,
            "raw": raw,
        }

    def run(self, stop: threading.Event) -> None:
        """Keep ``last_event_at`` precise to about 2 ms between control commands."""
        while not stop.wait(0.002):
            self.poll()

    def wait(self, n: int, timeout: float, stall: float) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        last_unique, last_change = -1, time.monotonic()
        while True:
            stats = self.poll()
            now = time.monotonic()
            if stats["unique"] != last_unique:
                last_unique, last_change = stats["unique"], now
            if stats["unique"] >= n or now >= deadline or now - last_change >= stall:
                return dict(stats, reached=stats["unique"] >= n)
            time.sleep(0.002)


def main() -> int:
    import argparse

    from seven_segments.testing import LocalServer

    parser = argparse.ArgumentParser(description="the local server, counting only, behind the sink's control protocol")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every API answer by this many seconds")
    args = parser.parse_args()
    options: Dict[str, Any] = {"latency": args.latency} if args.latency else {}
    with LocalServer(counting_only=True, **options) as server:
        watcher = Watcher(server)
        stop = threading.Event()
        threading.Thread(target=watcher.run, args=(stop,), daemon=True).start()
        print(f"READY {server.url.rstrip('/')}", flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "stats":
                answer: Dict[str, Any] = {"ours": watcher.poll()}
            elif words[0] == "wait":
                answer = watcher.wait(int(words[2]), float(words[3]), float(words[4]))
            else:
                answer = {"error": f"unknown command {words[0]}"}
            print(json.dumps(answer), flush=True)
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory per queued command while the API is down, measured with ``tracemalloc``.

``python benchmarks/queued_memory.py [--n 20000] [--base DIR] [--no-orjson]``

A buffered client points at a closed port (every attempt fails at once; ``retry_deadline`` is long,
so nothing is given up), tracks ``--n`` commands of the 6-property event of ``cpu_per_event.py``, and
waits until its worker has taken them all; the memory traced since just before the first call,
divided by ``--n``, is the cost of one queued command, shown beside the size of its JSON as it goes
into a ``bulk`` body. Each client runs in its own process; ``--base DIR`` also runs the client of
another checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

HERE = Path(__file__).resolve().parent
PROPERTIES = {"product": "bottle", "amount": 5, "price": 12.5, "currency": "EUR", "first": True, "coupon": None}


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def child(n: int) -> Dict[str, Any]:
    """One measurement in this process (``seven_segments`` from ``sys.path``)."""
    import gc
    import tracemalloc

    from seven_segments import SevenSegments
    from seven_segments.serialization import BulkCommandEncoder, new_command_id

    client = SevenSegments(
        "memory-token", "john123", target=_closed_port_url(), buffered=True, retry_deadline=3600,
        max_queue_size=10 * n, shutdown_timeout=0,
    )
    for _ in range(10):  # the worker and its first attempts exist before the baseline
        client.track("purchase", dict(PROPERTIES))
    time.sleep(0.5)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(n):
        client.track("purchase", dict(PROPERTIES))
    deadline = time.monotonic() + 60
    engine = getattr(client, "_engine", None) or getattr(client, "_worker")  # the engine's name before 0.1.0's split
    while client.stats()["queued"] - client.stats()["pending"] > 0 or engine._core.incoming:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    time.sleep(0.3)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    stats = client.stats()
    command = ("crm/events", {"registered": "john123"}, "purchase", dict(PROPERTIES), time.time(), new_command_id())
    size = len(BulkCommandEncoder("memory-token").encode(command))
    client.close(0)
    return {"per_command": (after - before) / n, "json": size, "pending": stats["pending"], "dropped": stats["dropped"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--base", default="", help="also measure the client of this checkout")
    parser.add_argument("--no-orjson", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.no_orjson:
        sys.modules["orjson"] = None  # type: ignore[assignment]
    if options.child:
        print("RESULT " + json.dumps(child(options.n)))
        return
    print("| client | bytes per queued command | its JSON | beyond its JSON | pending | dropped |")
    print("|---|---|---|---|---|---|")
    for name, root in [("this tree", str(HERE.parent))] + ([("base", options.base)] if options.base else []):
        argv = [sys.executable, __file__, "--child", "--n", str(options.n)] + (["--no-orjson"] if options.no_orjson else [])
        environment = dict(os.environ, PYTHONPATH=root)
        out = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300, cwd=root)
        line = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
        if not line:
            print(f"| {name} | failed: {out.stderr.strip()[-300:]} |")
            continue
        result = json.loads(line[-1][7:])
        print(
            f"| {name} | {result['per_command']:.0f} | {result['json']} | {result['per_command'] - result['json']:.0f}"
            f" | {result['pending']} | {result['dropped']} |"
        )


if __name__ == "__main__":
    main()

"""What the durable spool costs: caller cost of ``track`` and delivery, with and without ``spool=``.

    python benchmarks/spool.py [--rounds 3] [--n 100000] [--calls 20000] [--json FILE]

Our client only, with the interpreter that runs this script. The caller's cost is taken in one
process per round and thread count, with both clients (one without a spool, one with) called in
alternating blocks of 500 calls, so that the machine's swings fall on both alike (on a shared
machine the same loop can run twice as slowly for seconds at a time). Each delivery runs in its
own process, variants alternating within every round; it is timed from the first ``track`` until
the local server (its own process, counting only) holds every event. The table gives medians over
the rounds and the ratio with / without a spool.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent

CALLER = """
import json, sys, tempfile, threading
from time import perf_counter_ns as clock
from seven_segments import SevenSegments
threads, calls = int(sys.argv[1]), int(sys.argv[2])
folder = tempfile.mkdtemp(prefix="bench-spool-")
options = dict(target="http://127.0.0.1:9", buffered=True, max_queue_size=10**7, max_queue_bytes=2**33)
clients = {
    "plain": SevenSegments("bench-token", "john", **options),
    "spool": SevenSegments("bench-token", "john", spool=folder + "/s", spool_max_bytes=2**33, **options),
}
BLOCK = 500  # calls of one client, then of the other: the machine's swings fall on both
samples = {name: [] for name in clients}
done = threading.Lock()
def run():
    properties = {"product": "bottle", "amount": 5}
    mine = {name: [] for name in clients}
    for client in clients.values():
        for _ in range(500):
            client.track("warmup", properties)
    for block in range(2 * calls // BLOCK):
        name = ("plain", "spool")[block % 2]
        track, out = clients[name].track, mine[name]
        for _ in range(BLOCK):
            started = clock(); track("purchase", properties); out.append(clock() - started)
    with done:
        for name in mine:
            samples[name].extend(mine[name])
workers = [threading.Thread(target=run) for _ in range(threads)]
for worker in workers: worker.start()
for worker in workers: worker.join()
figures = {}
for name, mine in samples.items():
    mine.sort()
    figures[name] = {"median": mine[len(mine) // 2] / 1000, "p99": mine[int(len(mine) * 0.99)] / 1000}
print(json.dumps(figures))
for client in clients.values(): client.close(0)
import shutil; shutil.rmtree(folder, ignore_errors=True)
"""

DELIVERY = """
import json, sys, tempfile, time, urllib.request
from seven_segments import SevenSegments
spool, url, n = sys.argv[1] == "spool", sys.argv[2], int(sys.argv[3])
folder = tempfile.mkdtemp(prefix="bench-spool-")
kw = {"spool": folder + "/s"} if spool else {}
client = SevenSegments("bench-token", "john", target=url, buffered=True, **kw)
started, cpu = time.perf_counter(), time.process_time()
for number in range(n):
    client.track("purchase", {"product": "bottle", "amount": 5, "n": number})
assert client.flush(120)
seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
stats = client.stats()
client.close()
print(json.dumps({"events_s": n / seconds, "cpu_us": cpu / n * 1e6, "sent": stats["sent"]}))
import shutil; shutil.rmtree(folder, ignore_errors=True)
"""


def run_child(source: str, *args: str) -> Dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server() -> "tuple[subprocess.Popen[bytes], str]":
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "seven_segments", "serve", "--counting-only", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/_local/stats", timeout=1).read()
            return server, url
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("the local server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000, help="events per delivery run")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per thread")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    figures: Dict[str, Dict[str, List[float]]] = {"plain": {}, "spool": {}}
    for _ in range(args.rounds):
        for threads in (1, 4):
            caller = run_child(CALLER, str(threads), str(args.calls))
            for variant, mine in figures.items():
                mine.setdefault(f"caller {threads}: median µs", []).append(caller[variant]["median"])
                mine.setdefault(f"caller {threads}: p99 µs", []).append(caller[variant]["p99"])
        for variant in ("plain", "spool"):
            mine = figures[variant]
            server, url = start_server()
            try:
                delivery = run_child(DELIVERY, variant, url, str(args.n))
            finally:
                server.terminate()
                server.wait(10)
            mine.setdefault("delivery: events/s", []).append(delivery["events_s"])
            mine.setdefault("delivery: CPU µs per event", []).append(delivery["cpu_us"])
    print(f"## The durable spool ({args.rounds} rounds, medians; Python {sys.version.split()[0]})\n")
    print("| figure | without a spool | with `spool=` | with / without |")
    print("|---|---|---|---|")
    for figure in figures["plain"]:
        plain, spool = statistics.median(figures["plain"][figure]), statistics.median(figures["spool"][figure])
        print(f"| {figure} | {plain:,.2f} | {spool:,.2f} | {spool / plain:.2f}× |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

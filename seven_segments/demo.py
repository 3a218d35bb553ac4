"""``./seven_segments.py demo``: the buffered client under faults, on the local server.

A ``LocalServer`` runs in its own process (so that the figures are the client's, not the server's),
with random faults of every passing kind docs/protocol.md names (500, 503, 429 with ``Retry-After``,
connections dropped before and after applying, per-command ``retry``). Several threads track events
through one buffered client; then the demo flushes, asks the server what it stored, and prints a
table. It exits 0 only when every event arrived exactly once and nothing was dropped or failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import requests

if TYPE_CHECKING:
    from .client import SevenSegments

__all__ = ["add_arguments", "run", "run_demo"]

DEMO_TOKEN = "demo-company-token"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's options."""
    parser.add_argument("--threads", type=int, default=4, help="producer threads (default: 4)")
    parser.add_argument("--events", type=int, default=10_000, help="events per thread (default: 10000)")
    parser.add_argument("--fault-rate", type=float, default=0.1, help="share of requests that fail (default: 0.1)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the faults (default: 7)")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for delivery, seconds (default: 120)")


def _serve(connection: Any, stop: Any) -> None:
    """Child process: run a LocalServer, send its URL, serve until told to stop."""
    from .testing import LocalServer

    with LocalServer() as server:
        connection.send(server.url)
        stop.wait()


def _percentile(sorted_values: List[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * (len(sorted_values) - 1)))))
    return sorted_values[index]


@contextmanager
def _server_in_a_process() -> Iterator[str]:
    """A ``LocalServer`` in a spawned process: yields its URL, and stops it on the way out."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    stop = context.Event()
    server_process = context.Process(target=_serve, args=(child_end, stop), daemon=True)
    server_process.start()
    try:
        if not parent_end.poll(30):
            raise RuntimeError("the local server did not start within 30 s")
        yield parent_end.recv()
    finally:
        stop.set()
        server_process.join(10)
        if server_process.is_alive():
            server_process.kill()


def _track_from_threads(client: "SevenSegments", threads: int, events: int) -> Tuple[List[float], float]:
    """``threads`` threads track ``events`` events each, all starting at once; returns the time each
    ``track`` took, sorted, and when they started (``time.perf_counter``)."""
    costs: List[List[float]] = [[] for _ in range(threads)]
    start_line = threading.Barrier(threads + 1)

    def produce(index: int) -> None:
        mine = costs[index]
        clock = time.perf_counter
        track = client.track
        start_line.wait()
        for number in range(events):
            before = clock()
            track("page_view", {"thread": index, "n": number, "path": "/products"}, customer=f"user-{index}-{number % 50}")
            mine.append(clock() - before)

    producers = [threading.Thread(target=produce, args=(index,)) for index in range(threads)]
    for producer in producers:
        producer.start()
    start_line.wait()
    began = time.perf_counter()
    for producer in producers:
        producer.join()
    return sorted(cost for thread_costs in costs for cost in thread_costs), began


def _figures(
    tracked: int, stats: Dict[str, float], server_stats: Dict[str, Any], all_costs: List[float], elapsed: float
) -> Dict[str, Any]:
    """The table the demo prints."""
    return {
        "events tracked": tracked,
        "events stored by the server": server_stats["events"],
        "duplicates suppressed (command_id)": server_stats["duplicates"],
        "faults injected": server_stats["faults_injected"],
        "commands retried": stats["retried"],
        "dropped": stats["dropped"],
        "failed": stats["failed"],
        "caller cost p50 (us)": round(_percentile(all_costs, 0.5) * 1e6, 2),
        "caller cost p99 (us)": round(_percentile(all_costs, 0.99) * 1e6, 2),
        "events per second (first track to flushed)": int(tracked / elapsed),
    }


def run_demo(threads: int, events: int, fault_rate: float, seed: int, timeout: float) -> Tuple[bool, Dict[str, Any]]:
    """Run the demo; returns ``(nothing lost, figures)``."""
    from .client import SevenSegments

    with _server_in_a_process() as url:
        http = requests.Session()
        http.post(
            f"{url}/_local/faults",
            json={"action": "random", "rate": fault_rate, "seed": seed, "retry_after": 0.05},
            timeout=10,
        ).raise_for_status()
        client = SevenSegments(DEMO_TOKEN, target=url, buffered=True, flush_interval=0.1)
        all_costs, began = _track_from_threads(client, threads, events)
        delivered_all = client.flush(timeout)
        elapsed = time.perf_counter() - began
        stats = client.stats()
        client.close()
        server_stats = http.get(f"{url}/_local/stats", timeout=10).json()["stats"]
        tracked = threads * events
        nothing_lost = (
            delivered_all
            and server_stats["events"] == tracked
            and stats["dropped"] == 0
            and stats["failed"] == 0
        )
        return nothing_lost, _figures(tracked, stats, server_stats, all_costs, elapsed)


def run(args: argparse.Namespace) -> int:
    """The ``demo`` command: print the table; 0 when nothing was lost, 1 otherwise."""
    if args.threads < 1 or args.events < 1:
        raise ValueError(f"--threads and --events must be at least 1, not {args.threads} and {args.events}")
    if not 0 <= args.fault_rate < 1:
        raise ValueError(f"--fault-rate must be in [0, 1), not {args.fault_rate}")
    sys.stdout.write(
        f"demo: {args.threads} threads x {args.events} events through a buffered client, "
        f"{args.fault_rate:.0%} of requests failing on purpose...\n"
    )
    sys.stdout.flush()
    nothing_lost, figures = run_demo(args.threads, args.events, args.fault_rate, args.seed, args.timeout)
    width = max(len(name) for name in figures)
    sys.stdout.write(f"\n| {'figure'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|\n")
    for name, value in figures.items():
        sys.stdout.write(f"| {name.ljust(width)} | {value} |\n")
    verdict = "nothing lost: every event arrived exactly once" if nothing_lost else "LOSS: some events did not arrive"
    sys.stdout.write(f"\n{verdict}\n")
    return 0 if nothing_lost else 1


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo on its own."""
    parser = argparse.ArgumentParser(prog="seven_segments demo")
    add_arguments(parser)
    return run(parser.parse_args(argv))

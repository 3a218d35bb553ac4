"""Measure how many events per second the local server validates and stores through ``bulk``.

``python -m seven_segments.testing.loadtest [--events 200000] [--batch 1000] [--connections 2] [--counting-only]
[--gzip]``
starts a :class:`LocalServer` in this process and sends pre-built bulk bodies from separate sender
processes (one per connection, ``http.client`` over keep-alive, so that the client side costs as
little as possible and does not share the server's GIL), checks that every result is ``ok`` and
prints events/s. ``--gzip`` sends the bodies gzipped at level 1, as the client does.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import time
import zlib
from typing import Any, List, Optional, Sequence, Tuple

from .server import LocalServer


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()


def _bodies(events: int, batch: int) -> List[bytes]:
    bodies = []
    now = time.time()
    for start in range(0, events, batch):
        commands = [
            {
                "name": "crm/events",
                "data": {
                    "company_id": "load-test-company",
                    "customer_ids": {"registered": f"customer-{index % 5000}"},
                    "type": "purchase",
                    "properties": {"product": "bottle", "amount": index % 7, "price": 9.99},
                    "timestamp": now + index / 1000.0,
                    "command_id": f"cmd-{index}",
                },
            }
            for index in range(start, min(start + batch, events))
        ]
        bodies.append(json.dumps({"commands": commands}).encode("utf-8"))
    return bodies


def _send(
    port: int, events: int, batch: int, part: int, parts: int, start: Any, failures: Any, gzip: bool = False
) -> None:
    bodies = _bodies(events, batch)[part::parts]
    headers = {"Content-Type": "application/json"}
    if gzip:
        bodies = [_gzip(body) for body in bodies]
        headers["Content-Encoding"] = "gzip"
    connection = http.client.HTTPConnection("127.0.0.1", port)
    start.wait()
    try:
        for body in bodies:
            connection.request("POST", "/bulk", body, headers)
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status != 200 or any(result["status"] != "ok" for result in answer["results"]):
                failures.put(f"HTTP {response.status}")
    finally:
        connection.close()


def measure(
    events: int = 200_000, batch: int = 1000, connections: int = 2, counting_only: bool = False, gzip: bool = False
) -> Tuple[float, float]:
    """Events per second stored (or counted) by a fresh in-memory server, by wall clock and per second of the
    server process's CPU time (the figure on an otherwise idle core); ``RuntimeError`` on failures."""
    context = multiprocessing.get_context("spawn")
    failures = context.Queue()
    start = context.Event()
    with LocalServer(counting_only=counting_only) as server:
        senders = [
            context.Process(target=_send, args=(server.port, events, batch, index, connections, start, failures, gzip))
            for index in range(connections)
        ]
        for sender in senders:
            sender.start()
        time.sleep(max(1.0, events / 100_000))  # let the senders build their bodies
        started = time.perf_counter()
        cpu_started = time.process_time()
        start.set()
        for sender in senders:
            sender.join()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        accepted = server.stats()["events"]
    failed = 0
    while not failures.empty():
        failures.get()
        failed += 1
    if failed or accepted != events:
        raise RuntimeError(f"{failed} failed requests, {accepted} of {events} events accepted")
    return events / elapsed, events / cpu


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; prints the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--counting-only", action="store_true")
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies (level 1, as the client does)")
    args = parser.parse_args(argv)
    rate, per_cpu = measure(args.events, args.batch, args.connections, args.counting_only, args.gzip)
    mode = "counted (counting only)" if args.counting_only else "validated and stored"
    print(  # noqa: T201 - CLI output
        f"{rate:,.0f} events/s {mode} ({per_cpu:,.0f} per server CPU second), "
        f"{args.events} events in bulks of {args.batch}{' gzipped' if args.gzip else ''} over {args.connections} connections"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

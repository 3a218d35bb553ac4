"""A/B of a buffered client's ``track`` on the caller's thread: this tree against a git revision, in one process.

``python benchmarks/caller_ab.py [--rev main] [--rounds 200] [--block 500] [--no-orjson]``

The revision's ``seven_segments`` is extracted (``git archive``) and imported under another name (as
``customer_context_ab.py`` does), so both clients run in the same interpreter; with ``--no-orjson``,
``orjson`` is made unimportable first, so both write with the standard library. Each round times one
block of ``--block`` calls of each client, alternating which goes first, every call timed on its
own (``perf_counter_ns``), then flushes both (outside the timing; a block is under a batch, so
nothing is sent during one). The event is the 6-property event of ``cpu_per_event.py``. The table
shows, per client, the median of all calls and the median of the rounds' means, in µs, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PROPERTIES = {"product": "bottle", "amount": 5, "price": 12.5, "currency": "EUR", "first": True, "coupon": None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--no-orjson", action="store_true", help="make orjson unimportable first")
    options = parser.parse_args()
    if options.no_orjson:
        sys.modules["orjson"] = None  # type: ignore[assignment]

    from customer_context_ab import revision_package

    import seven_segments as ours
    from seven_segments.testing import LocalServer

    with tempfile.TemporaryDirectory() as folder, LocalServer(counting_only=True) as server:
        base = revision_package(options.rev, Path(folder))
        clients = {
            options.rev: base.SevenSegments("ab-token", "john123", target=server.url, buffered=True, flush_interval=60),
            "this tree": ours.SevenSegments("ab-token", "john123", target=server.url, buffered=True, flush_interval=60),
        }
        calls: Dict[str, List[float]] = {name: [] for name in clients}
        means: Dict[str, List[float]] = {name: [] for name in clients}
        clock = time.perf_counter_ns
        names = list(clients)
        for number in range(options.rounds + 1):
            for name in names if number % 2 == 0 else names[::-1]:
                track = clients[name].track
                spent = []
                for _ in range(options.block):
                    started = clock()
                    track("purchase", PROPERTIES)
                    spent.append((clock() - started) / 1000)
                if number:  # the first round warms up
                    calls[name] += spent
                    means[name].append(sum(spent) / len(spent))
            for client in clients.values():
                client.flush(10)
        writer = "json" if options.no_orjson else "orjson if installed"
        print(f"track (buffered, 6 properties, {writer}), {options.rounds} rounds of {options.block} calls per client")
        print("| client | median call (µs) | median of round means (µs) | ratio to " + options.rev + " |")
        print("|---|---|---|---|")
        reference = statistics.median(calls[options.rev])
        for name in names:
            median = statistics.median(calls[name])
            print(f"| {name} | {median:.3f} | {statistics.median(means[name]):.3f} | {median / reference:.2f} |")
        for client in clients.values():
            client.close(10)


if __name__ == "__main__":
    main()

"""A/B of a buffered client's ``track`` on the caller's thread: this tree against a git revision, in one process.

``python benchmarks/caller_ab.py [--rev main] [--rounds 200] [--block 500] [--no-orjson]``

The revision's ``seven_segments`` is extracted (``git archive``) and imported under another name (as
``customer_context_ab.py`` does), so both clients run in the same interpreter; with ``--no-orjson``,
``orjson`` is made unimportable first, so both write with the standard library. Each round times one
block of ``--block`` calls of each client, alternating which goes first, every call timed on its
own (``perf_counter_ns``), then flushes both (outside the timing; a block is under a batch, so
nothing is sent during one). The event is the 6-property event of ``cpu_per_event.py``. The table
shows, per client, the median of all calls and the median of the rounds' means, in µs, their ratio,
and the quartiles of the ratio of the two clients' medians round by round (how noisy the machine was).
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
        rounds = _timed_rounds(clients, options.rounds, options.block)
        writer = "json" if options.no_orjson else "orjson if installed"
        print(f"track (buffered, 6 properties, {writer}), {options.rounds} rounds of {options.block} calls per client")
        _print_table(rounds, options.rev)
        for client in clients.values():
            client.close(10)


def _timed_rounds(clients: Dict[str, Any], rounds: int, block: int) -> Dict[str, List[List[float]]]:
    """Per client, the calls' times (µs) of each round, the clients alternating which goes first."""
    timed: Dict[str, List[List[float]]] = {name: [] for name in clients}
    clock = time.perf_counter_ns
    names = list(clients)
    for number in range(rounds + 1):
        for name in names if number % 2 == 0 else names[::-1]:
            track = clients[name].track
            spent = []
            for _ in range(block):
                started = clock()
                track("purchase", PROPERTIES)
                spent.append((clock() - started) / 1000)
            if number:  # the first round warms up
                timed[name].append(spent)
        for client in clients.values():
            client.flush(10)
    return timed


def _print_table(rounds: Dict[str, List[List[float]]], reference_name: str) -> None:
    """The medians, their ratio, and how noisy the ratio is from round to round (quartiles of the
    ratios of the rounds' medians)."""
    print("| client | median call (µs) | median of round means (µs) | ratio to " + reference_name
          + " | ratio per round: quartiles |")
    print("|---|---|---|---|---|")
    reference = statistics.median(call for spent in rounds[reference_name] for call in spent)
    reference_rounds = [statistics.median(spent) for spent in rounds[reference_name]]
    for name, timed in rounds.items():
        median = statistics.median(call for spent in timed for call in spent)
        mean = statistics.median(sum(spent) / len(spent) for spent in timed)
        ratios = [statistics.median(spent) / base for spent, base in zip(timed, reference_rounds)]
        low, middle, high = statistics.quantiles(ratios, n=4)
        print(f"| {name} | {median:.3f} | {mean:.3f} | {median / reference:.2f} | {low:.2f} / {middle:.2f} / {high:.2f} |")


if __name__ == "__main__":
    main()

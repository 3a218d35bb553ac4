"""A/B of ``track``'s caller cost: this working tree against a git revision (default ``main``), in one process.

``python benchmarks/customer_context_ab.py [--rev main] [--rounds 300] [--block 500] [--mode buffered|disabled]``

The revision's ``seven_segments`` is extracted (``git archive``) and imported under another name, so
both run in the same interpreter. Each round times one block of ``--block`` calls of every arm, in
turn (alternating blocks: a noisy neighbour hits every arm alike), then flushes; the table shows each
arm's median over the rounds of the mean time per call, in µs, and its difference from the
reference arm named in the last column.

Arms: the identified customer (no ``customer=``), ``customer=`` on each call, and (this tree only)
inside ``customer_context``, and an identified client whose ``customer_context`` was used once,
called outside any. ``buffered`` mode delivers to an in-process ``LocalServer(counting_only=True)``;
``disabled`` (``enabled=False``) leaves out the queue and the sender thread: only the caller's work.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def revision_package(rev: str, folder: Path) -> Any:
    """The ``seven_segments`` package of ``rev``, imported as ``seven_segments_<n>``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "seven_segments"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    name = "seven_segments_base"
    (folder / "seven_segments").rename(folder / name)
    sys.path.insert(0, str(folder))
    return importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--block", type=int, default=500)  # under a batch: nothing sent during a block
    parser.add_argument("--mode", choices=["buffered", "disabled"], default="buffered")
    options = parser.parse_args()

    import seven_segments as ours
    from seven_segments.testing import LocalServer

    with tempfile.TemporaryDirectory() as folder, LocalServer(counting_only=True) as server:
        base = revision_package(options.rev, Path(folder))
        keywords: Dict[str, Any] = {"target": server.url}
        if options.mode == "buffered":
            keywords.update(buffered=True, flush_interval=60)  # sent only by the flush between rounds
        else:
            keywords.update(enabled=False)

        def client(package: Any, customer: Any = None) -> Any:
            return package.SevenSegments("ab-token", customer, **keywords)

        base_identified, base_anonymous = client(base, "john123"), client(base)
        ours_identified, ours_anonymous, ours_context = client(ours, "john123"), client(ours), client(ours)
        ours_used = client(ours, "john123")
        with ours_used.customer_context("someone-else"):
            pass  # the client now looks at contexts first, for good
        context = ours_context.customer_context("john123")

        def identified(tracking: Any) -> Callable[[int], None]:
            def run(count: int) -> None:
                track = tracking.track
                for _ in range(count):
                    track("purchase", {"product": "bottle", "amount": 5})
            return run

        def explicit(tracking: Any) -> Callable[[int], None]:
            def run(count: int) -> None:
                track = tracking.track
                for _ in range(count):
                    track("purchase", {"product": "bottle", "amount": 5}, customer="john123")
            return run

        def in_context(count: int) -> None:
            track = ours_context.track
            with context:
                for _ in range(count):
                    track("purchase", {"product": "bottle", "amount": 5})

        arms: List[Tuple[str, Callable[[int], None], str]] = [
            (f"{options.rev}: identified", identified(base_identified), ""),
            ("this tree: identified", identified(ours_identified), f"{options.rev}: identified"),
            (f"{options.rev}: customer=", explicit(base_anonymous), ""),
            ("this tree: customer=", explicit(ours_anonymous), f"{options.rev}: customer="),
            ("this tree: in customer_context", in_context, "this tree: identified"),
            ("this tree: identified, contexts used, outside", identified(ours_used), "this tree: identified"),
        ]
        clients = [base_identified, base_anonymous, ours_identified, ours_anonymous, ours_context, ours_used]
        for _, run, _ in arms:
            run(options.block)  # warm-up
        times: Dict[str, List[float]] = {name: [] for name, _, _ in arms}
        for number in range(options.rounds):
            for name, run, _ in arms if number % 2 == 0 else arms[::-1]:  # no arm always first or last
                started = time.perf_counter_ns()
                run(options.block)
                times[name].append((time.perf_counter_ns() - started) / options.block / 1000)
            for tracking in clients:
                tracking.flush(10)
        print(f"track, {options.mode}, {options.rounds} rounds of {options.block} calls per arm (µs per call):")
        print("median of the rounds; difference: median of the rounds' paired differences with the reference arm")
        print("| arm | µs per call | difference | against |")
        print("|---|---|---|---|")
        for name, _, reference in arms:
            difference = ""
            if reference:
                paired = [mine - theirs for mine, theirs in zip(times[name], times[reference])]
                difference = f"{statistics.median(paired):+.3f}"
            print(f"| {name} | {statistics.median(times[name]):.3f} | {difference} | {reference} |")
        for tracking in clients:
            tracking.close(10)


if __name__ == "__main__":
    main()

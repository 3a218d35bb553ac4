"""Delivery at a round trip, A/B in one run: this tree's client, another checkout's, the naive clients.

``runner.py ours roundtrip`` runs one client against the server of the checkout it lives in, so an
A/B made with two checkouts also compares two servers; and its events per second say nothing of
what capped them. Here every row talks to the same server (this tree's, in its own process), rounds
are interleaved (round 1 of every row, then round 2, ...) and the tables show medians with the
spread, and beside the rate what bounds it:

- ``produce``: how long the one producing thread took to make its ``--n`` calls. Delivery cannot
  end before production does: ``n / produce`` is the producer's own ceiling;
- ``backlog``: the events the client had not seen answered when the producer stopped (queued, or
  in requests in flight); ``tail``: from the last call until the server held the last event; ``drain``
  = backlog / tail, the rate of delivery once the producing thread no longer competes for the
  interpreter (an upper bound of what the background threads deliver alone);
- ``server CPU``: the server process's CPU (user + system, ``/proc/PID/stat``) per event, and the
  share of the run it was busy: a server near a whole core is what caps the row, not the client;
- the client process's CPU per event (``resource.getrusage``, every thread).

Rows: ``ours`` (this tree), ``base`` (``--base DIR``: our client from that checkout, imported from
it alone), ``naive orjson`` / ``naive json`` (``libs.FloorBulkOrjson`` / ``libs.FloorBulk``: a deque
and one thread posting up to 1,000 events per request, one request at a time). Every row tracks the
event of ``runner.py`` (``purchase`` with 2 properties, a fresh dict per call) as fast as it can, then
flushes; the rate counts from the first call until the server holds every event.

    python benchmarks/roundtrip_ab.py --base /tmp/base --n 100000 --repeat 5 --latency 0.05
    python benchmarks/roundtrip_ab.py --server sink ...        # the asyncio sink instead of LocalServer
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAIVE = {"naive orjson": "floor_bulk_orjson", "naive json": "floor_bulk"}


def _child(row: str, url: str, n: int, max_in_flight: int, switch_interval: float) -> int:
    """One measured run in this process (its ``seven_segments`` comes from PYTHONPATH)."""
    import gc
    import resource

    sys.path.insert(0, str(HERE))
    import libs

    if row in NAIVE:
        lib = libs.get(NAIVE[row])
        lib.open(url)
    else:
        from seven_segments import SevenSegments

        lib = libs.get("ours")
        options = {"max_in_flight": max_in_flight} if max_in_flight else {}
        lib.client = SevenSegments(libs.TOKEN, customer=libs.CUSTOMER, target=url, buffered=True, **options)
        lib._track = lib.client.track
    if switch_interval:
        sys.setswitchinterval(switch_interval)
    gc.collect()
    track = lib.track
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.time()
    for _ in range(n):
        track()
    produced = time.time() - started
    # delivered by then, as the client knows it (answered requests): the rest is the backlog the tail drains
    confirmed = lib.posted if row in NAIVE else int(lib.client.stats().get("sent", 0))
    flushed = lib.flush(120)
    print("WAIT", flush=True)
    arrived = json.loads(sys.stdin.readline())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({
        "started": started, "produce_s": produced, "flushed": bool(flushed), "confirmed": confirmed,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before, "arrived": arrived,
    }), flush=True)
    os._exit(0)


def _process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        text = handle.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(row: str, tree: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Run ``row`` once in a child process against a fresh server of this tree."""
    sys.path.insert(0, str(HERE))
    import servers

    with servers.Server(args.server, latency=args.latency) as server, tempfile.TemporaryFile("w+") as errors:
        env = dict(os.environ, PYTHONPATH=tree)
        server_cpu = _process_cpu(server.process.pid)
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", row, server.url, str(args.n),
             row.split(" w")[1] if row.startswith("ours w") else "0", repr(args.switch_interval)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=tree,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            line = process.stdout.readline()
            if line.strip() != "WAIT":
                errors.seek(0)
                raise RuntimeError(f"{row}: {line!r} {errors.read()[-2000:]}")
            arrived = server.wait("ours", args.n, timeout=120, stall=5)
            server_cpu = _process_cpu(server.process.pid) - server_cpu
            process.stdin.write(json.dumps(arrived) + "\n")
            process.stdin.flush()
            for line in process.stdout:
                if line.startswith("RESULT "):
                    result = json.loads(line[7:])
                    break
            else:
                raise RuntimeError(f"{row}: no result")
        finally:
            process.kill()
            process.wait()
    delivered = int(arrived["unique"])
    elapsed = float(arrived["last_event_at"]) - result["started"]
    return {
        "events_per_s": delivered / elapsed if delivered and elapsed > 0 else 0.0,
        "produce_s": result["produce_s"],
        "tail_s": elapsed - result["produce_s"],
        "backlog": args.n - result["confirmed"],
        "drain_per_s": (args.n - result["confirmed"]) / (elapsed - result["produce_s"])
        if elapsed > result["produce_s"] else 0.0,
        "cpu_us": result["cpu_s"] / max(delivered, 1) * 1e6,
        "server_cpu_us": server_cpu / max(delivered, 1) * 1e6,
        "server_busy": server_cpu / elapsed if elapsed > 0 else 0.0,
        "lost": args.n - delivered,
        "duplicates": int(arrived.get("duplicates", 0)),
        "requests": arrived.get("requests"),
    }


def _spread(values: List[float]) -> str:
    return f"{min(values):,.0f}-{max(values):,.0f}"


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians are shown)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds every server answer is delayed")
    parser.add_argument("--base", default="", help="also run our client from this checkout (A/B)")
    parser.add_argument("--server", choices=["ours", "sink"], default="ours",
                        help="ours: LocalServer(counting_only=True); sink: the asyncio sink")
    parser.add_argument("--naive", default="naive orjson", help="comma-separated naive rows ('' for none)")
    parser.add_argument("--windows", default="", help="comma-separated max_in_flight values: a row 'ours wN' each")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="diagnostic: sys.setswitchinterval in the client (0: Python's 5 ms); see the README")
    parser.add_argument("--json", default="", help="also write every run's figures here")
    args = parser.parse_args(argv)
    rows = {"ours": str(REPO)}
    for window in filter(None, args.windows.split(",")):
        rows[f"ours w{int(window)}"] = str(REPO)
    if args.base:
        rows["base"] = str(Path(args.base).resolve())
    for naive in filter(None, (name.strip() for name in args.naive.split(","))):
        rows[naive] = str(REPO)
    runs: Dict[str, List[Dict[str, Any]]] = {row: [] for row in rows}
    for round_number in range(args.repeat):
        for row, tree in rows.items():
            result = measure(row, tree, args)
            runs[row].append(result)
            print(f"round {round_number + 1} {row}: {result['events_per_s']:,.0f} events/s, produce "
                  f"{result['produce_s']:.3f} s, tail {result['tail_s']:.3f} s, server busy "
                  f"{result['server_busy']:.0%}", file=sys.stderr)
    median = {row: statistics.median([r["events_per_s"] for r in results]) for row, results in runs.items()}
    print(f"\nDelivery, {args.n:,} events, answers {args.latency * 1000:g} ms late, server {args.server}, "
          f"medians of {args.repeat} rounds\n")
    print("| client | events/s | (range) | ratio to base | produce s | backlog | tail s | drain events/s | "
          "client CPU µs/event | server CPU µs/event | server busy | lost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row, results in runs.items():
        def mid(key: str) -> float:
            return statistics.median([r[key] for r in results])

        ratio = f"{median[row] / median['base']:.2f}" if "base" in median else "-"
        lost = max(r["lost"] for r in results)
        print(f"| {row} | {median[row]:,.0f} | {_spread([r['events_per_s'] for r in results])} | {ratio} | "
              f"{mid('produce_s'):.3f} | {mid('backlog'):,.0f} | {mid('tail_s'):.3f} | {mid('drain_per_s'):,.0f} | "
              f"{mid('cpu_us'):.2f} | {mid('server_cpu_us'):.2f} | "
              f"{mid('server_busy'):.0%} | {lost} |")
    if "base" in runs:
        ratios = [a["events_per_s"] / b["events_per_s"] for a, b in zip(runs["ours"], runs["base"])]
        print(f"\nours / base, round by round: {', '.join(f'{r:.2f}' for r in ratios)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

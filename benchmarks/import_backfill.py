"""How fast ``seven-segments import`` reads, checks and delivers a backfill.

```bash
python benchmarks/import_backfill.py                     # 200,000 events, 3 rounds, medians (~1 min)
python benchmarks/import_backfill.py --lines 1000000 --repeat 1
```

A file of events with 6 properties each is written to a temporary folder, then, each round:

- ``json.loads``: a bare loop of ``json.loads`` over the file's lines (the floor of any reader);
- ``dry run``: ``import --dry-run`` over the same file, in this process (every line read, checked
  by the client's own checks, nothing sent), and its time against the bare loop;
- ``import, 0 ms`` and ``import, 50 ms``: ``seven-segments import`` as users run it (a process of its
  own, the file hashed for its command ids, every line confirmed in the checkpoint), against the local
  server (counting only, in a process of its own) answering at once, or after 50 ms (a network round trip);
- ``client loop, 50 ms``: the floor set by the API: the same events, parsed beforehand, passed to a
  buffered client's ``track`` and flushed, against the same server at 50 ms; ``import, 50 ms``
  near it means the reader is not what limits delivery.

Every delivery row checks that the server counted each event once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from servers import Server  # noqa: E402

TOKEN = "12345678-90ab-cdef-1234-567890abcdef"


def write_events(path: Path, count: int) -> None:
    """``count`` events of 6 properties, one a line."""
    with open(path, "w") as stream:
        for i in range(count):
            stream.write(json.dumps({
                "type": "purchase", "customer": f"customer-{i % 5000}", "timestamp": 1700000000 + i,
                "properties": {"product": f"sku-{i % 300}", "amount": i % 97, "price": 12.5 + i % 10,
                               "currency": "EUR", "vip": i % 2 == 0, "campaign": "spring"},
            }) + "\n")


def bare_loop(path: Path) -> float:
    started = time.perf_counter()
    loads = json.loads
    with open(path, "rb") as stream:
        for line in stream:
            loads(line)
    return time.perf_counter() - started


def dry_run(path: Path) -> float:
    import seven_segments.client  # noqa: F401 - imported before the clock starts, as json is for the bare loop
    from seven_segments.importer.job import Options, run

    options = Options(inputs=[str(path)], target="http://127.0.0.1:9", timeout=10.0, dry_run=True,
                      progress_interval=3600.0)
    started = time.perf_counter()
    status = run(options, None, io.StringIO(), io.StringIO())
    elapsed = time.perf_counter() - started
    assert status == 0, status
    return elapsed


def import_process(path: Path, latency: float, lines: int, in_flight: int) -> float:
    with Server("ours", latency=latency) as server:
        env = dict(os.environ, SEVEN_SEGMENTS_TOKEN=TOKEN, PYTHONPATH=str(REPO))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "seven_segments", "import", str(path), "--target", server.url, "--restart",
             "--max-in-flight", str(in_flight), "--progress-interval", "3600"],
            env=env, capture_output=True, text=True,
        )
        elapsed = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
        counted = server.stats("ours")
        assert counted["unique"] == lines, counted
    return elapsed


def client_loop(path: Path, latency: float, lines: int, in_flight: int) -> float:
    from seven_segments import SevenSegments

    with open(path, "rb") as stream:
        events = [json.loads(line) for line in stream]
    with Server("ours", latency=latency) as server:
        client = SevenSegments(TOKEN, target=server.url, buffered=True, max_in_flight=in_flight,
                               max_queue_size=lines + 1)
        started = time.perf_counter()
        for event in events:
            client.track(event["type"], event["properties"], customer=event["customer"], timestamp=event["timestamp"])
        assert client.flush()
        elapsed = time.perf_counter() - started
        client.close()
        counted = server.stats("ours")
        assert counted["unique"] == lines, counted
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-in-flight", type=int, default=16)
    arguments = parser.parse_args()
    lines = arguments.lines
    rows: Dict[str, List[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "events.jsonl"
        write_events(path, lines)
        size = path.stat().st_size
        scenarios: Dict[str, Callable[[], float]] = {
            "json.loads": lambda: bare_loop(path),
            "dry run": lambda: dry_run(path),
            "import, 0 ms": lambda: import_process(path, 0.0, lines, arguments.max_in_flight),
            "import, 50 ms": lambda: import_process(path, 0.05, lines, arguments.max_in_flight),
            "client loop, 50 ms": lambda: client_loop(path, 0.05, lines, arguments.max_in_flight),
        }
        ratios = []
        for round_ in range(arguments.repeat):
            for name, scenario in scenarios.items():
                rows.setdefault(name, []).append(scenario())
                print(f"round {round_ + 1}: {name}: {rows[name][-1]:.2f} s", file=sys.stderr)
            ratios.append(rows["dry run"][-1] / rows["json.loads"][-1])
    print(f"{lines:,} events of 6 properties ({size / lines:.0f} bytes a line), median of {arguments.repeat} rounds, "
          f"max_in_flight {arguments.max_in_flight}\n")
    print("| scenario | seconds | lines/s |")
    print("|---|---:|---:|")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"| {name} | {median:.2f} | {lines / median:,.0f} |")
    print(f"\ndry run / json.loads (same round): median {statistics.median(ratios):.2f}, worst {max(ratios):.2f}")


if __name__ == "__main__":
    main()

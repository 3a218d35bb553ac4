"""The benchmark must keep running: a tiny round of ``benchmarks/run.py`` prints numbers for our client."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")

#: Summary rows whose "ours" cell must be a number.
NUMERIC_FIGURES = [
    "caller: `track` median, 1 thread (µs)",
    "caller: `track` p99, 1 thread (µs)",
    "caller: `track` median, 4 threads (µs)",
    "caller: `track` p99, 4 threads (µs)",
    "delivery: events/s, first call until the server has all",
    "CPU per delivered event (µs, client process)",
    "memory per queued command, server down (bytes)",
    "exit: script queuing 100k, first call until the process ended, no flush call (s)",
    "exit, server down: last call until the process ended (s)",
    "delivery at 20 ms round trip (events/s)",  # the smoke's round trip: 2,000 events, answers 20 ms late
]


def test_benchmark_smoke_prints_numbers_for_our_client(tmp_path: Path) -> None:
    raw = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "## seven_segments benchmarks" in out
    assert "machine: " in out and " cores, " in out
    cells = {}
    for line in out.splitlines():
        parts = [part.strip() for part in line.strip().strip("|").split("|")]
        if len(parts) >= 2:
            cells.setdefault(parts[0], parts[1])
    for figure in NUMERIC_FIGURES:
        assert figure in cells, f"row missing: {figure}\n{out}"
        assert NUMBER.match(cells[figure]), f"{figure}: {cells[figure]!r} is not a number\n{out}\n{done.stderr[-3000:]}"
    results = json.loads(raw.read_text())["results"]["ours"]
    assert results["delivery"]["lost"] == 0, results["delivery"]
    assert results["delivery"]["duplicates"] == 0, results["delivery"]
    for key in ("caller1", "caller4", "delivery", "memory", "exit", "exit_explicit", "exit_down", "blocking", "cli", "floors",
                "roundtrip20"):
        assert "error" not in results[key], (key, results[key])
    roundtrip = results["roundtrip20"]
    assert roundtrip["latency_s"] == 0.02 and roundtrip["server_latency_s"] == 0.02, roundtrip
    assert not roundtrip["capped"] and roundtrip["lost"] == 0 and roundtrip["duplicates"] == 0, roundtrip
    # every answer came 20 ms late: 2,000 events cannot have taken less than one round trip
    assert roundtrip["deliver_s"] >= 0.02, roundtrip

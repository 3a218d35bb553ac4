"""The benchmark must keep running: a tiny round of ``benchmarks/run.py`` prints numbers for our client."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HAS_ORJSON = importlib.util.find_spec("orjson") is not None
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


def test_webapp_smoke_counts_what_the_app_tracked(tmp_path: Path) -> None:
    """One tiny round of ``benchmarks/webapp.py``: the untracked app and ours, K=2, the API 20 ms away.

    With the current interpreter and the standard library's WSGI server (no gunicorn, no peers' venv),
    so that it runs anywhere; the full scenario differs only in the server and the clients.
    """
    raw = tmp_path / "webapp.json"
    clients = "untracked,ours" + (",floor_orjson" if HAS_ORJSON else "")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "webapp.py"), "--quick", "--ours-only", "--clients", clients,
         "--wsgi", "wsgiref", "--ks", "2", "--latencies", "0.02", "--duration", "1", "--warmup", "1",
         "--stop-timeout", "15", "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "## Web app" in done.stdout and "| 2 | 20 ms away |" in done.stdout, done.stdout
    cells = json.loads(raw.read_text())["results"]["K=2, 20 ms"]
    base, ours = cells["untracked"], cells["ours"]
    assert "error" not in base and "error" not in ours, (base, ours)
    assert base["req_s"] > 0 and ours["req_s"] > 0 and ours["ratio"] > 0, (base, ours)
    assert ours["p50_ms"] <= ours["p99_ms"] <= ours["p999_ms"], ours
    # every request tracked 2 events; after the graceful stop the server holds every one of them
    assert ours["tracked"] > 0 and ours["tracked"] % 2 == 0, ours
    assert ours["received"] == ours["tracked"] and ours["lost"] == 0 and not ours["killed"], ours
    if HAS_ORJSON:  # the naive client with orjson, counted apart by the sink
        naive = cells["floor_orjson"]
        assert "error" not in naive and naive["tracked"] > 0 and naive["received"] == naive["tracked"], naive


def test_the_cpu_per_event_benchmark_prints_ours_and_the_naive_clients(tmp_path: Path) -> None:
    raw = tmp_path / "cpu.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cpu_per_event.py"), "--smoke", "--json", str(raw)],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): [cell.strip(" |") for cell in line.split(" | ")[1:]]
            for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| client")}
    expected = {"ours", "ours (json)", "naive json"} | ({"naive orjson"} if HAS_ORJSON else set())
    assert set(rows) == expected, done.stdout
    for client, cells in rows.items():
        cpu, caller, pump, senders, other, to_json, to_orjson, lost = cells
        assert all(NUMBER.match(cell) for cell in (cpu, caller, pump, senders, other, to_json)), (client, cells)
        assert float(cpu) > 0 and lost == "0", (client, cells)
    runs = json.loads(raw.read_text())["runs"]
    assert all(run["delivered"] == 2000 and run["duplicates"] == 0 for results in runs.values() for run in results)


def test_the_round_trip_ab_runs_a_checkout_against_the_same_server_and_says_what_bounded_it(tmp_path: Path) -> None:
    raw = tmp_path / "roundtrip.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "roundtrip_ab.py"), "--n", "3000", "--repeat", "1", "--latency",
         "0.01", "--base", str(REPO), "--naive", "naive json", "--json", str(raw)],
        capture_output=True, text=True, timeout=60, cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): [cell.strip(" |") for cell in line.split(" | ")[1:]]
            for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| client")}
    assert set(rows) == {"ours", "base", "naive json"}, done.stdout
    assert all(cells[-1] == "0" for cells in rows.values()), done.stdout  # nothing lost
    runs = json.loads(raw.read_text())["runs"]
    assert all(run["events_per_s"] > 0 and run["produce_s"] > 0 and run["server_cpu_us"] >= 0
               for results in runs.values() for run in results)


def test_the_web_app_profile_sums_py_spy_samples_by_thread_and_function(tmp_path: Path) -> None:
    """``benchmarks/webapp_profile.py`` reads py-spy's raw stacks: each kind of thread's share, what
    ``track`` spends its time in, and our background threads' innermost functions."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import webapp_profile
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    raw = tmp_path / "gil.txt"
    request = "thread (11): ThreadPoolExecutor-0_1;_worker (thread.py:83);app (webapp_app.py:109)"
    raw.write_text("\n".join([
        f"{request};SevenSegments.track (seven_segments/client.py:420);capture_properties (seven_segments/serialization.py:91) 3",
        f"{request};_page (webapp_app.py:99) 4",
        "thread (12): seven-segments-worker;Core._run (seven_segments/_buffered/engine.py:325);"
        "Pump.take (seven_segments/_buffered/pump.py:175);BulkCommandEncoder.encode (seven_segments/serialization.py:448) 2",
        "thread (13): MainThread;run (gunicorn/arbiter.py:10) 1",
        "not a sample line",
    ]) + "\n")
    text = webapp_profile.summarize(raw, top=5)
    assert text.startswith("10 samples with the GIL held")
    assert "| request threads (the app's handlers) | 70.0% |" in text
    assert "| ours: pump thread | 20.0% |" in text and "| other: MainThread | 10.0% |" in text
    assert "| capture_properties | 30.0% |" in text
    assert "| ours: pump thread: BulkCommandEncoder.encode | 20.0% |" in text


def test_the_spool_benchmark_prints_both_variants(tmp_path: Path) -> None:
    raw = tmp_path / "spool.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "spool.py"), "--rounds", "1", "--n", "300", "--calls", "500",
         "--json", str(raw)],
        capture_output=True, text=True, timeout=90, cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in done.stdout.splitlines() if line.startswith("| ")}
    for figure in ("caller 1: median µs", "caller 4: p99 µs", "delivery: events/s", "delivery: CPU µs per event"):
        plain, spooled, ratio = (cell.strip(" |") for cell in rows[figure])
        assert NUMBER.match(plain) and NUMBER.match(spooled) and ratio.endswith("×"), rows[figure]
    figures = json.loads(raw.read_text())
    assert set(figures) == {"plain", "spool"} and len(figures["spool"]["caller 1: median µs"]) == 1


def test_the_queued_memory_benchmark_measures_our_client(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "queued_memory.py"), "--n", "500"],
        capture_output=True, text=True, timeout=120, cwd=str(REPO),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| this tree"))
    per_command, its_json, beyond = (cell.strip() for cell in row.split("|")[2:5])
    assert NUMBER.match(per_command) and NUMBER.match(its_json) and NUMBER.match(beyond), row

"""Reproduce, in one command, the performance figures the README quotes.

    python benchmarks/run.py                 # everything, ours and the peers (a few minutes)
    python benchmarks/run.py --repeat 3      # three rounds, medians reported
    python benchmarks/run.py --quick         # reduced counts, under a minute with --ours-only
    python benchmarks/run.py --quick --ours-only --json results.json
    python benchmarks/run.py --only roundtrip  # delivery at 50 ms and 100 ms round trip, ours and the peers

It makes ``benchmarks/.venv`` for the peers (see :mod:`setup_env`), then runs every (library,
scenario) in its own subprocess (:mod:`runner`) with a time limit, rounds interleaved so that noise
falls on every library alike, and prints markdown tables: the summary (figure, ours, best peer,
ratio), the naive clients beside ours, the floors, our blocking client and command line, the targets, and a per-library detail.
A peer that cannot be installed, crashes or times out shows as such in the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import libs  # noqa: E402
import report  # noqa: E402
import setup_env  # noqa: E402

#: Counts per mode: how many calls or events each scenario makes.
SIZES: Dict[str, Dict[str, int]] = {
    "full": {"caller": 10_000, "delivery": 100_000, "memory": 20_000, "exit": 100_000, "exit_down": 10_000,
             "blocking": 1_000, "cli": 10, "floors": 100_000, "roundtrip": 100_000},
    "quick": {"caller": 5_000, "delivery": 20_000, "memory": 5_000, "exit": 20_000, "exit_down": 2_000,
              "blocking": 200, "cli": 3, "floors": 20_000, "roundtrip": 20_000},
    "smoke": {"caller": 2_000, "delivery": 5_000, "memory": 2_000, "exit": 5_000, "exit_down": 1_000,
              "blocking": 100, "cli": 2, "floors": 5_000, "roundtrip": 2_000},
}

#: Round trips (seconds) of the roundtrip scenario per mode, and the time one run may take.
LATENCIES: Dict[str, List[float]] = {"full": [0.05, 0.1], "quick": [0.05, 0.1], "smoke": [0.02]}
ROUNDTRIP_MAX_SECONDS: Dict[str, float] = {"full": 60.0, "quick": 30.0, "smoke": 20.0}

Job = Tuple[str, str, List[str], float]  # (library, key, runner arguments, timeout in seconds)

#: The naive clients of issue 19, shown beside ours: ``bulk`` bodies to the same local server
#: (:class:`libs.FloorBulk`, :class:`libs.FloorBulkOrjson`).
FLOORS = ["floor_bulk", "floor_bulk_orjson"]
#: The scenarios they run: with the API down they lose everything at once (no retries), so the
#: memory and server-down exit figures would say nothing.
FLOOR_KEYS = {"caller1", "caller4", "delivery", "exit", "exit_explicit"}


def roundtrip_key(latency: float) -> str:
    """The scenario key of the round trip ``latency`` (seconds): ``roundtrip50`` for 50 ms."""
    return f"roundtrip{round(latency * 1000):d}"


def jobs_for(lib: str, sizes: Dict[str, int], latencies: Sequence[float] = (), max_seconds: float = 60.0) -> List[Job]:
    """The runner invocations of one library (key names the scenario variant)."""
    jobs: List[Job] = [
        (lib, "caller1", ["caller", "--n", str(sizes["caller"]), "--threads", "1"], 180),
        (lib, "caller4", ["caller", "--n", str(sizes["caller"]), "--threads", "4"], 180),
        (lib, "delivery", ["delivery", "--n", str(sizes["delivery"])], 300),
        (lib, "memory", ["memory", "--n", str(sizes["memory"])], 180),
        (lib, "exit", ["exit", "--n", str(sizes["exit"]), "--child-timeout", "90"], 150),
        (lib, "exit_explicit", ["exit", "--n", str(sizes["exit"]), "--explicit", "--child-timeout", "90"], 150),
        (lib, "exit_down", ["exit", "--n", str(sizes["exit_down"]), "--down", "--child-timeout", "60"], 120),
    ]
    jobs += [(lib, roundtrip_key(latency), ["roundtrip", "--n", str(sizes["roundtrip"]), "--latency", repr(latency),
                                          "--max-seconds", repr(max_seconds)], max_seconds + 90)
             for latency in latencies]
    if lib in FLOORS:
        return [job for job in jobs if job[1] in FLOOR_KEYS or job[1].startswith("roundtrip")]
    if lib == "ours":
        jobs += [
            # the same delivery against the sink, to tell the client's limit from the local server's
            ("ours", "delivery_sink", ["delivery", "--n", str(sizes["delivery"]), "--server", "sink"], 300),
            ("ours", "blocking", ["blocking", "--n", str(sizes["blocking"])], 180),
            ("ours", "cli", ["cli", "--n", str(sizes["cli"])], 180),
            ("ours", "floors", ["floors", "--n", str(sizes["floors"])], 180),
        ]
    return jobs


def run_job(python: str, job: Job) -> Dict[str, Any]:
    """Run one scenario in its own process; a crash or a timeout becomes ``{"error": ...}``."""
    lib, key, args, timeout = job
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    env.pop("POSTHOG_CAPTURE_MODE", None)  # measure PostHog's default wire protocol
    command = [python, str(HERE / "runner.py"), lib, *args]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["job_s"] = round(time.perf_counter() - started, 2)
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()
    last = next((line for line in reversed(tail) if line.strip() and not line.startswith(" ")), "no output")
    return {"error": f"crashed (exit {done.returncode}): {last[:160]}"}


def aggregate(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians of the numeric fields over rounds that did not fail; other fields from the last one."""
    good = [r for r in rounds if "error" not in r]
    if not good:
        return rounds[-1] if rounds else {"error": "not run"}
    out: Dict[str, Any] = dict(good[-1])
    for key in out:
        values = [r.get(key) for r in good]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            numbers = [v for v in values if v == v]  # drop NaN
            out[key] = statistics.median(numbers) if numbers else float("nan")
        elif all(isinstance(v, bool) for v in values):
            out[key] = all(values) if key in ("loss_reported",) else any(values)
    if out.get("capped"):
        out["lost"] = None  # some round was cut by its time limit: what was lost is not known
    out["rounds"] = len(good)
    if len(good) < len(rounds):
        out["failed_rounds"] = len(rounds) - len(good)
    return out


def machine() -> Dict[str, str]:
    """Which machine ran the benchmark."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=str(REPO),
                                timeout=10).stdout.strip()
    except Exception:
        commit = ""
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def can_run_ours(python: str) -> bool:
    """Whether ``python`` can import requests and our package (with its dependencies) from the repo."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    probe = [python, "-c", "import requests, seven_segments"]
    return subprocess.run(probe, capture_output=True, timeout=60, env=env, cwd=str(REPO)).returncode == 0


def has_orjson(python: str) -> bool:
    """Whether ``python`` can import orjson (the naive orjson client's encoder)."""
    return subprocess.run([python, "-c", "import orjson"], capture_output=True, timeout=60).returncode == 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run the seven_segments benchmarks and print markdown tables.")
    parser.add_argument("--quick", action="store_true", help="reduced counts (under a minute with --ours-only)")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, our client only (for the smoke test)")
    parser.add_argument("--ours-only", action="store_true", help="skip the peers")
    parser.add_argument("--peers", default=",".join(libs.PEERS), help="comma-separated peers to run")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the tables show medians")
    parser.add_argument("--json", metavar="FILE", help="save raw and aggregated results as JSON")
    parser.add_argument("--upgrade-peers", action="store_true", help="reinstall the peers' newest releases")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario keys to run (e.g. caller1,delivery); a key without its "
                             "trailing number names them all (caller, roundtrip)")
    parser.add_argument("--latencies", default="",
                        help="roundtrip: comma-separated round trips in seconds (default 0.05,0.1; smoke 0.02)")
    parser.add_argument("--roundtrip-n", type=int, default=0, help="roundtrip: events per run (default 100,000; quick 20,000)")
    parser.add_argument("--roundtrip-max-seconds", type=float, default=0.0,
                        help="roundtrip: time one run may take from its first call (default 60 s); a library "
                             "still delivering then shows what it received in that time")
    parser.add_argument("--no-floors", action="store_true",
                        help="skip the naive clients (a deque and one thread posting json/orjson dumps)")
    parser.add_argument("--from-json", metavar="FILE", help="print the tables of a saved --json file; run nothing")
    args = parser.parse_args(argv)

    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        print(report.render(saved["results"], saved["machine"], saved["versions"], mode=saved["mode"],
                            repeat=saved["repeat"], sizes=saved["sizes"], peers=saved.get("peers", []), elapsed=saved.get("elapsed", 0),
                            max_seconds=saved.get("roundtrip_max_seconds", 60.0), floors=saved.get("floors", [])))
        return 0

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = dict(SIZES[mode])
    if args.roundtrip_n:
        sizes["roundtrip"] = args.roundtrip_n
    try:
        latencies = [float(x) for x in args.latencies.split(",") if x.strip()] or LATENCIES[mode]
    except ValueError:
        parser.error(f"--latencies must be comma-separated seconds, not {args.latencies!r}")
    if any(latency < 0 for latency in latencies):
        parser.error(f"--latencies must be >= 0, not {args.latencies!r}")
    max_seconds = args.roundtrip_max_seconds or ROUNDTRIP_MAX_SECONDS[mode]
    peers = [] if (args.ours_only or args.smoke) else [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in libs.PEERS]
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {libs.PEERS}")

    failures: Dict[str, str] = {}
    if peers:
        failures = setup_env.ensure(peers, upgrade=args.upgrade_peers, log=lambda m: print(m, file=sys.stderr))
        python = str(setup_env.venv_python())
    elif can_run_ours(sys.executable):
        python = sys.executable  # no peers: the current interpreter will do if it runs our client
    else:
        setup_env.ensure([], log=lambda m: print(m, file=sys.stderr))
        python = str(setup_env.venv_python())

    floors = [] if (args.smoke or args.no_floors) else [f for f in FLOORS if f != "floor_bulk_orjson" or has_orjson(python)]
    libraries = ["ours"] + floors + [p for p in peers if p not in failures]
    only = {k for k in args.only.split(",") if k}
    jobs = [job for lib in libraries for job in jobs_for(lib, sizes, latencies, max_seconds)
            if not only or job[1] in only or job[1].rstrip("0123456789") in only]
    raw: Dict[str, Dict[str, List[Dict[str, Any]]]] = {lib: {} for lib in libraries}
    started = time.perf_counter()
    for round_index in range(args.repeat):
        for job in jobs:
            print(f"[round {round_index + 1}/{args.repeat}] {job[0]} {job[1]} ...", file=sys.stderr, flush=True)
            result = run_job(python, job)
            raw[job[0]].setdefault(job[1], []).append(result)
            if "error" in result:
                print(f"    {result['error']}", file=sys.stderr, flush=True)
    results = {lib: {key: aggregate(rounds) for key, rounds in by_key.items()} for lib, by_key in raw.items()}
    for peer, error in failures.items():
        results[peer] = {"install_error": error}  # type: ignore[assignment]

    info = machine()
    versions = setup_env.versions(python, ["ours"] + peers)
    text = report.render(results, info, versions, mode=mode, repeat=args.repeat, sizes=sizes,
                         peers=peers, elapsed=time.perf_counter() - started, max_seconds=max_seconds, floors=floors)
    print(text)
    if args.json:
        saved = {"machine": info, "versions": versions, "mode": mode, "sizes": sizes, "repeat": args.repeat,
                 "peers": peers, "floors": floors, "elapsed": time.perf_counter() - started, "roundtrip_max_seconds": max_seconds,
                 "results": results, "raw": raw}
        Path(args.json).write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

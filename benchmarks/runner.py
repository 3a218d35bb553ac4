"""Run one scenario for one library, in this process, and print its result as JSON.

``python benchmarks/runner.py LIB SCENARIO [--n N] [--threads T] ...`` prints one line
``RESULT {...}`` last. ``run.py`` starts one such process per (library, scenario) with a timeout, so
that libraries never share a process, a crash or hang costs one cell of the table, and "process CPU"
is the client's process alone (its server runs in a child process, see :mod:`servers`).

Scenarios (all bounded by a count and a time limit):

- ``caller``: per-call cost of ``track`` (``--threads`` producers, ``--n`` calls in all) while the
  client delivers to a live server.
- ``delivery``: ``--n`` events as fast as one thread can call ``track``, then the library's flush; events
  per second from the first call until the server holds every event, lost and duplicated events,
  and process CPU time per delivered event.
- ``memory``: ``--n`` calls against a closed port; RSS growth per command held, and what the library
  does (drops, grows, blocks, raises).
- ``exit``: a child script queues ``--n`` commands and ends (``--explicit`` calls the library's
  flush/shutdown first); how long it takes to end, what arrived, whether a loss was reported.
  ``--down`` points the child at a closed port.
- ``blocking`` (ours): latency of our blocking client against ``requests.Session.post`` of the same body.
- ``cli`` (ours): wall time of ``./seven_segments.py track ...`` against ``python -c "import requests"``.
- ``floors``: ``queue.SimpleQueue.put``, ``json.dumps`` of one command, one keep-alive POST of 100 commands.
- ``roundtrip``: the delivery scenario with every answer of the server delayed by ``--latency`` seconds
  (a remote API's round trip), within ``--max-seconds`` from the first call: a library too slow to
  deliver ``--n`` events in that time is stopped there and reported as "received N in T s".
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import libs  # noqa: E402
import servers  # noqa: E402
from servers import Server, closed_port_url, start_for  # noqa: E402

Result = Dict[str, Any]
perf_ns = time.perf_counter_ns


# --- measuring helpers ----------------------------------------------------------------------------------


def percentiles_us(samples_ns: List[int]) -> Dict[str, float]:
    """Median, p99, p99.9 and max of nanosecond samples, in microseconds."""
    if not samples_ns:
        return {}
    ordered = sorted(samples_ns)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return round(ordered[int(q * last)] / 1000, 3)

    return {"median_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": round(ordered[-1] / 1000, 1)}


def time_calls(fn: Callable[[], Any], n: int) -> List[int]:
    """Time ``n`` calls of ``fn`` one by one, in nanoseconds (each includes one timer read)."""
    samples = [0] * n
    clock = perf_ns
    for i in range(n):
        start = clock()
        fn()
        samples[i] = clock() - start
    return samples


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def python_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


# --- scenarios -----------------------------------------------------------------------------------------


def scenario_caller(lib: libs.Library, n: int, threads: int, warmup: int = 500) -> Result:
    """Per-call cost of ``track``, ``threads`` producers and ``n`` calls in all, server up."""
    with start_for(lib.name) as server:
        lib.open(server.url)
        for _ in range(warmup):
            lib.track()
        lib.flush(30)
        per_thread = max(1, n // threads)
        barrier = threading.Barrier(threads)
        samples: List[List[int]] = []
        drops = [0]

        def producer() -> None:
            barrier.wait()
            track = lib.track
            out = [0] * per_thread
            clock = perf_ns
            dropped = 0
            for i in range(per_thread):
                start = clock()
                ok = track()
                out[i] = clock() - start
                if not ok:
                    dropped += 1
            samples.append(out)
            drops[0] += dropped

        started = time.perf_counter()
        workers = [threading.Thread(target=producer) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        wall = time.perf_counter() - started
        flushed = lib.flush(60)
        total = warmup + per_thread * threads
        arrived = server.wait(lib.name, total, timeout=30, stall=3)
        result: Result = {"threads": threads, "calls": per_thread * threads, "wall_s": round(wall, 4)}
        result.update(percentiles_us([x for s in samples for x in s]))
        result.update(dropped=drops[0], flushed=flushed, delivered=arrived["unique"], lost=total - arrived["unique"])
        result["server"] = server.kind
        return result


def scenario_delivery(lib: libs.Library, n: int) -> Result:
    """Events per second from the first ``track`` until the server holds them all; CPU per event."""
    with start_for(lib.name) as server:
        lib.open(server.url)
        gc.collect()
        errors = dropped = 0
        track = lib.track
        wall_start = time.time()
        cpu_start = time.process_time()
        for _ in range(n):
            try:
                if not track():
                    dropped += 1
            except Exception:
                errors += 1
        produced = time.time() - wall_start
        flushed = lib.flush(120)
        arrived = server.wait(lib.name, n, timeout=120, stall=3)
        cpu = time.process_time() - cpu_start
        delivered = arrived["unique"]
        elapsed = (arrived["last_event_at"] - wall_start) if delivered else float("nan")
        result: Result = {
            "events": n,
            "delivered": delivered,
            "lost": n - delivered,
            "duplicates": arrived["duplicates"],
            "requests": arrived.get("requests"),
            "dropped_reported": dropped,
            "errors": errors,
            "flushed": flushed,
            "produce_s": round(produced, 4),
            "deliver_s": round(elapsed, 4),
            "events_per_s": round(delivered / elapsed, 1) if delivered and elapsed > 0 else 0.0,
            "cpu_s": round(cpu, 4),
            "cpu_us_per_event": round(cpu / delivered * 1e6, 3) if delivered else None,
            "server": server.kind,
        }
        result["counters"] = lib.counters()
        lib.shutdown(10)
        return result


def scenario_roundtrip(lib: libs.Library, n: int, latency: float, max_seconds: float) -> Result:
    """Delivery with every answer ``latency`` s late: events/s from the first call until the server holds
    them all, or until ``max_seconds`` passed (then ``capped``: what arrived by then, honestly)."""
    with start_for(lib.name, latency=latency) as server:
        lib.open(server.url)
        gc.collect()
        errors = dropped = calls = 0
        track = lib.track
        wall_start = time.time()
        deadline = wall_start + max_seconds
        cpu_start = time.process_time()
        while calls < n:
            for _ in range(min(100, n - calls)):  # the clock is read once per 100 calls
                try:
                    if not track():
                        dropped += 1
                except Exception:
                    errors += 1
            calls += min(100, n - calls)
            if time.time() >= deadline:
                break
        produced = time.time() - wall_start
        flushed = lib.flush(max(0.1, deadline - time.time()))
        arrived = server.wait(lib.name, calls, timeout=max(0.1, deadline - time.time()), stall=max(3.0, 20 * latency))
        cpu = time.process_time() - cpu_start
        ended = time.time()
        delivered = arrived["unique"]
        # stopped by the cap: the production was cut short, or events were still on their way at the deadline
        capped = calls < n or (delivered < calls - dropped - errors and ended >= deadline - 0.05)
        if capped:
            elapsed = ended - wall_start  # "received N in T s": T is the whole time allowed
        else:
            elapsed = (arrived["last_event_at"] - wall_start) if delivered else float("nan")
        result: Result = {
            "events": n,
            "latency_s": latency,
            "max_s": max_seconds,
            "calls": calls,
            "delivered": delivered,
            "capped": capped,
            # lost: known only when the run ended before the cap; a capped run has events still pending
            "lost": None if capped else calls - delivered,
            "pending_at_cap": (calls - delivered - dropped - errors) if capped else 0,
            "duplicates": arrived["duplicates"],
            "requests": arrived.get("requests"),
            "dropped_reported": dropped,
            "errors": errors,
            "flushed": flushed,
            "produce_s": round(produced, 4),
            "deliver_s": round(elapsed, 4),
            "events_per_s": round(delivered / elapsed, 1) if delivered and elapsed > 0 else 0.0,
            "cpu_s": round(cpu, 4),
            "cpu_us_per_event": round(cpu / delivered * 1e6, 3) if delivered else None,
            "server": server.kind,
            "server_latency_s": server.latency,
        }
        result["counters"] = lib.counters()
        return result  # no shutdown: a capped library could spend long in it; main() leaves with os._exit


def command_json_bytes(lib: libs.Library) -> Optional[int]:
    """For our client: the size of one queued command's JSON as it goes into a bulk body (what the
    "beyond its JSON" memory target subtracts). None for the peers."""
    if lib.name != "ours":
        return None
    import time as _time

    from seven_segments.serialization import BulkCommandEncoder, new_command_id

    command = (
        "crm/events", {"registered": libs.CUSTOMER}, libs.EVENT, {"product": "bottle", "amount": 5}, _time.time(),
        new_command_id(),
    )
    return len(BulkCommandEncoder(libs.TOKEN).encode(command))


def scenario_memory(lib: libs.Library, n: int, settle: float = 1.0) -> Result:
    """RSS growth per command held while the server is unreachable, and the library's behaviour."""
    url = closed_port_url()
    lib.open(url)
    for _ in range(100):  # start the library's threads and pools before the baseline
        try:
            lib.track()
        except Exception:
            pass
    time.sleep(0.3)
    held_before = lib.held() or 0
    gc.collect()
    rss_before = rss_bytes()
    errors = dropped = 0
    error_kind = ""
    samples = [0] * n
    clock = perf_ns
    track = lib.track
    started = time.perf_counter()
    for i in range(n):
        start = clock()
        try:
            if not track():
                dropped += 1
        except Exception as exc:
            errors += 1
            error_kind = error_kind or type(exc).__name__
        samples[i] = clock() - start
    calls_s = time.perf_counter() - started
    time.sleep(settle)
    gc.collect()
    rss_after = rss_bytes()
    held_after = lib.held()
    held = (held_after - held_before) if held_after is not None else n - dropped - errors
    latency = percentiles_us(samples)
    behaviour = []
    if errors:
        behaviour.append(f"raises {error_kind} ({errors} of {n} calls)")
    if latency["max_us"] > 1_000_000:
        behaviour.append(f"blocks (longest call {latency['max_us'] / 1e6:.2f} s)")
    if dropped:
        behaviour.append(f"drops ({dropped} calls refused)")
    if held >= 0.9 * n:
        behaviour.append(f"grows (holds {held})")
    elif not dropped:
        behaviour.append(f"holds {held} of {n}")
    result: Result = {
        "calls": n,
        "held": held,
        "dropped_reported": dropped,
        "errors": errors,
        "rss_growth_bytes": rss_after - rss_before,
        "bytes_per_command": round((rss_after - rss_before) / held, 1) if held > 0 else None,
        "json_bytes": command_json_bytes(lib),
        "bytes_beyond_json": None,
        "calls_s": round(calls_s, 4),
        "behaviour": "; ".join(behaviour),
        "counters": lib.counters(),
    }
    if result["bytes_per_command"] is not None and result["json_bytes"] is not None:
        result["bytes_beyond_json"] = round(result["bytes_per_command"] - result["json_bytes"], 1)
    result.update({f"call_{k}": v for k, v in latency.items()})
    return result


LOSS_WORDS = re.compile(r"lost|drop|undeliver|discard|not (?:be )?sent|could not|fail|unsent|pending|error", re.I)
EXIT_MARK = "--- benchmark: all commands queued ---"


def scenario_exit(lib: libs.Library, n: int, explicit: bool, down: bool, timeout: float = 60.0) -> Result:
    """Time for a child script that queued ``n`` commands to deliver them and end."""
    server: Optional[Server] = None if down else start_for(lib.name)
    url = closed_port_url() if server is None else server.url
    try:
        command = [sys.executable, str(HERE / "runner.py"), lib.name, "exit-child", "--n", str(n), "--url", url]
        if explicit:
            command.append("--explicit")
        spawned = time.time()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
        timed_out = False
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
            timed_out = True
        ended = time.time()
        marks = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("STARTED ", "QUEUED ", "ERRORS ")))
        queued_at = float(marks.get("QUEUED", "nan"))
        started_at = float(marks.get("STARTED", "nan"))
        arrived = server.wait(lib.name, n, timeout=10, stall=1) if server is not None else {"unique": 0, "duplicates": 0}
        during, _, after = err.partition(EXIT_MARK)
        report = next((line.strip() for line in after.splitlines() if LOSS_WORDS.search(line)), "")
        result: Result = {
            "events": n,
            "explicit": explicit,
            "down": down,
            "returncode": child.returncode,
            "timed_out": timed_out,
            "total_s": round(ended - spawned, 3),
            "queue_s": round(queued_at - started_at, 3),
            "exit_s": round(ended - queued_at, 3),
            "script_s": round(ended - started_at, 3),
            "delivered": arrived["unique"],
            "lost": n - arrived["unique"],
            "duplicates": arrived["duplicates"],
            "errors": int(marks.get("ERRORS", "0")),
            "loss_reported": bool(report),
            "exit_report": report[:200],
            "log_lines_while_queueing": len(during.strip().splitlines()),
            "log_lines_at_exit": len(after.strip().splitlines()),
        }
        if server is not None:
            result["server"] = server.kind
        return result
    finally:
        if server is not None:
            server.close()


def exit_child(lib: libs.Library, n: int, url: str, explicit: bool) -> None:
    """The script of the exit scenario: queue ``n`` commands, maybe flush, and end normally."""
    print(f"STARTED {time.time()}", flush=True)
    lib.open(url)
    errors = 0
    for _ in range(n):
        try:
            lib.track()
        except Exception:
            errors += 1
    print(f"QUEUED {time.time()}", flush=True)
    print(f"ERRORS {errors}", flush=True)
    print(EXIT_MARK, file=sys.stderr, flush=True)
    if explicit:
        lib.shutdown(None)


def command_body(command_id: str = "abc") -> Dict[str, Any]:
    """One 7SEGMENTS event command, as our client sends it (docs/protocol.md)."""
    return {
        "company_id": libs.TOKEN,
        "customer_ids": {"registered": libs.CUSTOMER},
        "type": libs.EVENT,
        "properties": {"product": "bottle", "amount": 5},
        "timestamp": time.time(),
        "command_id": command_id,
    }


def scenario_blocking(n: int) -> Result:
    """Our blocking client's ``track`` against a raw ``requests.Session.post`` of the same body."""
    import requests
    from seven_segments import SevenSegments

    with start_for("ours") as server:
        client = SevenSegments(libs.TOKEN, customer=libs.CUSTOMER, target=server.url)
        session = requests.Session()
        url = server.url + "/crm/events"
        headers = {"Content-Type": "application/json"}
        counter = iter(range(10**9))

        def raw() -> None:
            response = session.post(url, data=json.dumps(command_body(f"raw{next(counter)}")), headers=headers)
            response.raise_for_status()

        def ours() -> None:
            client.track(libs.EVENT, properties={"product": "bottle", "amount": 5})

        raw(), ours()  # connect both
        ours_ns: List[int] = []
        raw_ns: List[int] = []
        block = 50
        for _ in range(max(1, n // block)):  # alternate blocks so that noise hits both alike
            ours_ns += time_calls(ours, block)
            raw_ns += time_calls(raw, block)
        result: Result = {"calls": len(ours_ns), "server": server.kind}
        result.update({f"ours_{k}": v for k, v in percentiles_us(ours_ns).items()})
        result.update({f"raw_{k}": v for k, v in percentiles_us(raw_ns).items()})
        result["ratio_median"] = round(result["ours_median_us"] / result["raw_median_us"], 3)
        return result


def scenario_cli(n: int) -> Result:
    """Wall time of the command line ``track`` against ``python -c "import requests"``."""
    script = REPO / "seven_segments.py"
    if not script.exists():
        return {"error": f"{script.name} not found"}
    with start_for("ours") as server:
        cli = [sys.executable, str(script), "track", libs.TOKEN, libs.CUSTOMER, libs.EVENT, "--target", server.url,
               "--properties", "product=bottle", "amount=5"]
        baseline = [sys.executable, "-c", "import requests"]
        env = python_env()
        cli_s: List[float] = []
        base_s: List[float] = []
        failures = []
        for _ in range(n):
            for command, out in ((cli, cli_s), (baseline, base_s)):
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, cwd=str(REPO))
                out.append(time.perf_counter() - start)
                if done.returncode != 0:
                    failures.append(done.stderr.strip()[-300:])
        arrived = server.wait("ours", n, timeout=5, stall=1)
        cli_s.sort()
        base_s.sort()
        result: Result = {
            "runs": n,
            "cli_median_ms": round(cli_s[len(cli_s) // 2] * 1000, 1),
            "import_requests_median_ms": round(base_s[len(base_s) // 2] * 1000, 1),
            "delivered": arrived["unique"],
            "failures": len(failures),
            "server": server.kind,
        }
        result["ratio"] = round(result["cli_median_ms"] / result["import_requests_median_ms"], 3)
        if failures:
            result["failure"] = failures[0]
        return result


def scenario_floors(n: int, posts: int = 300) -> Result:
    """What the hardware and the standard library cost, measured the same way as ``track``."""
    import queue

    import requests

    result: Result = {}
    result.update({f"timer_{k}": v for k, v in percentiles_us(time_calls(lambda: None, n)).items()})
    q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
    put = q.put
    item = command_body()
    result.update({f"put_{k}": v for k, v in percentiles_us(time_calls(lambda: put(item), n)).items()})
    dumps = json.dumps
    result.update({f"dumps_{k}": v for k, v in percentiles_us(time_calls(lambda: dumps(item), n)).items()})
    for prefix, server in (("post100", start_for("floors")), ("post100_sink", Server("sink"))):
        with server:
            session = requests.Session()
            headers = {"Content-Type": "application/json"}
            bodies = iter([
                json.dumps({"commands": [{"name": "crm/events", "data": command_body(f"f{i}x{j}")} for j in range(100)]}).encode()
                for i in range(posts + 1)
            ])  # encoded beforehand: the floor is the POST alone
            url = server.url + "/bulk"

            def post() -> None:
                session.post(url, data=next(bodies), headers=headers).raise_for_status()

            post()
            result.update({f"{prefix}_{k}": v for k, v in percentiles_us(time_calls(post, posts)).items()})
            result[f"{prefix}_events_per_s"] = round(100 / (result[f"{prefix}_median_us"] / 1e6), 1)
            if prefix == "post100":
                result["server"] = server.kind
    return result


# --- command line ----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> Result:
    if args.scenario == "floors":
        return scenario_floors(args.n)
    if args.scenario == "blocking":
        return scenario_blocking(args.n)
    if args.scenario == "cli":
        return scenario_cli(args.n)
    lib = libs.get(args.lib)
    if args.scenario == "caller":
        return scenario_caller(lib, args.n, args.threads)
    if args.scenario == "delivery":
        return scenario_delivery(lib, args.n)
    if args.scenario == "memory":
        return scenario_memory(lib, args.n)
    if args.scenario == "roundtrip":
        return scenario_roundtrip(lib, args.n, args.latency, args.max_seconds)
    if args.scenario == "exit":
        return scenario_exit(lib, args.n, explicit=args.explicit, down=args.down, timeout=args.child_timeout)
    raise SystemExit(f"unknown scenario {args.scenario}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark scenario for one library.")
    parser.add_argument("lib", choices=sorted(libs.LIBRARIES) + sorted(libs.EXTRAS) + ["-"])
    parser.add_argument("scenario")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--url", default="")
    parser.add_argument("--explicit", action="store_true", help="exit: call flush/shutdown before ending")
    parser.add_argument("--down", action="store_true", help="exit: point the script at a closed port")
    parser.add_argument("--child-timeout", type=float, default=60.0)
    parser.add_argument("--latency", type=float, default=0.05, help="roundtrip: seconds every answer is delayed")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="roundtrip: time allowed from the first call")
    parser.add_argument("--server", choices=["local", "sink"], default="local",
                        help="our client's server: the local server in counting-only mode, or the sink")
    args = parser.parse_args(argv)
    servers.PREFER_LOCAL_SERVER = args.server == "local"

    if args.scenario == "exit-child":
        exit_child(libs.get(args.lib), args.n, args.url, args.explicit)
        return 0  # a normal end: the library's atexit hooks run
    result = run(args)
    print("RESULT " + json.dumps(result), flush=True)
    # Leave without running the libraries' atexit hooks: a client pointed at a closed port may
    # otherwise spend its whole retry budget here. The exit scenario measures those hooks.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

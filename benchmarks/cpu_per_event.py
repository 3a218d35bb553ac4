"""CPU per delivered event, ours against two naive clients, split by thread (issue 19).

Every client tracks the same 6-property event ``--n`` times as fast as it can, to the project's local
server (``LocalServer(counting_only=True, latency=--latency)``, in its own process), then flushes;
the figure is the client process's CPU (user + system, ``resource.getrusage``) from the first call
until the server holds every event, divided by the events delivered. The split by thread comes from
``/proc/self/task/*/stat`` (utime + stime of each live thread, named through ``threading``; each
Python thread's own CPU clock where it can be read, as ``/proc`` counts whole 10 ms ticks) and, for
a thread that ended during the run (an idle sender ends; it is then gone from ``/proc``), its
``time.thread_time()`` as it ended: the caller (the main thread), the pump and the senders. Each (client, round) runs in its own process; rounds are interleaved.

Rows:

- ``ours``: the buffered client with its defaults (``orjson`` writes when installed);
- ``ours (json)``: the same with ``orjson`` made unimportable (the standard library writes);
- ``naive json`` (:class:`libs.FloorBulk`): ``deque.append`` of a tuple on the caller; one thread pops
  up to 1,000 events, makes the bulk commands' dicts, ``json.dumps``, gzip level 1, ``http.client``
  POST; no checks, no retries;
- ``naive orjson`` (:class:`libs.FloorBulkOrjson`): the same with ``orjson.dumps``;
- with ``--base DIR``, ``base ...`` rows run our client from another checkout (A/B in one run).

    python benchmarks/cpu_per_event.py --n 30000 --repeat 3
    python benchmarks/cpu_per_event.py --n 30000 --repeat 3 --latency 0.05
    python benchmarks/cpu_per_event.py --smoke          # what tests/test_benchmarks_smoke.py runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOKEN = "cpu-bench-token"
PROPERTIES = {"product": "bottle", "amount": 5, "price": 12.5, "currency": "EUR", "first": True, "coupon": None}


def _thread_cpu() -> Dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by native thread id.

    Read from ``/proc/self/task/*/stat``, whose figures are whole clock ticks (10 ms): with a dozen
    sender threads that truncation alone is microseconds per event. Where the thread's own CPU clock
    can be read (``time.pthread_getcpuclockid``), a Python thread's figure comes from it instead, to
    the nanosecond. (The kernel's thread names are cut to 15 characters, and Python before 3.14 does
    not set them: the role comes from ``threading``'s names, see ``_role``.)
    """
    import threading
    import time

    tick = os.sysconf("SC_CLK_TCK")
    out: Dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as handle:
                text = handle.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[task] = (int(fields[11]) + int(fields[12])) / tick
    clock = getattr(time, "pthread_getcpuclockid", None)
    for thread in threading.enumerate():
        if clock is not None and thread.ident is not None and str(thread.native_id) in out:
            try:
                out[str(thread.native_id)] = time.clock_gettime(clock(thread.ident))
            except OSError:  # the thread ended meanwhile: ENDED has it
                out.pop(str(thread.native_id), None)
    return out


def _role(task: str) -> str:
    """caller (the main thread), pump, senders or other, from the Python thread with that native id."""
    import threading

    if int(task) == threading.main_thread().native_id:
        return "caller"
    names = {str(thread.native_id): thread.name for thread in threading.enumerate()}
    return _role_of_name(names.get(task, ""))


def _role_of_name(name: str) -> str:
    if "worker" in name or "pump" in name:
        return "pump"
    if "sender" in name:
        return "senders"
    return "other"


#: CPU seconds of the threads that ended during the run, by role: an ended thread is gone from /proc.
ENDED: Dict[str, float] = {}


def _count_ended_threads() -> None:
    """Every thread started from now on adds its CPU to ``ENDED`` when it ends."""
    import threading
    import time

    run = threading.Thread.run

    def counted_run(self: threading.Thread) -> None:
        try:
            run(self)
        finally:
            role = _role_of_name(self.name)
            ENDED[role] = ENDED.get(role, 0.0) + time.thread_time()

    threading.Thread.run = counted_run  # type: ignore[method-assign]


def child(client: str, url: str, n: int) -> Dict[str, Any]:
    """One measured run in this process; returns its figures."""
    import gc
    import resource
    import threading
    import time

    properties = PROPERTIES
    if client.startswith("naive"):
        sys.path.insert(0, str(HERE))
        import libs

        naive = libs.get("floor_bulk_orjson" if client == "naive orjson" else "floor_bulk")
        naive.open(url)

        def run() -> None:
            event = naive.event
            for _ in range(n):
                event("purchase", "john123", dict(properties))
            naive.flush(120)
    else:
        if client.endswith("(json)"):
            sys.modules["orjson"] = None  # type: ignore[assignment]
        from seven_segments import SevenSegments

        window = client.partition(" w")[2]  # "ours w8": max_in_flight=8
        options = {"max_in_flight": int(window)} if window.isdigit() else {}
        ours = SevenSegments(TOKEN, "john123", target=url, buffered=True, **options)

        def run() -> None:
            track = ours.track
            for _ in range(n):
                track("purchase", dict(properties))
            ours.flush(120)

    gc.collect()
    _count_ended_threads()
    threads_before = _thread_cpu()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.time()
    run()
    return {"started": started, "threads_before": threads_before, "usage_before": usage.ru_utime + usage.ru_stime}


def _child_main(argv: List[str]) -> int:
    import resource
    import time

    client, url, n = argv[0], argv[1], int(argv[2])
    control = sys.stdin
    state = child(client, url, n)
    print("WAIT", flush=True)  # the parent asks the server, then says when all arrived
    arrived = json.loads(control.readline())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    after = _thread_cpu()
    cpu = usage.ru_utime + usage.ru_stime - state["usage_before"]
    split: Dict[str, float] = {}
    for task, seconds in after.items():
        role = _role(task)
        split[role] = split.get(role, 0.0) + seconds - state["threads_before"].get(task, 0.0)
    for role, seconds in ENDED.items():
        split[role] = split.get(role, 0.0) + seconds
    delivered = arrived["unique"]
    print("RESULT " + json.dumps({
        "delivered": delivered, "lost": n - delivered, "duplicates": arrived["duplicates"],
        "cpu_us_per_event": cpu / max(delivered, 1) * 1e6,
        "split_us_per_event": {role: seconds / max(delivered, 1) * 1e6 for role, seconds in split.items()},
        "wall_s": time.time() - state["started"],
    }), flush=True)
    os._exit(0)


def measure(client: str, n: int, latency: float, pythonpath: str) -> Dict[str, Any]:
    """Run ``client`` once in a child process against a fresh local server."""
    sys.path.insert(0, str(HERE))
    from servers import Server

    with Server("ours", latency=latency) as server, tempfile.TemporaryFile("w+") as errors:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pythonpath, str(HERE)]))
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", client, server.url, str(n)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True, env=env, cwd=str(REPO),
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            line = process.stdout.readline()
            if line.strip() != "WAIT":
                process.kill()
                process.wait()
                errors.seek(0)
                raise RuntimeError(f"{client}: {line!r} {errors.read()[-2000:]}")
            arrived = server.wait("ours", n, timeout=120, stall=5)
            process.stdin.write(json.dumps(arrived) + "\n")
            process.stdin.flush()
            for line in process.stdout:
                if line.startswith("RESULT "):
                    return dict(json.loads(line[7:]))
            raise RuntimeError(f"{client}: no result")
        finally:
            process.kill()
            process.wait()


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are shown)")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every server answer by this many seconds")
    parser.add_argument("--base", default="", help="also run our client from this checkout (A/B)")
    parser.add_argument("--windows", default="", help="comma-separated max_in_flight values: a row 'ours wN' each")
    parser.add_argument("--only", default="", help="comma-separated rows to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny: 2,000 events, 1 round")
    parser.add_argument("--json", default="", help="also write every run's figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.repeat = 2000, 1
    clients = ["ours", "ours (json)", "naive json"]
    try:
        import orjson  # noqa: F401
    except ImportError:
        print("orjson is not installed: no 'naive orjson' row", file=sys.stderr)
    else:
        clients.append("naive orjson")
    clients += [f"ours w{int(window)}" for window in filter(None, args.windows.split(","))]
    paths = {client: str(REPO) for client in clients}
    if args.base:
        for client in ("ours", "ours (json)"):
            paths["base " + client] = str(Path(args.base).resolve())
        clients += ["base ours", "base ours (json)"]
    if args.only:
        clients = [client for client in clients if client in {name.strip() for name in args.only.split(",")}]
    runs: Dict[str, List[Dict[str, Any]]] = {client: [] for client in clients}
    for round_number in range(args.repeat):
        for client in clients:
            result = measure(client.replace("base ", ""), args.n, args.latency, paths[client])
            runs[client].append(result)
            print(f"round {round_number + 1} {client}: {result['cpu_us_per_event']:.2f} µs/event", file=sys.stderr)
    figure = {client: _median([r["cpu_us_per_event"] for r in results]) for client, results in runs.items()}
    print(f"\nCPU per delivered event, {args.n} events of 6 properties, latency {args.latency * 1000:g} ms, "
          f"medians of {args.repeat} rounds (µs per event)\n")
    print("| client | CPU / event | caller | pump | senders | other | ratio to naive json | ratio to naive orjson | lost |")
    print("|---|---|---|---|---|---|---|---|---|")
    for client, results in runs.items():
        split = {role: _median([r["split_us_per_event"].get(role, 0.0) for r in results])
                 for role in ("caller", "pump", "senders", "other")}
        ratios = [f"{figure[client] / figure[naive]:.2f}" if naive in figure else "-" for naive in ("naive json", "naive orjson")]
        lost = max(r["lost"] for r in results)
        print(f"| {client} | {figure[client]:.2f} | {split['caller']:.2f} | {split['pump']:.2f} | "
              f"{split['senders']:.2f} | {split['other']:.2f} | {ratios[0]} | {ratios[1]} | {lost} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

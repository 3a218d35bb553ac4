"""What tracking costs a real web application (issue 13), in one command.

    python benchmarks/webapp.py                       # everything: 3 alternating rounds, medians (~25 min)
    python benchmarks/webapp.py --repeat 5 --json webapp.json
    python benchmarks/webapp.py --quick               # 1 short round (about 3 min with the peers)
    python benchmarks/webapp.py --ours-only --ks 10   # untracked, ours and the floor only

A real WSGI server, ``gunicorn -k gthread --threads 8 -w 1`` (installed into ``benchmarks/.venv``),
serves :mod:`webapp_app`: each request does about 100 µs of ordinary Python and tracks K events of 6
properties through one module-level client, at the library's defaults. The clients: the untracked app,
ours, a naive floor (:class:`libs.Floor`) and the four peers. The events go to the counting sink
(:mod:`sink`) whose answers come at once or ``--latencies`` seconds late (an API 50 ms away).

Load comes from a closed loop: ``wrk -t2 -c8`` where ``wrk`` is installed, else a Python closed loop
(2 processes, 4 keep-alive connections each). After a warm-up second, the load runs ``--duration``
seconds; then gunicorn is stopped gracefully (SIGTERM, its workers end their requests and run their exit
hooks: each client's own exit behaviour) and what reached the sink is compared with what the handler
tracked (the app writes its count at exit). Rounds alternate (every client once per condition, then
the next round, the order rotated), the ratio to the untracked app is taken within each round and
condition, and the tables show medians over rounds. Every process is bounded in time and killed with
its process group when something goes wrong.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE)]

import libs  # noqa: E402
import setup_env  # noqa: E402
from report import fmt, table  # noqa: E402
from servers import Server, closed_port_url  # noqa: E402

CLIENTS = ["untracked", "ours", "floor"] + libs.PEERS
Cell = Dict[str, Any]

WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, ' ..
    '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def kill_group(process: "subprocess.Popen[Any]", sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group ``process`` leads (started with ``start_new_session``)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- load ----------------------------------------------------------------------------------------------


def load_wrk(url: str, duration: float, connections: int, threads: int, script: Path) -> Dict[str, Any]:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
               "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    for line in done.stdout.splitlines():
        if line.startswith("WRK "):
            out = json.loads(line[4:])
            seconds = out["duration_us"] / 1e6
            errors = sum(out[k] for k in ("connect", "read", "write", "status", "timeout"))
            return {"requests": out["requests"], "seconds": seconds, "req_s": out["requests"] / seconds,
                    "p50_ms": out["p50_us"] / 1000, "p99_ms": out["p99_us"] / 1000, "p999_ms": out["p999_us"] / 1000,
                    "max_ms": out["max_us"] / 1000, "http_errors": errors, "load": "wrk"}
    raise RuntimeError(f"wrk gave no result: {(done.stderr or done.stdout)[-300:]}")


def _loop_worker(host: str, port: int, path: str, connections: int, seconds: float, out: Any) -> None:
    """One load process: ``connections`` threads, each a keep-alive connection in a closed loop."""
    import http.client

    samples: List[List[int]] = []
    errors = [0]
    end = time.perf_counter() + seconds

    def loop() -> None:
        mine: List[int] = []
        connection = http.client.HTTPConnection(host, port, timeout=10)
        clock = time.perf_counter_ns
        while time.perf_counter() < end:
            start = clock()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    errors[0] += 1
                if response.will_close:
                    connection.close()
                    connection = http.client.HTTPConnection(host, port, timeout=10)
            except Exception:
                errors[0] += 1
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=10)
            mine.append(clock() - start)
        samples.append(mine)

    threads = [threading.Thread(target=loop) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 20)
    out.send(([x for s in samples for x in s], errors[0]))


def load_python(url: str, duration: float, connections: int, processes: int) -> Dict[str, Any]:
    """A closed loop in Python where wrk is not installed (costlier per request than wrk: slower)."""
    import multiprocessing
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    context = multiprocessing.get_context("fork")
    pipes, workers = [], []
    per = max(1, connections // processes)
    started = time.perf_counter()
    for _ in range(processes):
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_loop_worker, args=(parts.hostname, parts.port, parts.path or "/", per, duration, send))
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    samples: List[int] = []
    errors = 0
    for receive, worker in zip(pipes, workers):
        if receive.poll(duration + 30):
            got, bad = receive.recv()
            samples += got
            errors += bad
        worker.join(5)
        if worker.is_alive():
            worker.kill()
    seconds = time.perf_counter() - started
    samples.sort()
    last = max(0, len(samples) - 1)

    def at(q: float) -> float:
        return samples[int(q * last)] / 1e6 if samples else float("nan")

    return {"requests": len(samples), "seconds": seconds, "req_s": len(samples) / seconds, "p50_ms": at(0.5),
            "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": samples[-1] / 1e6 if samples else float("nan"),
            "http_errors": errors, "load": "python"}


# --- one cell: one client, one K, one latency ----------------------------------------------------------


def wait_healthy(url: str, process: "subprocess.Popen[Any]", timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited at start (code {process.returncode})")
        try:
            with urllib.request.urlopen(url + "/_health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s")


def app_command(python: str, wsgi: str, port: int, threads: int) -> List[str]:
    if wsgi == "gunicorn":
        return [python, "-m", "gunicorn", "-k", "gthread", "--threads", str(threads), "-w", "1",
                "-b", f"127.0.0.1:{port}", "--chdir", str(HERE), "--graceful-timeout", "30", "--keep-alive", "5",
                "--log-level", "warning", "webapp_app:app"]
    return [python, str(HERE / "webapp_app.py"), "--port", str(port)]


def run_cell(client: str, k: int, latency: float, options: argparse.Namespace, python: str) -> Cell:
    """Serve the app with ``client``, load it, stop it gracefully, count what arrived."""
    lib = "none" if client == "untracked" else client
    server_kind = "ours" if (client == "ours" and options.ours_server == "local") else "sink"
    server = Server(server_kind, latency=latency)
    workdir = Path(tempfile.mkdtemp(prefix="bench-webapp-"))
    app: Optional["subprocess.Popen[Any]"] = None
    try:
        port = int(closed_port_url().rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        count_file = workdir / "count.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE), env.get("PYTHONPATH", "")]))
        env.pop("POSTHOG_CAPTURE_MODE", None)
        env.update(BENCH_CLIENT=lib, BENCH_K=str(k), BENCH_URL=server.url, BENCH_COUNT_FILE=str(count_file))
        app_log = open(workdir / "app.log", "w+")
        app = subprocess.Popen(app_command(python, options.wsgi, port, options.threads), env=env, cwd=str(REPO),
                               stdout=app_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_healthy(url, app, 30)
        page = url + "/checkout"
        if options.load == "wrk":
            script = workdir / "report.lua"
            script.write_text(WRK_SCRIPT)
            load_wrk(page, options.warmup, options.connections, 2, script)
            measured = load_wrk(page, options.duration, options.connections, 2, script)
        else:
            load_python(page, options.warmup, options.connections, 2)
            measured = load_python(page, options.duration, options.connections, 2)
        stop_started = time.perf_counter()
        kill_group(app, signal.SIGTERM)  # gunicorn: graceful stop; the worker runs its exit hooks
        try:
            app.wait(timeout=options.stop_timeout)
            killed = False
        except subprocess.TimeoutExpired:
            kill_group(app, signal.SIGKILL)
            app.wait(10)
            killed = True
        stop_s = time.perf_counter() - stop_started
        counts = json.loads(count_file.read_text()) if count_file.exists() else {}
        arrived = server.wait(lib, int(counts.get("tracked", 0)), timeout=max(1.0, 3 * latency), stall=0.5) \
            if lib != "none" else {"unique": 0, "duplicates": 0}
        cell: Cell = dict(measured)
        tracked = counts.get("tracked")
        cell.update(client=client, k=k, latency_s=latency, stop_s=round(stop_s, 3), killed=killed,
                    served=counts.get("requests"), tracked=tracked, refused=counts.get("refused"),
                    received=arrived["unique"], duplicates=arrived["duplicates"], server=server.kind,
                    wsgi=options.wsgi)
        cell["lost"] = (tracked - arrived["unique"]) if tracked is not None else None
        cell["lost_pct"] = (100.0 * cell["lost"] / tracked) if tracked else 0.0 if tracked == 0 else None
        if tracked is None:
            app_log.seek(0)
            cell["note"] = "the app wrote no count (killed?): " + app_log.read()[-200:].replace("\n", " ")
        return cell
    except Exception as exc:
        return {"client": client, "k": k, "latency_s": latency, "error": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        if app is not None and app.poll() is None:
            kill_group(app, signal.SIGKILL)
            try:
                app.wait(10)
            except subprocess.TimeoutExpired:
                pass
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- rounds, medians, tables -----------------------------------------------------------------------------


def condition_key(k: int, latency: float) -> str:
    return f"K={k}, {round(latency * 1000)} ms"


def api_text(latency: float) -> str:
    return "at once" if latency == 0 else f"{round(latency * 1000)} ms away"


def median(values: List[Any]) -> Optional[float]:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    return statistics.median(numbers) if numbers else None


def aggregate(raw: Dict[str, Dict[str, List[Cell]]]) -> Dict[str, Dict[str, Cell]]:
    """Per condition and client: medians over rounds, with each round's ratio to its untracked app."""
    out: Dict[str, Dict[str, Cell]] = {}
    for condition, by_client in raw.items():
        base = by_client.get("untracked", [])
        out[condition] = {}
        for client, cells in by_client.items():
            ratios = []
            for index, cell in enumerate(cells):
                if index < len(base) and "error" not in cell and "error" not in base[index] and base[index]["req_s"]:
                    ratios.append(cell["req_s"] / base[index]["req_s"])
            good = [c for c in cells if "error" not in c]
            if not good:
                out[condition][client] = {"error": cells[-1].get("error", "not run") if cells else "not run"}
                continue
            agg: Cell = {key: median([c.get(key) for c in good]) for key in
                         ("req_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "tracked", "received", "lost", "lost_pct",
                          "duplicates", "refused", "stop_s", "http_errors")}
            agg["ratio"] = median(ratios)
            agg["ratios"] = [round(r, 3) for r in ratios]
            agg["lost_max"] = max((c.get("lost") or 0) for c in good)
            agg["killed"] = any(c.get("killed") for c in good)
            agg["rounds"] = len(good)
            agg["failed_rounds"] = len(cells) - len(good)
            agg["notes"] = sorted({c["note"] for c in good if c.get("note")})
            out[condition][client] = agg
    return out


def lost_text(cell: Cell) -> str:
    if cell.get("lost") is None:
        return "unknown"
    text = "0" if not cell["lost"] else f"{fmt(cell['lost'])} ({cell['lost_pct']:.1f}%)"
    if cell.get("lost_max") and cell["lost_max"] != cell["lost"]:
        text += f", max {fmt(cell['lost_max'])}"
    if cell.get("duplicates"):
        text += f", {fmt(cell['duplicates'])} duplicated"
    return text


def render(results: Dict[str, Dict[str, Cell]], conditions: List[Tuple[int, float]], clients: List[str],
           meta: Dict[str, Any]) -> str:
    summary_rows = []
    for k, latency in conditions:
        by_client = results.get(condition_key(k, latency), {})
        row = [str(k), api_text(latency)]
        for client in clients:
            if client == "untracked":
                continue
            cell = by_client.get(client, {"error": "not run"})
            if "error" in cell:
                row.append(str(cell["error"])[:60])
                continue
            text = "-" if cell.get("ratio") is None else f"{cell['ratio']:.2f}"
            if cell.get("lost"):
                text += f", lost {cell['lost_pct']:.0f}%"
            if cell.get("duplicates"):
                text += ", duplicates"
            row.append(text)
        untracked = by_client.get("untracked", {})
        row.append(fmt(untracked.get("req_s")) if "error" not in untracked else str(untracked["error"])[:60])
        summary_rows.append(row)
    tracked_clients = [c for c in clients if c != "untracked"]
    detail_rows = []
    for k, latency in conditions:
        by_client = results.get(condition_key(k, latency), {})
        for client in clients:
            cell = by_client.get(client, {"error": "not run"})
            if "error" in cell:
                detail_rows.append([str(k), api_text(latency), client, str(cell["error"])] + [""] * 8)
                continue
            detail_rows.append([
                str(k), api_text(latency), client, fmt(cell.get("req_s")),
                "-" if cell.get("ratio") is None else f"{cell['ratio']:.2f}",
                f"{fmt(cell.get('p50_ms'))} / {fmt(cell.get('p99_ms'))} / {fmt(cell.get('p999_ms'))}",
                fmt(cell.get("tracked")), fmt(cell.get("received")), lost_text(cell) if client != "untracked" else "-",
                fmt(cell.get("refused")) if cell.get("refused") else "0",
                fmt(cell.get("stop_s")) + (" (killed)" if cell.get("killed") else ""),
                ", ".join(f"{r:.2f}" for r in cell.get("ratios", [])),
            ])
    parts = [
        "## Web app: what tracking costs a gunicorn app",
        "",
        f"machine: {meta['machine']}; commit {meta['commit'] or '?'}; {meta['date']}",
        f"server: {meta['server_line']}; load: {meta['load_line']}; {meta['rounds']} round(s) of {meta['duration']:.0f} s "
        f"per cell after {meta['warmup']:.0f} s of warm-up, medians of rounds; took {meta['elapsed']:.0f} s",
        "versions: " + ", ".join(f"{name} {version or '?'}" for name, version in meta["versions"].items()),
        f"events went to: {meta['sink_line']}",
        "",
        "req/s as a ratio to the untracked app in the same round (median of the rounds; 1.00 = tracking costs nothing):",
        "",
        table(["K events per request", "API"] + tracked_clients + ["untracked req/s"], summary_rows),
        "",
        "### Detail (medians of the rounds)",
        "",
        table(["K", "API", "client", "req/s", "ratio", "latency p50 / p99 / p99.9 (ms)", "events tracked",
               "received", "lost", "calls refused", "graceful stop (s)", "ratio per round"], detail_rows),
        "",
        "events tracked include the warm-up's. lost = tracked by the handler minus received (deduplicated) by the server, counted after the app "
        "stopped gracefully (SIGTERM; each library's own exit behaviour), so it includes what a library drops at exit. "
        "\"calls refused\" = calls the library said it dropped.",
    ]
    notes = sorted({n for by_client in results.values() for cell in by_client.values() for n in cell.get("notes", [])})
    if notes:
        parts += ["", "notes: " + "; ".join(notes)]
    return "\n".join(parts)


def has_gunicorn(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import gunicorn"], capture_output=True, timeout=60)
    return probe.returncode == 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Measure what tracking costs a gunicorn web app, and print tables.")
    parser.add_argument("--repeat", type=int, default=3, help="alternating rounds (default 3); the tables show medians")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per cell (a smoke run)")
    parser.add_argument("--duration", type=float, default=0, help="seconds of load per cell (default 10; quick 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each measurement")
    parser.add_argument("--ks", default="1,10", help="events tracked per request, comma-separated (default 1,10)")
    parser.add_argument("--latencies", default="0,0.05", help="API round trips in seconds, comma-separated (default 0,0.05)")
    parser.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated, from {','.join(CLIENTS)}")
    parser.add_argument("--ours-only", action="store_true", help="only untracked, ours and the floor (no peers' venv)")
    parser.add_argument("--ours-server", choices=["sink", "local"], default="sink",
                        help="where ours sends: the sink like every client (default) or the local server (counting only)")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="load generator (auto: wrk if installed)")
    parser.add_argument("--wsgi", choices=["auto", "gunicorn", "wsgiref"], default="auto",
                        help="auto: gunicorn if installed (it is put in benchmarks/.venv), else wsgiref (smoke only)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections of the load (wrk -c)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn gthread threads")
    parser.add_argument("--stop-timeout", type=float, default=45.0, help="seconds a graceful stop may take before SIGKILL")
    parser.add_argument("--python", default="", help="interpreter of the app (default: benchmarks/.venv, or this one with --ours-only)")
    parser.add_argument("--json", metavar="FILE", help="save raw and aggregated results as JSON")
    args = parser.parse_args(argv)

    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")
    rounds = 1 if args.quick else args.repeat
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    try:
        ks = [int(x) for x in args.ks.split(",") if x.strip()]
        latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--ks must be integers and --latencies seconds, not {args.ks!r} / {args.latencies!r}")
    if not ks or min(ks) < 1 or not latencies or min(latencies) < 0:
        parser.error(f"--ks must be >= 1 and --latencies >= 0, not {args.ks!r} / {args.latencies!r}")
    clients = [c for c in args.clients.split(",") if c]
    if args.ours_only:
        clients = [c for c in clients if c in ("untracked", "ours", "floor")]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown clients {unknown}; known: {CLIENTS}")
    if "untracked" not in clients:
        clients.insert(0, "untracked")  # every ratio needs it
    peers = [c for c in clients if c in libs.PEERS]

    if args.python:
        python = args.python
    elif peers or args.wsgi == "gunicorn" or (args.wsgi == "auto" and not has_gunicorn(sys.executable)):
        failures = setup_env.ensure(peers, log=log, tools=[] if args.wsgi == "wsgiref" else ["gunicorn"])
        for failed, error in failures.items():
            log(f"{failed}: {error}")
        clients = [c for c in clients if c not in failures]
        python = str(setup_env.venv_python())
    else:
        python = sys.executable  # no peers, and this interpreter has gunicorn or wsgiref was asked for
    if args.wsgi == "auto":
        args.wsgi = "gunicorn" if has_gunicorn(python) else "wsgiref"
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"

    conditions = [(k, latency) for latency in latencies for k in ks]
    raw: Dict[str, Dict[str, List[Cell]]] = {condition_key(k, lat): {c: [] for c in clients} for k, lat in conditions}
    started = time.perf_counter()
    for round_index in range(rounds):
        for k, latency in conditions:
            shift = round_index % len(clients)
            order = clients[shift:] + clients[:shift]  # rotate, so that no client always runs first
            for client in order:
                log(f"[round {round_index + 1}/{rounds}] K={k} API {api_text(latency)}: {client} ...")
                cell = run_cell(client, k, latency, args, python)
                raw[condition_key(k, latency)][client].append(cell)
                if "error" in cell:
                    log(f"    {cell['error']}")
                else:
                    log(f"    {cell['req_s']:.0f} req/s, p99 {cell['p99_ms']:.1f} ms, tracked {cell.get('tracked')}, "
                        f"received {cell.get('received')}, stop {cell['stop_s']:.1f} s")
    results = aggregate(raw)

    import run as run_module  # the machine line and the versions, as run.py prints them

    info = run_module.machine()
    versions = setup_env.versions(python, ["ours"] + peers)
    if "wrk" == args.load:
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
        load_line = f"{wrk_version or 'wrk'} -t2 -c{args.connections} (closed loop)"
    else:
        load_line = f"Python closed loop, 2 processes, {args.connections} keep-alive connections"
    if args.wsgi == "gunicorn":
        gunicorn_version = subprocess.run([python, "-c", "import gunicorn; print(gunicorn.__version__)"],
                                          capture_output=True, text=True).stdout.strip()
        server_line = f"gunicorn {gunicorn_version} -k gthread --threads {args.threads} -w 1"
    else:
        server_line = "wsgiref, threaded (gunicorn not installed: NOT representative of a real deployment)"
    sink_line = ("the counting sink for every client" if args.ours_server == "sink"
                 else "ours to the local server (counting only), the others to the counting sink")
    meta = {"machine": f"{info['cpu']}, {info['cores']} cores, {info['implementation']} {info['python']}",
            "commit": info["commit"], "date": info["date"], "server_line": server_line, "load_line": load_line,
            "rounds": rounds, "duration": args.duration, "warmup": args.warmup, "elapsed": time.perf_counter() - started,
            "versions": {c: versions.get(c, "") for c in ["ours"] + peers}, "sink_line": sink_line}
    print(render(results, conditions, clients, meta))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results, "raw": raw}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

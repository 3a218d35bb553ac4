"""What tracking costs a real web application (issue 13), in one command.

    python benchmarks/webapp.py                       # everything: 3 alternating rounds, medians (~17 min)
    python benchmarks/webapp.py --repeat 5 --json webapp.json
    python benchmarks/webapp.py --quick               # 1 short round (about 3 min with the peers)
    python benchmarks/webapp.py --repeat 5 --duration 6   # more, shorter turns: steadier on a noisy machine
    python benchmarks/webapp.py --ours-only --ks 10   # untracked, ours and the two floors only

A real WSGI server, ``gunicorn -k gthread --threads 8 -w 1`` (installed into ``benchmarks/.venv``),
serves :mod:`webapp_app`: each request does about 100 µs of ordinary Python and tracks K events of 6
properties through one module-level client, at the library's defaults. The clients: the untracked app,
ours, the naive floor (:class:`libs.Floor`, ``json.dumps``) and the same with ``orjson.dumps``
(:class:`libs.FloorOrjson`), and the four peers. The events go to the counting sink
(:mod:`sink`) whose answers come at once or ``--latencies`` seconds late (an API 50 ms away).

Load comes from a closed loop: ``wrk -t2 -c8`` where ``wrk`` is installed, else a Python closed loop
(2 processes, 4 keep-alive connections each). Per condition (K, latency) every client's app runs at
once; after a warm-up second each, the load visits them in turn, ``--duration`` seconds each,
``--repeat`` rounds, the order rotated, so that each tracked app is measured seconds from the untracked
one and the ratio of each round is taken between turns that close. Then each gunicorn is stopped
gracefully (SIGTERM: its worker ends its requests and runs its exit hooks, each client's own exit
behaviour) and what reached the sink is compared with what the handler tracked (the app writes its
count at exit). The tables show medians of the rounds. Every process is bounded in time and killed
with its process group when something goes wrong.
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

CLIENTS = ["untracked", "ours", "floor", "floor_orjson"] + libs.PEERS
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


# --- one condition: one K, one latency, every client -------------------------------------------------


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


class App:
    """One running app (gunicorn, or wsgiref) with one client, in its own process group."""

    def __init__(self, client: str, k: int, server: Server, options: argparse.Namespace, python: str, workdir: Path) -> None:
        self.client = client
        self.lib = "none" if client == "untracked" else client
        self.server = server
        self.count_file = workdir / f"count-{client}.json"
        self.log = open(workdir / f"app-{client}.log", "w+")
        port = int(closed_port_url().rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(HERE), env.get("PYTHONPATH", "")]))
        env.pop("POSTHOG_CAPTURE_MODE", None)  # PostHog's default wire protocol
        env.update(BENCH_CLIENT=self.lib, BENCH_K=str(k), BENCH_URL=server.url, BENCH_COUNT_FILE=str(self.count_file))
        self.process = subprocess.Popen(app_command(python, options.wsgi, port, options.threads), env=env, cwd=str(REPO),
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float) -> Dict[str, Any]:
        """SIGTERM (gunicorn's graceful stop: requests end, exit hooks run); SIGKILL after ``timeout``."""
        started = time.perf_counter()
        kill_group(self.process, signal.SIGTERM)
        killed = False
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.process, signal.SIGKILL)
            self.process.wait(10)
            killed = True
        out: Dict[str, Any] = {"stop_s": round(time.perf_counter() - started, 3), "killed": killed}
        if self.count_file.exists():
            counts = json.loads(self.count_file.read_text())
            out.update({key: counts.get(key) for key in ("requests", "tracked", "refused")})
        else:
            self.log.seek(0)
            out["note"] = f"{self.client}: the app wrote no count (killed?): " + self.log.read()[-200:].replace("\n", " ")
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            kill_group(self.process, signal.SIGKILL)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


def load(url: str, seconds: float, options: argparse.Namespace, script: Path) -> Dict[str, Any]:
    if options.load == "wrk":
        return load_wrk(url, seconds, options.connections, 2, script)
    return load_python(url, seconds, options.connections, 2)


def run_condition(k: int, latency: float, clients: List[str], rounds: int, options: argparse.Namespace,
                  python: str) -> Dict[str, Cell]:
    """Every client's app runs at once (idle but for its turn); the load visits them in turn, ``rounds``
    times, the order rotated each round, so that the untracked app is measured seconds before or after
    each tracked one. Before a turn, the previous app's client is given time to finish sending (up to
    ``--drain-timeout``: its server's count stops growing for 0.3 s), so that its background work does
    not fall on the next app's turn. Then every app is stopped gracefully and what arrived is counted."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-webapp-"))
    servers: Dict[str, Server] = {}
    apps: Dict[str, App] = {}
    out: Dict[str, Cell] = {c: {"client": c, "k": k, "latency_s": latency, "slices": [], "drain_s": []} for c in clients}
    script = workdir / "report.lua"
    script.write_text(WRK_SCRIPT)
    try:
        servers["sink"] = Server("sink", latency=latency)
        if "ours" in clients and options.ours_server == "local":
            servers["ours"] = Server("ours", latency=latency)
        for client in clients:
            server = servers["ours"] if (client == "ours" and "ours" in servers) else servers["sink"]
            try:
                apps[client] = App(client, k, server, options, python, workdir)
            except Exception as exc:
                out[client]["error"] = f"{type(exc).__name__}: {exc}"[:200]
        for client, app in list(apps.items()):
            try:
                wait_healthy(app.url, app.process, 30)
                load(app.url + "/checkout", options.warmup, options, script)  # warm-up
            except Exception as exc:
                out[client]["error"] = f"{type(exc).__name__}: {exc}"[:200]
                app.kill()
                del apps[client]
        live = [c for c in clients if c in apps]
        for round_index in range(rounds):
            shift = round_index % max(1, len(live))
            for client in live[shift:] + live[:shift]:
                app = apps[client]
                try:
                    measured = load(app.url + "/checkout", options.duration, options, script)
                except Exception as exc:
                    measured = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                measured["round"] = round_index
                out[client]["slices"].append(measured)
                if app.lib != "none":
                    drained = time.perf_counter()
                    app.server.wait(app.lib, 10**12, timeout=options.drain_timeout, stall=max(0.3, 3 * latency))
                    out[client]["drain_s"].append(round(time.perf_counter() - drained, 3))
                text = (f"{measured['req_s']:.0f} req/s, p99 {measured['p99_ms']:.1f} ms" if "error" not in measured
                        else measured["error"])
                log(f"  [round {round_index + 1}/{rounds}] K={k} API {api_text(latency)}: {client}: {text}")
        for client in live:
            app = apps.pop(client)
            try:
                out[client].update(app.stop(options.stop_timeout))
            finally:
                app.kill()
            if app.lib != "none":
                arrived = app.server.wait(app.lib, int(out[client].get("tracked", 0)), timeout=max(1.0, 3 * latency), stall=0.5)
                out[client].update(received=arrived["unique"], duplicates=arrived["duplicates"], server=app.server.kind)
            log(f"  K={k} API {api_text(latency)}: {client} stopped in {out[client].get('stop_s')} s, tracked "
                f"{out[client].get('tracked')}, received {out[client].get('received')}")
        return out
    finally:
        for app in apps.values():
            app.kill()
        for server in servers.values():
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)


# --- medians, tables -------------------------------------------------------------------------------------


def condition_key(k: int, latency: float) -> str:
    return f"K={k}, {round(latency * 1000)} ms"


def api_text(latency: float) -> str:
    return "at once" if latency == 0 else f"{round(latency * 1000)} ms away"


def median(values: List[Any]) -> Optional[float]:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    return statistics.median(numbers) if numbers else None


def aggregate(raw: Dict[str, Dict[str, Cell]]) -> Dict[str, Dict[str, Cell]]:
    """Per condition and client: medians over rounds, with each round's ratio to the untracked app's turn
    of the same round."""
    out: Dict[str, Dict[str, Cell]] = {}
    for condition, by_client in raw.items():
        base = {s["round"]: s for s in by_client.get("untracked", {}).get("slices", []) if "error" not in s}
        out[condition] = {}
        for client, cell in by_client.items():
            if "error" in cell:
                out[condition][client] = {"error": cell["error"]}
                continue
            good = [s for s in cell["slices"] if "error" not in s]
            if not good:
                errors = [s["error"] for s in cell["slices"]]
                out[condition][client] = {"error": errors[-1] if errors else "not run"}
                continue
            ratios = [s["req_s"] / base[s["round"]]["req_s"] for s in good if s["round"] in base and base[s["round"]]["req_s"]]
            agg: Cell = {key: median([s.get(key) for s in good]) for key in
                         ("req_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "http_errors")}
            agg.update({key: cell.get(key) for key in ("received", "duplicates", "refused", "stop_s", "killed", "server")})
            # the app counts the tracking calls that returned: accepted ("tracked") and refused; both were tracked
            accepted = cell.get("tracked")
            if accepted is None or cell.get("received") is None:
                agg.update(tracked=None, lost=None, lost_pct=None)
            else:
                tracked = accepted + (cell.get("refused") or 0)
                agg.update(tracked=tracked, lost=tracked - cell["received"],
                           lost_pct=100.0 * (tracked - cell["received"]) / tracked if tracked else 0.0)
            agg["drain_s"] = median(cell.get("drain_s", []))
            agg["ratio"] = median(ratios)
            agg["ratios"] = [round(r, 3) for r in ratios]
            agg["rounds"] = len(good)
            agg["failed_rounds"] = len(cell["slices"]) - len(good)
            agg["notes"] = [cell["note"]] if cell.get("note") else []
            out[condition][client] = agg
    return out


def lost_text(cell: Cell) -> str:
    if cell.get("lost") is None:
        return "unknown"
    text = "0" if not cell["lost"] else f"{fmt(cell['lost'])} ({cell['lost_pct']:.1f}%)"
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
                pct = cell["lost_pct"]
                text += f", lost {pct:.0f}%" if pct >= 1 else f", lost {pct:.1f}%"
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
                detail_rows.append([str(k), api_text(latency), client, str(cell["error"])] + [""] * 9)
                continue
            detail_rows.append([
                str(k), api_text(latency), client, fmt(cell.get("req_s")),
                "-" if cell.get("ratio") is None else f"{cell['ratio']:.2f}",
                f"{fmt(cell.get('p50_ms'))} / {fmt(cell.get('p99_ms'))} / {fmt(cell.get('p999_ms'))}",
                fmt(cell.get("tracked")), fmt(cell.get("received")), lost_text(cell) if client != "untracked" else "-",
                fmt(cell.get("refused")) if cell.get("refused") else "0",
                "-" if client == "untracked" else fmt(cell.get("drain_s")),
                fmt(cell.get("stop_s")) + (" (killed)" if cell.get("killed") else ""),
                ", ".join(f"{r:.2f}" for r in cell.get("ratios", [])),
            ])
    parts = [
        "## Web app: what tracking costs a gunicorn app",
        "",
        f"machine: {meta['machine']}; commit {meta['commit'] or '?'}; {meta['date']}",
        f"server: {meta['server_line']}; load: {meta['load_line']}; every client's app up at once, each loaded "
        f"{meta['duration']:g} s in its turn, {meta['rounds']} round(s) (order rotated), after {meta['warmup']:g} s of "
        f"warm-up each; medians of rounds; took {meta['elapsed']:.0f} s",
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
               "received", "lost", "calls refused", "sending after a turn (s)", "graceful stop (s)", "ratio per round"],
              detail_rows),
        "",
        "events tracked = tracking calls that returned in the handler (the warm-up's included), accepted or refused. "
        "lost = tracked minus received (deduplicated) by the server, counted after the app "
        "stopped gracefully (SIGTERM; each library's own exit behaviour), so it includes the calls a library refused "
        "(\"calls refused\": what it said it dropped) and what it drops at exit.",
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
    parser.add_argument("--ours-only", action="store_true", help="only untracked, ours and the two floors (no peers' venv)")
    parser.add_argument("--ours-server", choices=["sink", "local"], default="sink",
                        help="where ours sends: the sink like every client (default) or the local server (counting only)")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="load generator (auto: wrk if installed)")
    parser.add_argument("--wsgi", choices=["auto", "gunicorn", "wsgiref"], default="auto",
                        help="auto: gunicorn if installed (it is put in benchmarks/.venv), else wsgiref (smoke only)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections of the load (wrk -c)")
    parser.add_argument("--threads", type=int, default=8, help="gunicorn gthread threads")
    parser.add_argument("--stop-timeout", type=float, default=45.0, help="seconds a graceful stop may take before SIGKILL")
    parser.add_argument("--drain-timeout", type=float, default=10.0,
                        help="after its turn, how long a client may keep sending before the next app's turn starts")
    parser.add_argument("--python", default="", help="interpreter of the app (default: benchmarks/.venv, or this one with --ours-only)")
    parser.add_argument("--json", metavar="FILE", help="save raw and aggregated results as JSON")
    parser.add_argument("--from-json", metavar="FILE", help="print the tables of a saved --json file; run nothing")
    args = parser.parse_args(argv)
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        meta, raw_saved = saved["meta"], saved["raw"]
        conditions_saved = [(next(iter(c.values()))["k"], next(iter(c.values()))["latency_s"]) for c in raw_saved.values()]
        clients_saved = list(next(iter(raw_saved.values())))
        print(render(aggregate(raw_saved), conditions_saved, clients_saved, meta))
        return 0

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
        clients = [c for c in clients if c in ("untracked", "ours", "floor", "floor_orjson")]
    unknown = [c for c in clients if c not in CLIENTS]
    if unknown:
        parser.error(f"unknown clients {unknown}; known: {CLIENTS}")
    if "untracked" not in clients:
        clients.insert(0, "untracked")  # every ratio needs it
    peers = [c for c in clients if c in libs.PEERS]

    if args.python:
        python = args.python
    elif peers or args.wsgi == "gunicorn" or (args.wsgi == "auto" and not has_gunicorn(sys.executable)):
        # orjson: the naive orjson floor's encoder, and ours writes with it when installed ([fast])
        failures = setup_env.ensure(peers, log=log, tools=(["orjson"] if "floor_orjson" in clients else [])
                                    + ([] if args.wsgi == "wsgiref" else ["gunicorn"]))
        for failed, error in failures.items():
            log(f"{failed}: {error}")
        clients = [c for c in clients if c not in failures]
        python = str(setup_env.venv_python())
    else:
        python = sys.executable  # no peers, and this interpreter has gunicorn or wsgiref was asked for
    if "floor_orjson" in clients and subprocess.run([python, "-c", "import orjson"], capture_output=True,
                                                    timeout=60).returncode != 0:
        log(f"floor_orjson: orjson is not installed in {python}")
        clients.remove("floor_orjson")
    if args.wsgi == "auto":
        args.wsgi = "gunicorn" if has_gunicorn(python) else "wsgiref"
    if args.load == "auto":
        args.load = "wrk" if shutil.which("wrk") else "python"

    conditions = [(k, latency) for latency in latencies for k in ks]
    raw: Dict[str, Dict[str, Cell]] = {}
    started = time.perf_counter()
    for k, latency in conditions:
        log(f"K={k}, API {api_text(latency)}: starting {len(clients)} apps ({', '.join(clients)})")
        raw[condition_key(k, latency)] = run_condition(k, latency, clients, rounds, args, python)
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

"""Where tracking's cost goes in the web app: a GIL profile of the gunicorn worker, in one command.

    python benchmarks/webapp_profile.py                     # ours, K=10, API 50 ms away, 8 s of samples
    python benchmarks/webapp_profile.py --client floor --latency 0 --seconds 12

Runs the app of :mod:`webapp` (``gunicorn -k gthread --threads 8 -w 1`` serving :mod:`webapp_app`,
from ``benchmarks/.venv``) with one client sending to the counting sink, loads it with ``wrk -t2 -c8``
(or the Python closed loop of :mod:`webapp` where ``wrk`` is missing), and samples the worker with
``py-spy record --gil`` (installed into ``benchmarks/.venv`` if missing; it needs permission to read
another process's memory, as root or with ``ptrace`` allowed). Only samples taken while a thread held
the GIL count, so the shares are of the interpreter's time. Prints the share of each kind of thread,
what ``track`` spends its time in on the request threads, and the innermost functions of our
background threads.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Counter, List, Tuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import setup_env  # noqa: E402
from servers import Server, closed_port_url  # noqa: E402
from webapp import app_command  # noqa: E402


def thread_kind(thread: str, frames: List[str]) -> str:
    """Which kind of thread a sampled stack belongs to."""
    text = " ".join(frames)
    if "ThreadPoolExecutor" in thread:
        return "request threads (the app's handlers)"
    named = {"seven-segments-worker": "ours: pump thread", "seven-segments-sender": "ours: sender threads",
             "seven-segments-watchdog": "ours: watchdog"}
    if thread in named:
        return named[thread]
    if "_buffered/pump.py" in text or "Core._run" in text:
        return "ours: pump thread"
    if "_buffered/sender.py" in text:
        return "ours: sender threads"
    if "seven_segments/watchdog.py" in text:
        return "ours: watchdog"
    if "libs.py" in text:
        return "floor or peer: its background threads"
    return f"other: {thread}"


def summarize(raw: Path, top: int) -> str:
    """The profile's shares, from py-spy's raw (collapsed-stack) output."""
    kinds: Counter[str] = collections.Counter()
    in_track: Counter[str] = collections.Counter()
    background: Counter[Tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        thread, _, frames_text = stack.partition(": ")
        names = frames_text.split(";")
        thread_name, frames = names[0], [re.sub(r" \(.*", "", frame) for frame in names[1:]]
        kind = thread_kind(thread_name, names[1:])
        kinds[kind] += count
        if "SevenSegments.track" in frames:
            below = frames[frames.index("SevenSegments.track") + 1 :]
            in_track[below[0] if below else "track itself (with the C functions it calls)"] += count
        elif kind.startswith("ours") or kind.startswith("floor"):
            background[(kind, frames[-1] if frames else "?")] += count
    if not total:
        return "no samples (py-spy could not read the worker?)"
    lines = [f"{total} samples with the GIL held", "", "| thread | share of the interpreter's time |", "|---|---|"]
    lines += [f"| {kind} | {count / total:.1%} |" for kind, count in kinds.most_common()]
    if in_track:
        lines += ["", "| inside `track` (request threads) | share |", "|---|---|"]
        lines += [f"| {name} | {count / total:.1%} |" for name, count in in_track.most_common(top)]
    if background:
        lines += ["", "| background thread: innermost function | share |", "|---|---|"]
        lines += [f"| {kind}: {name} | {count / total:.1%} |" for (kind, name), count in background.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", default="ours", help="ours (default), floor or a peer: segment, posthog, mixpanel, amplitude")
    parser.add_argument("--k", type=int, default=10, help="events tracked per request (default 10)")
    parser.add_argument("--latency", type=float, default=0.05, help="API round trip in seconds (default 0.05)")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of samples (default 8)")
    parser.add_argument("--rate", type=int, default=250, help="samples per second (default 250)")
    parser.add_argument("--top", type=int, default=8, help="rows per table (default 8)")
    args = parser.parse_args()

    peers = [args.client] if args.client not in ("ours", "floor") else []
    failures = setup_env.ensure(peers, log=lambda text: print(text, file=sys.stderr), tools=["gunicorn", "py-spy"])
    if failures:
        print(f"cannot install: {failures}", file=sys.stderr)
        return 2
    python = str(setup_env.venv_python())
    py_spy = str(Path(python).parent / "py-spy")
    workdir = Path(tempfile.mkdtemp(prefix="webapp-profile-"))
    sink = Server("sink", latency=args.latency)
    port = int(closed_port_url().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(HERE)]), BENCH_CLIENT=args.client,
               BENCH_K=str(args.k), BENCH_URL=sink.url, BENCH_COUNT_FILE=str(workdir / "count.json"))
    log = open(workdir / "app.log", "w+")
    app = subprocess.Popen(app_command(python, "gunicorn", port, 8), env=env, cwd=str(REPO), stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    load = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/_health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or app.poll() is not None:
                    raise RuntimeError(f"the app did not start: {(workdir / 'app.log').read_text()[-500:]}")
                time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(app.pid)], capture_output=True, text=True, timeout=10).stdout.split()
        if not children:
            raise RuntimeError("no gunicorn worker found")
        worker = children[0]
        seconds = args.seconds + 3
        if shutil.which("wrk"):
            load = subprocess.Popen(["wrk", "-t2", "-c8", f"-d{round(seconds)}s", url + "/"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        else:  # webapp's Python closed loop: 2 processes, 8 connections
            load = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); "
                                     f"from webapp import load_python; load_python({url!r}, {seconds}, 8, 2)"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)  # warm up
        raw = workdir / "gil.txt"
        done = subprocess.run([py_spy, "record", "--pid", worker, "--gil", "--threads", "--format", "raw", "--nonblocking",
                               "--rate", str(args.rate), "--duration", str(round(args.seconds)), "-o", str(raw)],
                              capture_output=True, text=True, timeout=args.seconds + 60)
        if done.returncode != 0 or not raw.exists():
            print(f"py-spy failed: {(done.stderr or done.stdout)[-500:]}", file=sys.stderr)
            return 1
        print(f"## GIL profile: {args.client}, K={args.k}, API {round(args.latency * 1000)} ms away "
              f"(py-spy --gil, {args.rate}/s for {args.seconds:g} s)\n")
        print(summarize(raw, args.top))
        return 0
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(10)
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGTERM)
            try:
                app.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(app.pid, signal.SIGKILL)
                app.wait(10)
        sink.close()
        log.close()


if __name__ == "__main__":
    sys.exit(main())

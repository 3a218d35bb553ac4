"""``seven-segments import`` killed with SIGKILL at random points and run again: every line arrives once.

A million events by default, as a real backfill; ``SEVEN_SEGMENTS_IMPORT_LINES`` sets another count
(fewer for a quicker run: the same kills, resumes and faults).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from seven_segments.testing import LocalServer

from ..conftest import TOKEN, wait_until

LINES = int(os.environ.get("SEVEN_SEGMENTS_IMPORT_LINES", "1000000"))
ROOT = Path(__file__).resolve().parents[2]


def write_events(path: Path, count: int) -> None:
    """``count`` small events, one a line (written in blocks: a million take about a second)."""
    template = '{"type":"view","customer":"c%d","properties":{"n":%d},"timestamp":%d}\n'
    with open(path, "w") as stream:
        for start in range(0, count, 10000):
            stream.write("".join(template % (i % 1000, i, 1700000000 + i) for i in range(start, min(count, start + 10000))))


def start_import(path: Path, url: str) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, SEVEN_SEGMENTS_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "seven_segments", "import", str(path), "--target", url, "--progress-interval", "600",
         "--retry-deadline", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def confirmed_line(checkpoint: Path) -> int:
    """The last line the checkpoint confirms (0 before there is one); it is replaced atomically."""
    try:
        return int(json.loads(checkpoint.read_text())["confirmed_line"])
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(300)
def test_import_killed_twice_delivers_every_line_exactly_once(tmp_path: Path) -> None:
    source = tmp_path / "events.jsonl"
    write_events(source, LINES)
    rng = random.Random(os.environ.get("SEVEN_SEGMENTS_IMPORT_SEED", str(time.time_ns())))
    checkpoint = Path(str(source) + ".import-checkpoint.json")
    with LocalServer(counting_only=True) as server:
        # Failing, dropped (before and after applying), rate-limited requests, and commands answered "retry".
        server.faults.random(rate=0.1, retry_after=0)
        kill_points: List[int] = sorted(rng.sample(range(LINES * 3 // 10, LINES * 8 // 10), 2))
        confirmed: List[int] = []
        for point in kill_points:
            process = start_import(source, server.url)
            # Killed past a random number of events and once its checkpoint moved (so that resuming shows).
            previous = confirmed[-1] if confirmed else 0
            assert wait_until(
                lambda point=point, process=process, previous=previous: process.poll() is not None or (
                    server.stats()["events"] >= point and confirmed_line(checkpoint) > previous),
                timeout=120,
            )
            assert process.poll() is None, process.communicate()
            process.send_signal(signal.SIGKILL)
            process.communicate()
            assert process.returncode == -signal.SIGKILL
            confirmed.append(confirmed_line(checkpoint))
        process = start_import(source, server.url)
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, (out, err)
        stats = server.stats()
        assert stats["events"] == LINES  # each line once: the server applies a command_id only once
        assert stats["faults_injected"] > 0
        assert b"%d lines, %d delivered, 0 rejected" % (LINES, LINES) in out
        assert json.loads(checkpoint.read_text())["finished"] is True
        assert 0 < confirmed[0] < confirmed[1] <= LINES  # each run resumed where the last one stood
        resent = stats["commands"]["ok"] - LINES
        print(f"kills at {kill_points}, checkpoints at {confirmed}, {stats['duplicates']} duplicates "
              f"({resent} commands acknowledged twice), {stats['faults_injected']} faults")

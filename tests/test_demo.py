"""The quick start's main job: ``./seven_segments.py demo`` against the local server, with faults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_the_demo_delivers_everything_through_faults_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "seven_segments.py"), "demo", "--threads", "2", "--events", "3000", "--fault-rate", "0.2"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("|") for line in result.stdout.splitlines() if line.startswith("| "))
    }
    assert rows["events tracked"] == rows["events stored by the server"] == "6000"
    assert int(rows["faults injected"]) > 0 and int(rows["commands retried"]) > 0
    assert rows["dropped"] == rows["failed"] == "0"
    assert float(rows["caller cost p50 (us)"]) > 0
    assert "nothing lost" in result.stdout

"""The package's types catch a user's mistakes: ``mypy --strict`` on small user files.

One run checks two files: one that uses the client correctly (no error allowed) and one that makes
each typed mistake once, on a line marked ``# MISTAKE``; every marked line, and only those, must be
reported. Skipped when mypy is not installed (it comes with the ``dev`` extra).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List

import pytest

pytest.importorskip("mypy")

ROOT = Path(__file__).resolve().parent.parent

CORRECT = '''
from typing import Any, Dict, List, Optional

from seven_segments import (
    AnalysisType, AuthenticatedSevenSegments, CommandDict, Customer, ErrorCallback, SevenSegments,
    SevenSegmentsError, Timestamp,
)


def report(error: SevenSegmentsError, commands: List[Dict[str, Any]]) -> None:
    pass


def redact(command: CommandDict) -> Optional[CommandDict]:
    command["properties"].pop("email", None)
    return command


on_error: ErrorCallback = report
client = SevenSegments("token", customer={"registered": "john"}, buffered=True, on_error=on_error,
                       before_send=redact, enabled=False)
who: Customer = "john123"
when: Timestamp = 1700000000.5
command_id: str = client.track("purchase", {"amount": 5}, customer=who, timestamp=when, command_id="order-1")
client.track(event_type="purchase", customer={"registered": "john", "cookie": "abc"})
update_id: str = client.update({"tier": "gold"}, customer=who, command_id="u-1")
client.identify("mary")
kind: AnalysisType = "funnel"
export = AuthenticatedSevenSegments("user", "password")
result: Dict[str, Any] = export.export_analysis(kind, {"analysis_id": "a"})
export.export_analysis("retention", {"analysis_id": "b"})
'''

MISTAKES = '''
from typing import Any, Dict, List

from seven_segments import AuthenticatedSevenSegments, SevenSegments


def report(error: str) -> None:
    pass


client = SevenSegments("token")
client.track("purchase", customer=12345)  # MISTAKE: a number is not a customer
client.update({"a": 1}, customer=["john"])  # MISTAKE: a list is not a customer
client.track("purchase", customer={"registered": 5})  # MISTAKE: ids are strings
SevenSegments("token", customer=12345)  # MISTAKE: the constructor's customer too
client.identify(12345)  # MISTAKE: identify's customer too
client.track("purchase", timestamp="2024-01-01")  # MISTAKE: a string is not a timestamp
client.track("purchase", command_id=1001)  # MISTAKE: command ids are strings
count: int = client.track("purchase")  # MISTAKE: track returns the command id, a str
SevenSegments("token", on_error=report)  # MISTAKE: on_error takes (error, commands)
SevenSegments("token", before_send=lambda command: 1)  # MISTAKE: before_send returns a command or None
export = AuthenticatedSevenSegments("user", "password")
export.export_analysis("funnell", {"analysis_id": "a"})  # MISTAKE: not an analysis type
'''


def _errors_by_file(output: str) -> Dict[str, List[int]]:
    found: Dict[str, List[int]] = {}
    for match in re.finditer(r"^(\w+)\.py:(\d+): error:", output, re.MULTILINE):
        found.setdefault(match.group(1), []).append(int(match.group(2)))
    return found


@pytest.mark.timeout(120)
def test_mypy_strict_catches_each_typed_mistake_and_passes_correct_code(tmp_path: Path) -> None:
    (tmp_path / "user_ok.py").write_text(textwrap.dedent(CORRECT))
    (tmp_path / "user_bad.py").write_text(textwrap.dedent(MISTAKES))
    marked = [number for number, line in enumerate(MISTAKES.splitlines(), 1) if "# MISTAKE" in line]
    env = dict(os.environ, MYPYPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-color-output", "--no-error-summary",
         "--cache-dir", str(tmp_path / "mypy_cache"), "user_ok.py", "user_bad.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110,
    )
    errors = _errors_by_file(run.stdout)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "user_ok" not in errors, run.stdout
    assert sorted(set(errors.get("user_bad", []))) == marked, run.stdout

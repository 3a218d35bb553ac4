"""Settlement: the one writer of counts, flush verdicts and ``on_error`` chunks (no socket, no thread)."""

from __future__ import annotations

import ast
import pathlib
from typing import Any, List, Set, Tuple

from seven_segments._buffered.batching import Batch
from seven_segments._buffered.lifecycle import Lifecycle, Phase
from seven_segments._buffered.limits import Limits
from seven_segments._buffered.pump import FlushTicket
from seven_segments._buffered.reporting import Reporter
from seven_segments._buffered.settlement import FULL, Budget, Counts, Settlement
from seven_segments.errors import ServiceUnavailable

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "seven_segments"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _settlement(keep: int = 10) -> Tuple[Settlement, List[Tuple[Any, List[Any]]]]:
    heard: List[Tuple[Any, List[Any]]] = []
    clock = FakeClock()
    lifecycle = Lifecycle()
    lifecycle.move(Phase.RUNNING)
    reporter = Reporter(lambda error, commands: heard.append((error, commands)), clock)
    return Settlement(Limits(), reporter, lifecycle, clock, keep_drops=keep), heard


def _written_names() -> Set[str]:
    """Every counter, budget field and flush verdict: what only settlement.py may write."""
    return set(vars(Counts())) | set(Budget.__slots__) | {"delivered_all", "upto", "drops"}


def _lines_of(path: pathlib.Path, class_name: str) -> Set[int]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {child.lineno for child in ast.walk(node) if hasattr(child, "lineno")}
    return set()


def test_counts_and_verdicts_are_written_in_settlement_only() -> None:
    """Read from the engine's source: no module of ``_buffered`` but settlement.py writes a count, the
    budget or a flush's verdict (a flush ticket's constructor sets its first values)."""
    guarded = _written_names()
    offenders = []
    for path in sorted((PACKAGE / "_buffered").glob("*.py")):
        if path.name == "settlement.py":
            continue
        allowed = _lines_of(path, "FlushTicket")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: List[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                while isinstance(target, ast.Subscript):
                    target = target.value
                if isinstance(target, ast.Attribute) and target.attr in guarded and node.lineno not in allowed:
                    offenders.append(f"{path.name}:{node.lineno} writes .{target.attr}")
    assert offenders == []


def test_on_error_chunks_are_queued_from_settlement_only() -> None:
    offenders = []
    for path in sorted((PACKAGE / "_buffered").glob("*.py")):
        if path.name in ("settlement.py", "reporting.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("failed", "refused", "dropped")
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "reporter"
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_taken_then_delivered_releases_the_budget_and_counts() -> None:
    settlement, _ = _settlement()
    settlement.taken(3, 300, first_seq=1)
    assert (settlement.budget.held, settlement.budget.held_bytes) == (3, 300)
    assert (settlement.budget.taken, settlement.budget.taken_bytes) == (3, 300)
    settlement.delivered(3, 300)
    snapshot = settlement.snapshot(0)
    assert (snapshot["queued"], snapshot["sent"], snapshot["batches"], snapshot["pending"]) == (3, 3, 1, 0)
    assert (settlement.budget.held, settlement.budget.held_bytes) == (0, 0)


def test_failed_marks_the_flushes_waiting_and_reaches_on_error() -> None:
    settlement, heard = _settlement()
    before, after = FlushTicket(), FlushTicket()
    settlement.flushes.queued(before)
    settlement.flushes.place(before, upto=1, kept_waiting=False)
    settlement.taken(2, 20, first_seq=1)
    settlement.flushes.queued(after)
    settlement.flushes.place(after, upto=2, kept_waiting=False)
    settlement.failed([2], [b'{"name":"crm/events","data":{"n":2}}'], ServiceUnavailable("down"))
    settlement.flushes.answer(first_unsettled=3, left_on_disk=False)
    settlement.reporter.drain()
    assert before.done.is_set() and before.delivered_all
    assert after.done.is_set() and not after.delivered_all
    assert settlement.counts.failed == 1 and len(heard) == 1 and heard[0][1][0]["data"] == {"n": 2}


def test_unconfirmed_counts_what_was_in_flight() -> None:
    settlement, heard = _settlement()
    settlement.taken(2, 20, first_seq=1)
    batch = Batch(range(1, 3), [b"{}" * 5, b"{}" * 5], 0.0)
    assert settlement.unconfirmed([batch], ServiceUnavailable("cut")) == 2
    settlement.reporter.drain()
    assert settlement.counts.unconfirmed == 2 and settlement.budget.held == 0 and len(heard) == 1


def test_dropped_commands_are_kept_for_on_error_within_bounds() -> None:
    settlement, heard = _settlement(keep=2)
    assert settlement.dropped(b'{"name":"crm/events","data":{}}', FULL) == (True, None)
    first, overflow = settlement.dropped(b'{"name":"crm/events","data":{}}', FULL)
    assert not first and overflow is not None and len(overflow) == 2
    settlement.dropped(b'{"name":"crm/events","data":{}}', FULL)
    settlement.report_drops()
    settlement.reporter.drain()
    assert settlement.snapshot(0)["dropped_queue_full"] == 3 and len(heard) == 1


def test_kept_then_read_back_moves_commands_between_disk_and_memory() -> None:
    settlement, heard = _settlement()
    settlement.taken(4, 40, first_seq=1)
    settlement.kept([1, 2, 3, 4], 40, why="down", folder="/tmp/spool")
    assert settlement.counts.kept == 4 and settlement.budget.held == 0 and heard == []
    settlement.read_back(4, 40, first_seq=5)
    assert settlement.counts.kept == 0 and settlement.budget.held == 4

"""The two stores behind one interface: memory keeps nothing, a spool keeps what it holds (no socket,
no thread, no sleep)."""

from __future__ import annotations

from typing import Any, List, Tuple

from seven_segments._buffered.batching import Batch
from seven_segments._buffered.lifecycle import Lifecycle, Phase
from seven_segments._buffered.limits import Limits
from seven_segments._buffered.reporting import Reporter
from seven_segments._buffered.settlement import Settlement
from seven_segments._buffered.store import Left, MemoryStore, Reading, SpoolStore, Spooled
from seven_segments.errors import ServiceUnavailable

from .fakes import FakeSpool



def _settlement() -> Tuple[Settlement, List[Any]]:
    heard: List[Any] = []
    lifecycle = Lifecycle()
    lifecycle.move(Phase.RUNNING)
    reporter = Reporter(lambda error, commands: heard.append(commands), lambda: 0.0)
    return Settlement(Limits(), reporter, lifecycle, lambda: 0.0, keep_drops=10), heard


def _command(n: int) -> bytes:
    return b'{"name":"crm/events","data":{"n":%d}}' % n


def test_memory_keeps_nothing_it_lets_go_of() -> None:
    settlement, _ = _settlement()
    store = MemoryStore(settlement)
    payloads = [_command(1), _command(2)]
    assert store.take(payloads, 1) is payloads  # in memory a queued command is its bytes
    assert store.let_go([1, 2], payloads, ServiceUnavailable("down")) == [0, 1]
    assert not store.has_kept and store.reading is Reading.NOTHING and store.folder is None


def test_a_spool_keeps_what_it_holds_and_reads_it_back() -> None:
    settlement, heard = _settlement()
    spool = FakeSpool()
    store = SpoolStore(settlement, spool, Limits(), "token", lambda secret: None)  # type: ignore[arg-type]
    queued = [store.admit(_command(n), 0) for n in (1, 2)] + [Spooled(_command(3), None)]
    payloads = store.take(queued, 1)
    settlement.taken(3, sum(map(len, payloads)), 1)
    store.read(1)  # nothing left by dead processes
    assert store.let_go([1, 2, 3], payloads, ServiceUnavailable("down")) == [2]  # not in the spool: failed
    assert store.has_kept and settlement.counts.kept == 2 and heard == []
    store.read_back_kept(Phase.RUNNING)
    assert store.reading is Reading.LET_GO
    assert store.read(10) == payloads[:2] and not store.has_kept
    store.settled([10, 11])
    assert spool.confirmed == [("segment", 0), ("segment", 1)]


def test_at_the_close_deadline_a_spool_keeps_all_but_what_only_memory_held() -> None:
    settlement, heard = _settlement()
    spool = FakeSpool()
    store = SpoolStore(settlement, spool, Limits(), "token", lambda secret: None)  # type: ignore[arg-type]
    queued = [store.admit(_command(1), 0), Spooled(_command(2), None)]
    payloads = store.take(queued, 1)
    settlement.taken(2, sum(map(len, payloads)), 1)
    late = [store.admit(_command(3), 0)]
    settlement.taken_late(1, len(_command(3)))
    store.close_deadline(Left([Batch(range(1, 3), payloads, 0.0)], [], late, 2, 1.0, ""))
    settlement.reporter.drain()
    counts = settlement.counts
    assert (counts.kept, counts.failed, counts.unsettled) == (2, 1, 0) and len(heard) == 1
    assert settlement.budget.held == 0


def test_at_the_close_deadline_memory_loses_what_is_left() -> None:
    settlement, heard = _settlement()
    store = MemoryStore(settlement)
    payloads = [_command(n) for n in (1, 2, 3)]
    settlement.taken(3, sum(map(len, payloads)), 1)
    flying, waiting = Batch(range(1, 2), payloads[:1], 0.0), Batch(range(2, 4), payloads[1:], 0.0)
    store.close_deadline(Left([flying], [waiting], [], 3, 1.0, ""))
    settlement.reporter.drain()
    counts = settlement.counts
    assert (counts.unconfirmed, counts.failed, counts.unsettled) == (1, 2, 0) and len(heard) == 2

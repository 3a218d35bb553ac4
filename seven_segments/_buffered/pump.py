"""The pump: every decision of buffered delivery, made on one thread.

One :meth:`Pump.step` takes what callers queued (giving each command, already its JSON, a sequence number),
reports drops, applies the outcomes that senders handed back, starts the batches that are due while
the window has room, answers the flushes whose commands all settled, and says how long it may sleep.
It never waits inside a step: a retried batch goes back in line with a "not before" time, and the
engine's thread sleeps until the earliest moment the pump knows of, or until woken.

Ownership: the pump's thread alone touches the line (``line.py``), the window and the store; the
outcomes of requests are applied by ``outcomes.py``; the settlement (``settlement.py``) counts, answers
flushes and reports; senders only do I/O. Every command taken is settled exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from itertools import islice
from typing import Any, Callable, Deque, List, Optional

from ..clock import Clock
from ..protocol import MAX_COMMAND_BYTES, PATH_BULK, PATH_CUSTOMERS, PATH_EVENTS
from .batching import Batch
from .lifecycle import Lifecycle, Phase
from .limits import Limits
from .line import Line
from .outcomes import Closing, Outcomes
from .retry import RetryPolicy
from .sender import Outcome
from .settlement import FlushTicket, Settlement
from .store import Left, Reading, Store
from .watch import Watch
from .window import Window

__all__ = ["FlushTicket", "Pump", "Launch"]

logger = logging.getLogger("seven_segments")

#: ``launch(number, batch, timeout, done)``: start one attempt; ``done(outcome)`` when it ends.
Launch = Callable[[int, Batch, float, Callable[[Outcome], None]], None]

#: Commands taken from the incoming queue per step, at most.
TAKE_PER_STEP = 2_000
#: Bytes of a bulk command that are not its ``data``: ``{"name":"<path>","data":`` and ``}``.
_ENVELOPE = {path: len('{"name":"' + path + '","data":}') for path in (PATH_EVENTS, PATH_CUSTOMERS)}
_LARGEST_ENVELOPE = max(_ENVELOPE.values())


def _data_size(payload: bytes) -> int:
    """The bytes of a spooled command's data as the server measures them (compact UTF-8 JSON); 0
    when it cannot be read (the server says why)."""
    try:
        data = json.loads(payload)["data"]
        return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (ValueError, KeyError, TypeError, RecursionError):
        return 0


class Pump:
    """The decisions of one engine (see the module's docstring)."""

    def __init__(
        self,
        *,
        limits: Limits,
        incoming: "Deque[Any]",
        lifecycle: Lifecycle,
        settlement: Settlement,
        launch: Launch,
        clock: Clock,
        policy: Optional[RetryPolicy] = None,
        scrub: Callable[[str], str] = lambda text: text,
        store: Optional[Store] = None,
    ) -> None:
        self.limits = limits
        self.incoming = incoming
        self.lifecycle = lifecycle
        self.settlement = settlement
        settlement.scrub = scrub
        self._launch = launch
        self.clock = clock
        self.window = Window(limits.max_in_flight)
        #: Commands held and not in flight: never sent, or to send again.
        self.line = Line(limits)
        #: Where the commands held lie: in memory only, or in a spool too (see ``store.py``).
        self.store = store if store is not None else Store(settlement)
        self.closing = Closing()
        policy = policy if policy is not None else RetryPolicy(limits.retry_deadline)
        self.outcomes = Outcomes(self.line, settlement, self.store, self.window, policy, lifecycle, clock, scrub, self.closing)
        #: How long the oldest command has waited; the stall warnings.
        self.watch = Watch(incoming, settlement, self.store, limits)
        self._number = 0
        #: Held while taking from ``incoming`` in bulk, and while emptying it (``drain_incoming``).
        self._popping = threading.Lock()
        #: Called when an outcome arrives (the engine wakes its thread).
        self.wake: Callable[[], None] = lambda: None

    # One step -----------------------------------------------------------------------------------

    def step(self) -> float:
        """Do everything that can be done now; return how long the pump may sleep (``inf``: until woken).

        Returns ``-1.0`` when a close is done: everything settled or given up.
        """
        # First: dropped commands are held outside the queue's bounds (while running, not faster than
        # on_error receives them: see reporting.DROP_CHUNKS_PER_STEP).
        self.report_drops(bounded=self.lifecycle.phase is Phase.RUNNING)
        store = self.store
        if store.reading is not Reading.NOTHING:
            self.replay()
        self.take()
        self.outcomes.apply()
        draining = self.lifecycle.phase is Phase.DRAINING
        if draining and store.has_kept and not self.closing.read_back:  # a close tries them once more
            self.closing.read_back = True
            store.read_back_kept(Phase.DRAINING)
        now = self.clock()
        if not self.incoming:
            self.settlement.progress.drained_at = now
        if draining and now >= self.closing.deadline and not self.empty:
            self.give_up()
            self.settlement.reporter.drain()
            return -1.0
        self.dispatch(now, draining)
        self.settle_tickets()
        reporter = self.settlement.reporter
        if draining:
            reporter.drain()
        else:
            reporter.drain_paced()
        if draining and self.empty and not self.incoming and not store.reading_back:
            return -1.0
        look = self.watch.look(now, self.first_unsettled)
        if self.incoming and store.reading is not Reading.DEAD_WRITERS:
            return 0.0  # more to take than one step takes
        if store.reading is not Reading.NOTHING and self._room_to_replay():
            return 0.0  # more to read from the spool (read back after an outage, since this step began)
        if reporter.drops_waiting:  # when the next chunk of drops is due
            look = min(look, max(0.0, reporter.drops_due_at - self.clock()))
        return min(look, self.sleep_for(now, draining))

    @property
    def empty(self) -> bool:
        """Nothing waits to be sent and nothing is in flight."""
        return not self.line and not self.settlement.in_flight and not self.outcomes.cut_at_close

    def sleep_for(self, now: float, draining: bool) -> float:
        """Seconds until the pump has something to do, unless woken before."""
        moment = self.closing.deadline if draining else math.inf
        window = self.window
        opens_at = window.opens_at(now)
        if window.room(len(self.settlement.in_flight), now) or opens_at is not None:
            moment = min(moment, self.line.next_moment(opens_at or now))
        return math.inf if moment == math.inf else max(0.0, moment - now)

    def first_unsettled(self) -> float:
        """The oldest sequence number not settled yet (infinity when all are)."""
        first = self.line.first()
        if self.settlement.in_flight:
            first = min(first, self.settlement.first_in_flight())
        return first

    # Taking what callers queued ---------------------------------------------------------------

    def take(self) -> None:
        """Number queued commands (their bytes, made by the callers); place flush tickets behind them."""
        incoming = self.incoming
        if not incoming or self.store.reading is Reading.DEAD_WRITERS:  # dead processes' files go first
            return
        line = self.line
        was_empty = not line.fresh
        start = line.seq
        added = 0
        with self._popping:  # a closer that gave up on this pump empties the queue meanwhile
            # Bounded, so that answers and drops are seen between takes.
            items = list(islice(iter(incoming.popleft, None), min(len(incoming), TAKE_PER_STEP)))
        # A flush counts its ticket before queuing it: with none counted, only commands were taken.
        runs = [items] if not self.settlement.counts.tickets_queued else _split_at_tickets(items)
        for run in runs:
            if type(run) is FlushTicket:
                self._place(run)
                continue
            payloads = self.store.take(run, line.seq + 1)
            size = sum(map(len, payloads))
            line.extend(payloads, size)
            added += size
        taken = line.seq - start
        if taken:
            self.settlement.taken(taken, added, start + 1)
            self.store.taken()
        if was_empty and line.fresh:
            line.oldest_at = self.clock()
        if self.settlement.flushes.tickets:
            self.settle_tickets()

    def _place(self, ticket: FlushTicket) -> None:
        # Commands let go of in an outage: a flush tries them again, and waits for them; still kept,
        # they cannot be read back now (the files of dead processes are still being read).
        self.store.read_back_kept(self.lifecycle.phase)
        self.settlement.flushes.place(ticket, self.line.seq, kept_waiting=self.store.has_kept)

    def _room_to_replay(self) -> bool:
        limits, budget = self.limits, self.settlement.budget
        return not budget.held or budget.held < limits.max_queue_size // 2 and budget.held_bytes < limits.max_queue_bytes // 2

    def replay(self) -> None:
        """Take what the store reads back (from processes that died, or let go of in an outage), before
        any new command, within half the queue's bounds (the rest waits on disk for the next step); a
        chunk at least when nothing is held, however small the bounds."""
        store = self.store
        while store.reading is not Reading.NOTHING and self._room_to_replay():
            reading = store.reading
            chunk = store.read(self.line.seq + 1)
            if chunk is None:
                break
            self._hold_read_back(chunk, replayed=reading is Reading.DEAD_WRITERS)
            if reading is Reading.LET_GO:  # queued before every flush waiting now
                self.settlement.flushes.wait_for_read_back(self.line.seq)
        if store.reading is Reading.DEAD_WRITERS and self.lifecycle.phase is Phase.DRAINING:
            store.end_reading()  # closing: what was not read stays in the spool for the next start

    def _hold_read_back(self, chunk: List[bytes], replayed: bool) -> None:
        """Number and hold a chunk read back; commands too large for the server (spooled before sizes
        were checked at the call) fail here, not split by 413s."""
        line = self.line
        first_seq = line.seq + 1
        if not line.fresh:
            line.oldest_at = self.clock()
        size = 0
        run: List[bytes] = []
        too_large: List[bytes] = []
        for payload in chunk:
            if len(payload) > MAX_COMMAND_BYTES + _LARGEST_ENVELOPE and _data_size(payload) > MAX_COMMAND_BYTES:
                line.extend(run, sum(map(len, run)))
                run = []
                seq = line.number_alone(self.clock())
                self.store.fail([seq], [payload], None, held_bytes=0)  # counted as held below
                too_large.append(payload)
                continue
            run.append(payload)
            size += len(payload)
        line.extend(run, sum(map(len, run)))
        if replayed:
            self.settlement.taken(len(chunk), size, first_seq, replayed=True)
        else:  # taken and counted before: no longer kept
            self.settlement.read_back(len(chunk), size, first_seq)
        if too_large:
            reasons = [f"the command takes {_data_size(payload)} bytes as JSON, more than {MAX_COMMAND_BYTES}" for payload in too_large]
            self.settlement.refused_before(too_large, reasons, 413, f"{PATH_BULK}: not sent, too large")

    def report_drops(self, bounded: bool = False) -> None:
        """Pass dropped commands to ``on_error`` and warn (rate-limited), each with its true reason
        (``bounded``: see ``Settlement.report_drops``); warn about commands the store could not take
        (rate-limited)."""
        self.store.say()
        self.settlement.report_drops(bounded)

    # Sending ------------------------------------------------------------------------------------

    def dispatch(self, now: float, draining: bool) -> None:
        """Start every batch that is due while the window has room."""
        window = self.window
        settlement = self.settlement
        tickets = settlement.flushes.tickets
        while window.room(len(settlement.in_flight), now):
            batch = self.line.next_batch(now, draining, tickets[-1].upto if tickets else -1)
            if batch is None:
                return
            self._number += 1
            settlement.launch(self._number, batch)
            timeout = self.limits.timeout
            if draining:
                timeout = max(0.001, min(timeout, self.closing.deadline - now))
            self._launch(self._number, batch, timeout, self._arrived)

    def _arrived(self, outcome: Outcome) -> None:
        self.outcomes.arrived.append(outcome)
        self.wake()

    # Flushes and the close ----------------------------------------------------------------------

    def settle_tickets(self) -> None:
        """Answer the flushes whose commands all settled. Commands let go of in an outage were queued
        before every flush waiting: while they are read back with room to go on, flushes wait; when
        the read-back stalls (the queue is full) or what it read is let go of again (the API is still
        down), they answer that not all was delivered."""
        store = self.store
        if not self.settlement.flushes.tickets or store.reading is Reading.LET_GO and self._room_to_replay():
            return
        self.settlement.flushes.answer(self.first_unsettled(), store.reading_back or store.has_kept)

    def begin_close(self, timeout: float) -> None:
        """A close began: deliver what is held within ``timeout`` seconds, then give up on the rest."""
        self.closing.timeout = timeout
        self.closing.deadline = self.clock() + timeout

    def give_up(self) -> None:
        """The close deadline passed: the store settles everything left (lost, or kept on disk), warning
        first, and queues ``on_error`` chunks (the caller drains them: the pump, never a closer), then
        every flush is answered. The one close path: the pump runs it at the deadline, or a closer when
        the pump does not come back (see ``Core.finish_close``)."""
        outcomes = self.outcomes
        outcomes.report_split_refusals()  # what is left of their splits is given up below
        in_flight = self.settlement.take_in_flight() + outcomes.cut_at_close
        outcomes.cut_at_close = []
        self.store.end_reading()  # what was not read back yet stays on disk (counted as kept already)
        late = self.drain_incoming()
        waiting = self.line.take_all()
        if in_flight or waiting or late:
            left = Left(in_flight, waiting, late, self.line.seq, self.closing.timeout, outcomes.last_trouble)
            self.store.close_deadline(left)
        self.settlement.flushes.answer_all(delivered_all=False)

    def drain_incoming(self) -> List[Any]:
        """Empty the incoming queue: its commands (counted as taken, not as held bytes), and its
        tickets, placed."""
        commands: List[Any] = []
        with self._popping:
            while True:
                try:
                    item = self.incoming.popleft()
                except IndexError:
                    break
                if type(item) is FlushTicket:
                    self._place(item)
                else:
                    commands.append(item)
        if commands:
            self.settlement.taken_late(len(commands), sum(map(len, self.store.payloads(commands))))
        return commands

    def fail_late(self) -> None:
        """After the stop: fail what reached the queue after the last look, answer late flushes."""
        items = self.drain_incoming()
        if items:
            self.line.seq += 1
        self.store.late(items, self.line.seq)
        self.report_drops()
        self.settlement.reporter.drain()

    def close_summary(self) -> None:
        """The one warning of a close that lost commands before its deadline (none when give_up spoke),
        and, with a spool, of commands let go of during an outage and not read back since."""
        self.settlement.close_report.summary(self.store.folder)


def _split_at_tickets(items: List[Any]) -> List[Any]:
    """``items`` as runs of commands (lists) and the flush tickets between them, in order. (The
    tickets are found by C code: a flush waits behind every command queued before it.)"""
    kinds = list(map(type, items))
    runs: List[Any] = []
    start = 0
    while True:
        try:
            at = kinds.index(FlushTicket, start)
        except ValueError:
            break
        if at > start:
            runs.append(items[start:at])
        runs.append(items[at])
        start = at + 1
    if start < len(items):
        runs.append(items[start:] if start else items)
    return runs

"""The pump: every decision of buffered delivery, made on one thread.

One :meth:`Pump.step` takes what callers queued (giving each command, already its JSON, a sequence number),
reports drops, applies the outcomes that senders handed back, starts the batches that are due while
the window has room, answers the flushes whose commands all settled, and says how long it may sleep.
It never waits inside a step: a retried batch goes back in line with a "not before" time, and the
engine's thread sleeps until the earliest moment the pump knows of, or until woken.

Ownership: the pump alone touches the waiting line (``fresh``, ``line``) and the window; the
settlement (``settlement.py``) counts, answers flushes and reports; senders only do I/O. Every command taken ends exactly once
as sent, failed or unconfirmed.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
from collections import deque
from itertools import islice
from typing import Any, Callable, Deque, List, Optional, Sequence, Tuple

from ..clock import Clock
from ..errors import InvalidRequest, SevenSegmentsError, ServiceUnavailable
from ..protocol import MAX_COMMAND_BYTES, PATH_BULK, PATH_CUSTOMERS, PATH_EVENTS
from ..transport import TransientError
from .answers import Verdict
from .batching import Batch, fit_to_bytes, fresh_batch_due
from .lifecycle import Lifecycle, Phase
from .limits import Limits
from .reporting import NO_REASON
from .retry import RetryPolicy
from .sender import Outcome
from .settlement import Settlement
from .store import Left, Reading, Store
from .stall import Say, StallAlarm
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


class FlushTicket:
    """A ``flush()`` waiting, in the queue, for the commands queued before it to settle."""

    __slots__ = ("done", "upto", "drops", "delivered_all")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.upto = -1  # the sequence number of the last command queued before it
        self.drops = 0  # commands dropped before it
        self.delivered_all = True


class Pump:
    """The decisions of one engine (see the module's docstring)."""

    def __init__(
        self,
        *,
        token: str,
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
        self.reporter = settlement.reporter
        settlement.scrub = scrub
        self._launch = launch
        self.clock = clock
        self.policy = policy if policy is not None else RetryPolicy(limits.retry_deadline)
        self._scrub = scrub
        self.window = Window(limits.max_in_flight)
        #: How long the oldest command has waited, how the last requests ended; the stall warnings.
        self.progress = settlement.progress
        self.stall = StallAlarm(limits.stall_warning_after)
        #: Encoded commands never sent, oldest first; the i-th is numbered ``fresh_head + i``.
        self.fresh: Deque[bytes] = deque()
        self.fresh_head = 1
        self._fresh_bytes = 0
        self._oldest_at = 0.0  # when the oldest fresh command was taken
        #: Batches to send again, by age (their first sequence number).
        self.line: List[Batch] = []
        self.seq = 0
        self._number = 0
        #: Batches whose request the close deadline cut short: unconfirmed, not failed.
        self._cut_at_close: List[Batch] = []
        #: Held while taking from ``incoming`` in bulk, and while emptying it (``drain_incoming``).
        self._popping = threading.Lock()
        #: Finished answers from senders, applied at the next step.
        self.outcomes: Deque[Outcome] = deque()
        #: Set when a close begins (``begin_close``).
        self.close_deadline = math.inf
        self.close_timeout = 0.0
        #: What callers check, without a lock, before queuing (written by the settlement).
        self.budget = settlement.budget
        self.last_trouble = ""  # the last passing failure, for the close summary
        #: Called when an outcome arrives (the engine wakes its thread).
        self.wake: Callable[[], None] = lambda: None
        #: Where the commands held lie: in memory only, or in a spool too (see ``store.py``).
        self.store = store if store is not None else Store(settlement)
        #: Commands refused alone after a batch they were in was refused as a whole and split (400,
        #: 413), with their reasons and statuses: reported together once no part of a split is left
        #: (a server refusing every request would otherwise make one warning and call per command).
        self._split_refusals: List[Tuple[bytes, str, Optional[int]]] = []
        #: A close reads back what was let go of once (not again after each new failure: an API still
        #: down would get a request per step until the deadline).
        self._read_back_at_close = False

    # One step -----------------------------------------------------------------------------------

    def step(self) -> float:
        """Do everything that can be done now; return how long the pump may sleep (``inf``: until woken).

        Returns ``-1.0`` when a close is done: everything settled or given up.
        """
        self.report_drops()  # first: dropped commands are held outside the queue's bounds
        store = self.store
        if store.reading is not Reading.NOTHING:
            self.replay()
        self.take()
        self.apply_outcomes()
        draining = self.lifecycle.phase is Phase.DRAINING
        if draining and store.has_kept and not self._read_back_at_close:  # a close tries them once more
            self._read_back_at_close = True
            store.read_back_kept(Phase.DRAINING)
        now = self.clock()
        if not self.incoming:
            self.progress.drained_at = now
        if draining and now >= self.close_deadline and not self.empty:
            self.give_up()
            self.reporter.drain()
            return -1.0
        self.dispatch(now, draining)
        self.settle_tickets()
        self.reporter.drain()
        if draining and self.empty and not self.incoming and not store.reading_back:
            return -1.0
        look = self.look_at_progress(now)
        if self.incoming and store.reading is not Reading.DEAD_WRITERS:
            return 0.0  # more to take than one step takes
        if store.reading is not Reading.NOTHING and self._room_to_replay():
            return 0.0  # more to read from the spool (read back after an outage, since this step began)
        return min(look, self.sleep_for(now, draining))

    @property
    def empty(self) -> bool:
        """Nothing waits to be sent and nothing is in flight."""
        return not self.fresh and not self.line and not self.settlement.in_flight and not self._cut_at_close

    def sleep_for(self, now: float, draining: bool) -> float:
        """Seconds until the pump has something to do, unless woken before."""
        moments = []
        if draining:
            moments.append(self.close_deadline)
        if self.window.room(len(self.settlement.in_flight), now) or self.window.opens_at(now) is not None:
            gate = self.window.opens_at(now) or now
            if self.fresh:
                moments.append(max(gate, self._oldest_at + self.limits.flush_interval))
            if self.line:
                moments.append(max(gate, min(batch.not_before for batch in self.line)))
        if not moments:
            return math.inf
        return max(0.0, min(moments) - now)

    # Taking what callers queued ---------------------------------------------------------------

    def take(self) -> None:
        """Number queued commands (their bytes, made by the callers); place flush tickets behind them."""
        incoming = self.incoming
        if not incoming or self.store.reading is Reading.DEAD_WRITERS:  # dead processes' files go first
            return
        fresh = self.fresh
        was_empty = not fresh
        start = self.seq
        added = 0
        with self._popping:  # a closer that gave up on this pump empties the queue meanwhile
            # Bounded, so that answers and drops are seen between takes.
            items = list(islice(iter(incoming.popleft, None), min(len(incoming), TAKE_PER_STEP)))
        # A flush counts its ticket before queuing it: with none counted, only commands were taken.
        runs = [items] if not self.settlement.counts.tickets_queued else self._split_at_tickets(items)
        for run in runs:
            if type(run) is FlushTicket:
                self._place(run)
                continue
            payloads = self.store.take(run, self.seq + 1)
            if not fresh:
                self.fresh_head = self.seq + 1
            fresh.extend(payloads)
            added += sum(map(len, payloads))
            self.seq += len(payloads)
        taken = self.seq - start
        if taken:
            self._fresh_bytes += added
            self.settlement.taken(taken, added, start + 1)
            self.store.taken()
        if was_empty and fresh:
            self._oldest_at = self.clock()
        if self.settlement.tickets:
            self.settle_tickets()

    @staticmethod
    def _split_at_tickets(items: List[Any]) -> List[Any]:
        """``items`` as runs of commands (lists) and the flush tickets between them, in order."""
        runs: List[Any] = []
        run: List[Any] = []
        for item in items:
            if type(item) is FlushTicket:
                if run:
                    runs.append(run)
                    run = []
                runs.append(item)
            else:
                run.append(item)
        if run:
            runs.append(run)
        return runs

    def _line_fresh_up_to(self, count: int) -> None:
        while count > 0:
            cut = min(count, self.limits.batch_size)
            batch = self._cut_fresh(cut, self.clock())
            self._insort(batch)
            count -= cut

    def _insort(self, batch: Batch) -> None:
        """Put ``batch`` back in line, by age (its first sequence number)."""
        firsts = [queued.first_seq for queued in self.line]
        self.line.insert(bisect.bisect(firsts, batch.first_seq), batch)

    def _place(self, ticket: FlushTicket) -> None:
        # Commands let go of in an outage: a flush tries them again, and waits for them; still kept,
        # they cannot be read back now (the files of dead processes are still being read).
        self.store.read_back_kept(self.lifecycle.phase)
        self.settlement.place(ticket, self.seq, kept_waiting=self.store.has_kept)

    def _room_to_replay(self) -> bool:
        limits = self.limits
        return not self.budget.held or self.budget.held < limits.max_queue_size // 2 and self.budget.held_bytes < limits.max_queue_bytes // 2

    def replay(self) -> None:
        """Take what the store reads back (from processes that died, or let go of in an outage), before
        any new command, within half the queue's bounds (the rest waits on disk for the next step); a
        chunk at least when nothing is held, however small the bounds."""
        store = self.store
        while store.reading is not Reading.NOTHING and self._room_to_replay():
            reading = store.reading
            first_seq = self.seq + 1
            chunk = store.read(first_seq)
            if chunk is None:
                break
            self._hold_read_back(chunk, replayed=reading is Reading.DEAD_WRITERS)
            if reading is Reading.LET_GO:  # queued before every flush waiting now
                self.settlement.wait_for_read_back(self.seq)
        if store.reading is Reading.DEAD_WRITERS and self.lifecycle.phase is Phase.DRAINING:
            store.end_reading()  # closing: what was not read stays in the spool for the next start

    def _hold_read_back(self, chunk: List[bytes], replayed: bool) -> None:
        """Number and hold a chunk read back; commands too large for the server (spooled before sizes
        were checked at the call) fail here, not split by 413s."""
        fresh = self.fresh
        first_seq = self.seq + 1
        if not fresh:
            self.fresh_head = first_seq
            self._oldest_at = self.clock()
        size = 0
        too_large: List[bytes] = []
        for payload in chunk:
            self.seq += 1
            if len(payload) > MAX_COMMAND_BYTES + _LARGEST_ENVELOPE and _data_size(payload) > MAX_COMMAND_BYTES:
                if fresh:  # the commands before it become a batch of their own: numbers stay contiguous
                    self._line_fresh_up_to(len(fresh))
                self._fail([self.seq], [payload], None, held_bytes=0)  # counted as held below
                too_large.append(payload)
                continue
            if not fresh:
                self.fresh_head = self.seq
            fresh.append(payload)
            size += len(payload)
        self._fresh_bytes += size
        if replayed:
            self.settlement.taken(len(chunk), size, first_seq, replayed=True)
        else:  # taken and counted before: no longer kept
            self.settlement.read_back(len(chunk), size, first_seq)
        if too_large:
            self._report_too_large(too_large)

    def _report_too_large(self, payloads: List[bytes]) -> None:
        """Replayed commands too large for the server, failed without a request: one warning, and
        ``on_error`` in chunks giving each one's size (as a 413 for it alone would)."""
        reasons = [f"the command takes {_data_size(payload)} bytes as JSON, more than {MAX_COMMAND_BYTES}" for payload in payloads]
        self.settlement.refused_before(payloads, reasons, 413, f"{PATH_BULK}: not sent, too large")

    def _confirm(self, seqs: Sequence[int]) -> None:
        """Tell the store that these commands settled (delivered, or failed and reported)."""
        self.store.settled(seqs)

    def report_drops(self) -> None:
        """Pass dropped commands to ``on_error`` and warn (rate-limited), each with its true reason;
        warn about commands the spool could not take (rate-limited)."""
        self.store.say()
        self.settlement.report_drops()

    # Sending ------------------------------------------------------------------------------------

    def dispatch(self, now: float, draining: bool) -> None:
        """Start every batch that is due while the window has room."""
        window = self.window
        settlement = self.settlement
        while window.room(len(settlement.in_flight), now):
            batch = self._next_batch(now, draining)
            if batch is None:
                return
            self._number += 1
            settlement.launch(self._number, batch)
            timeout = self.limits.timeout
            if draining:
                timeout = max(0.001, min(timeout, self.close_deadline - now))
            self._launch(self._number, batch, timeout, self._arrived)

    def _arrived(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.wake()

    def _next_batch(self, now: float, draining: bool) -> Optional[Batch]:
        for index, batch in enumerate(self.line):  # sent before: the oldest go first
            if batch.not_before <= now:
                del self.line[index]
                return batch
        limits = self.limits
        fresh = self.fresh
        if not fresh or not fresh_batch_due(
            count=len(fresh),
            size=self._fresh_bytes,
            oldest_at=self._oldest_at,
            now=now,
            batch_size=limits.batch_size,
            max_batch_bytes=limits.max_batch_bytes,
            flush_interval=limits.flush_interval,
            flush_waiting=bool(self.settlement.tickets) and self.settlement.tickets[-1].upto >= self.fresh_head,
            draining=draining,
        ):
            return None
        count = min(len(fresh), limits.batch_size)
        if self._fresh_bytes > limits.max_batch_bytes and sum(map(len, islice(fresh, count))) + count + 14 > limits.max_batch_bytes:
            count = fit_to_bytes([len(payload) for payload in islice(fresh, count)], limits.max_batch_bytes)
        return self._cut_fresh(count, now)

    def _cut_fresh(self, count: int, now: float) -> Batch:
        fresh = self.fresh
        popleft = fresh.popleft
        payloads = [popleft() for _ in range(count)]
        batch = Batch(range(self.fresh_head, self.fresh_head + count), payloads, now)
        self.fresh_head += count
        self._fresh_bytes -= sum(map(len, payloads))
        if fresh:
            self._oldest_at = now  # they were taken later than the batch's; near enough, and never later
        return batch

    # Outcomes -----------------------------------------------------------------------------------

    def apply_outcomes(self) -> None:
        """Settle the batches whose requests ended."""
        outcomes = self.outcomes
        while outcomes:
            number, verdict, error = outcomes.popleft()
            batch = self.settlement.land(number)
            if batch is None:
                continue  # a closer gave up on it and counted it
            now = self.clock()
            if verdict is not None:
                self.progress.answered(all_refused=bool(verdict.errors) and not verdict.ok and not verdict.retry)
                self._answered(batch, verdict, now)
                continue
            self.progress.failed(self._scrub(error.reason if isinstance(error, TransientError) else str(error)))
            if isinstance(error, TransientError):
                self._transient(batch, error, now)
            elif isinstance(error, InvalidRequest) and error.status in (400, 413) and len(batch) > 1:
                # Too large, or malformed as a whole (400: one bad command makes the body bad): halves,
                # until the command at fault is alone and fails by itself.
                for half in batch.halves():
                    self._insort(half)
            elif isinstance(error, InvalidRequest) and error.status in (400, 413) and batch.split:
                self._fail(batch.seqs, batch.payloads, None)
                reason = "; ".join(error.errors) if error.errors else str(error)
                self._split_refusals.extend((payload, reason, error.status) for payload in batch.payloads)
            else:
                assert error is not None
                self._fail(batch.seqs, batch.payloads, error)
        if self._split_refusals and not self._splitting():
            self._report_split_refusals()

    def _splitting(self) -> bool:
        """Whether a part of a batch refused as a whole is still to be sent or answered."""
        if any(batch.split for batch in self.line):
            return True
        with self.settlement.lock:
            return any(batch.split for batch in self.settlement.in_flight.values())

    def _report_split_refusals(self) -> None:
        """The commands refused alone after their batches were refused as a whole: one warning, and
        ``on_error`` in chunks giving each command's own reason, per status."""
        refusals, self._split_refusals = self._split_refusals, []
        statuses = sorted({status or 0 for _, _, status in refusals})
        for status in statuses:
            payloads = [payload for payload, _, given in refusals if (given or 0) == status]
            reasons = [reason for _, reason, given in refusals if (given or 0) == status]
            self.settlement.refused_before(
                payloads,
                reasons,
                status,
                f"{PATH_BULK}: refused for good, each alone, after their batch was refused as a whole (HTTP {status})",
            )

    def _answered(self, batch: Batch, verdict: Verdict, now: float) -> None:
        self.window.on_success()
        if verdict.progress and self.store.has_kept:
            self.store.read_back_kept(self.lifecycle.phase)
        if verdict.all_ok:
            self.settlement.delivered(len(batch), sum(map(len, batch.payloads)))
            self._confirm(batch.seqs)
            return
        ok = verdict.ok
        self.settlement.delivered(len(ok), sum(len(batch.payloads[i]) for i in ok))
        self._confirm([batch.seqs[i] for i in ok])
        if verdict.errors:
            self._refused(batch, verdict.errors)
        if verdict.retry:
            plan = self.policy.after_retry_results(batch, now, verdict.progress)
            if plan is None:
                self._fail_or_let_go(
                    [batch.seqs[i] for i in verdict.retry],
                    [batch.payloads[i] for i in verdict.retry],
                    ServiceUnavailable(f"{PATH_BULK}: the server kept answering 'retry' for the command"),
                )
                return
            attempts, not_before = plan
            self.settlement.retried(len(verdict.retry))
            if not_before > now:
                self.window.gate_until = max(self.window.gate_until, not_before)
            self._insort(batch.subset(verdict.retry, attempts, not_before))

    def take_cut_at_close(self) -> List[Batch]:
        """The batches whose request the close deadline cut short (taken out)."""
        cut, self._cut_at_close = self._cut_at_close, []
        return cut

    def _transient(self, batch: Batch, error: TransientError, now: float) -> None:
        if now >= self.close_deadline and error.status is None:  # cut by the close deadline: maybe applied
            self._cut_at_close.append(batch)
            return
        self.window.on_transient(now, error.retry_after)
        again = self.policy.after_transient(batch, now, error.retry_after)
        if again is None:
            reason = error.reason if error.reason.startswith(PATH_BULK) else f"{PATH_BULK}: {error.reason}"
            self._fail_or_let_go(
                batch.seqs,
                batch.payloads,
                ServiceUnavailable(
                    f"{reason}; gave up after {batch.attempts + 1} attempts in {now - batch.since:.1f} s",
                    status=error.status,
                    errors=error.errors,
                ),
            )
            return
        logger.debug("%s; retrying %d commands in %.3g s", error.reason, len(batch), again - now)
        self.last_trouble = error.reason
        batch.attempts += 1
        batch.not_before = again
        self.window.gate_until = max(self.window.gate_until, again)  # no request at all before then
        self.settlement.retried(len(batch))
        self._insort(batch)

    # Settling -----------------------------------------------------------------------------------

    def _fail_or_let_go(self, seqs: Sequence[int], payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Commands the API did not take within ``retry_deadline`` (down, or answering "retry"): let go
        of (see ``Store.let_go``): those the store keeps stay on disk, safe, since the API has not
        refused them; the others fail for good."""
        lost = self.store.let_go(seqs, payloads, error)
        if len(lost) == len(seqs):
            self._fail(seqs, payloads, error)
        elif lost:
            self._fail([seqs[i] for i in lost], [payloads[i] for i in lost], error)

    def _refused(self, batch: Batch, refusals: List[Tuple[int, Tuple[str, ...]]]) -> None:
        """The commands of ``batch`` its answer refused for good: failed together, with one warning
        (their count and first reasons), and passed to ``on_error`` in chunks that give each command's
        own reason (``Reporter.refused``)."""
        reasons = [self._scrub("; ".join(given)) if given else NO_REASON for _, given in refusals]
        payloads = [batch.payloads[index] for index, _ in refusals]
        seqs = [batch.seqs[index] for index, _ in refusals]
        self._confirm(seqs)  # refused for good and reported: not to be replayed
        self.settlement.refused(seqs, payloads, reasons, 200, f"{PATH_BULK}: the server refused them for good")

    def _fail(
        self,
        seqs: Sequence[int],
        items: Sequence[bytes],
        error: Optional[SevenSegmentsError],
        held_bytes: Optional[int] = None,
    ) -> None:
        """Commands failed for good: not to be replayed; counted, said and reported (``error``: none
        when None, said later)."""
        if not seqs:
            return
        self._confirm(seqs)
        self.settlement.failed(seqs, items, error, held_bytes=held_bytes)

    def first_unsettled(self) -> float:
        """The oldest sequence number not settled yet (infinity when all are)."""
        first = float(self.fresh_head) if self.fresh else math.inf
        if self.line:
            first = min(first, self.line[0].first_seq)
        if self.settlement.in_flight:
            first = min(first, self.settlement.first_in_flight())
        return first

    def oldest_pending(self, now: float) -> float:
        """Seconds the oldest command not delivered yet has waited (0 when none); from any thread."""
        incoming = self.incoming
        waiting = len(incoming) - self.settlement.counts.tickets_queued
        head = None
        if waiting > 0:
            try:
                head = incoming[0]
            except IndexError:
                waiting = 0
        return self.progress.oldest_age(now, self.budget.held, waiting, head)

    def waiting(self) -> int:
        """Commands not delivered yet: held here, queued, and let go of into the spool in an outage."""
        counts = self.settlement.counts
        return self.budget.held + max(0, len(self.incoming) - counts.tickets_queued) + counts.kept

    def look_at_progress(self, now: float) -> float:
        """Forget the marks of what settled; warn when delivery stalls or resumes (see ``StallAlarm``).
        Returns how long the pump may sleep before it must look again."""
        progress = self.progress
        if progress.let_go_since < math.inf and not self.store.has_kept and not self.store.reading_back:
            progress.let_go_since = math.inf
        progress.settled_before(self.first_unsettled() if self.budget.held else math.inf)
        age = self.oldest_pending(now)
        said = self.stall.look(now, age)
        if said is not None:
            self._say_stall(said, now, age)
        if not self.budget.held and not self.incoming:
            return math.inf  # only commands let go of into the spool wait: they need no pump awake
        return self.stall.next_look(now, age)

    def _say_stall(self, said: Say, now: float, age: float) -> None:
        if said is Say.RESUMED:
            logger.warning(
                "seven_segments: delivery resumed after a stall of %.1f s; %d commands wait, the oldest for %.1f s",
                now - self.stall.since,
                self.waiting(),
                age,
            )
            return
        logger.warning(
            "seven_segments: delivery is %sstalled: %d commands wait, the oldest for %.1f s (stall_warning_after=%g s);"
            " last error: %s",
            "still " if said is Say.STILL else "",
            self.waiting(),
            age,
            self.limits.stall_warning_after,
            self.progress.last_error or "none (no request failed)",
        )

    def settle_tickets(self) -> None:
        """Answer the flushes whose commands all settled. Commands let go of in an outage were queued
        before every flush waiting: while they are read back with room to go on, flushes wait; when
        the read-back stalls (the queue is full) or what it read is let go of again (the API is still
        down), they answer that not all was delivered."""
        store = self.store
        if not self.settlement.tickets or store.reading is Reading.LET_GO and self._room_to_replay():
            return
        self.settlement.answer_flushes(self.first_unsettled(), store.reading_back or store.has_kept)

    def begin_close(self, timeout: float) -> None:
        """A close began: deliver what is held within ``timeout`` seconds, then give up on the rest."""
        self.close_timeout = timeout
        self.close_deadline = self.clock() + timeout

    def give_up(self) -> None:
        """The close deadline passed: the store settles everything left (lost, or kept on disk), warning
        first, and queues ``on_error`` chunks (the caller drains them: the pump, never a closer), then
        every flush is answered. The one close path: the pump runs it at the deadline, or a closer when
        the pump does not come back (see ``Core.finish_close``)."""
        if self._split_refusals:
            self._report_split_refusals()  # what is left of their splits is given up below
        in_flight = self.settlement.take_in_flight() + self.take_cut_at_close()
        self.store.end_reading()  # what was not read back yet stays on disk (counted as kept already)
        late = self.drain_incoming()
        waiting, self.line = self.line, []
        if self.fresh:
            waiting.append(Batch(range(self.fresh_head, self.fresh_head + len(self.fresh)), list(self.fresh), 0.0))
        self.fresh.clear()
        self._fresh_bytes = 0
        if in_flight or waiting or late:
            self.store.close_deadline(Left(in_flight, waiting, late, self.seq, self.close_timeout, self.last_trouble))
        self.settlement.answer_all(delivered_all=False)

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
            self.settlement.taken_late(len(commands))
        return commands

    def fail_late(self) -> None:
        """After the stop: fail what reached the queue after the last look, answer late flushes."""
        items = self.drain_incoming()
        if items:
            self.seq += 1
        self.store.late(items, self.seq)
        self.report_drops()
        self.reporter.drain()

    def close_summary(self) -> None:
        """The one warning of a close that lost commands before its deadline (none when give_up spoke),
        and, with a spool, of commands let go of during an outage and not read back since."""
        self.settlement.close_summary(self.store.folder)

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

import array
import bisect
import enum
import json
import logging
import math
import threading
from collections import deque
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union, cast

from ..clock import Clock
from ..errors import InvalidRequest, SevenSegmentsError, ServiceUnavailable
from ..protocol import MAX_COMMAND_BYTES, PATH_BULK, PATH_CUSTOMERS, PATH_EVENTS
from ..serialization import BulkCommandEncoder
from ..transport import TransientError
from .answers import Verdict
from .batching import Batch, fit_to_bytes, fresh_batch_due
from .lifecycle import Lifecycle, Phase
from .limits import Limits
from .reporting import NO_REASON, Reporter
from .retry import RetryPolicy
from .sender import Outcome
from .settlement import Settlement
from .stall import Say, StallAlarm
from .window import Window

if TYPE_CHECKING:
    from ..spool import Record, Spool

__all__ = ["FlushTicket", "Pump", "Launch", "Spooled"]

logger = logging.getLogger("seven_segments")

#: ``launch(number, batch, timeout, done)``: start one attempt; ``done(outcome)`` when it ends.
Launch = Callable[[int, Batch, float, Callable[[Outcome], None]], None]

#: Commands taken from the incoming queue per step, at most.
TAKE_PER_STEP = 2_000
#: With a spool, commands let go of during an outage are read back at most this many at a time.
READ_BACK_CHUNK = 1_000


class Spooled:
    """A command a client with a spool queued: its bytes, and where the spool holds them."""

    __slots__ = ("payload", "record")

    def __init__(self, payload: bytes, record: "Record") -> None:
        self.payload = payload
        self.record = record

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


class Reading(enum.Enum):
    """What the pump is reading from the spool (``Pump._replay``), before or between new commands."""

    #: Nothing: the spool is only written.
    NOTHING = "nothing"
    #: The files of processes that died (``Spool.recover``): before any new command.
    DEAD_WRITERS = "dead writers"
    #: This process's commands let go of in an outage (``Spool.reread``): counted once already,
    #: between new commands; flushes wait for them while they can go on.
    LET_GO = "let go"
    #: The same, but some of what was read back was let go of again (the API is still down):
    #: flushes no longer wait for the rest.
    LET_GO_AGAIN = "let go again"


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
        add_secret: Callable[[str], None] = lambda secret: None,
        spool: "Optional[Spool]" = None,
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
        #: Keeps a company token out of what ``scrub`` lets through; and the tokens of replayed
        #: commands given to it (a dead client's spool may have been written with another token).
        self._add_secret = add_secret
        self._tokens_seen: Set[str] = {token}
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
        #: Set by the engine when a close begins.
        self.close_deadline = math.inf
        self.close_timeout = 0.0
        #: What callers check, without a lock, before queuing (written by the settlement).
        self.budget = settlement.budget
        self.last_trouble = ""  # the last passing failure, for the close summary
        #: Called when an outcome arrives (the engine wakes its thread).
        self.wake: Callable[[], None] = lambda: None
        #: The durable spool, if any: the record of each spooled command by sequence number (confirmed
        #: when it settles), and what is left to replay from processes that died.
        self.spool = spool
        self._records: "Dict[int, Record]" = {}
        #: The chunks being read from the spool, and what they are (see ``Reading``): set and ended
        #: together, by ``_read`` and ``_end_reading``.
        self._replay: "Optional[Iterator[List[Tuple[Record, bytes]]]]" = None
        self._reading = Reading.NOTHING
        if spool is not None:
            self._read(spool.recover(), Reading.DEAD_WRITERS)
        #: With a spool: the records of commands let go of after ``retry_deadline`` (an outage). They
        #: stay on disk, counted as kept, and are read back after an answer that settles anything, for
        #: a flush, and once by a close (``_read_back_given_up``).
        #: Kept as offsets by segment name, 8 bytes each: an outage may let go of millions.
        self._given_up: "Dict[str, array.array[int]]" = {}
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
        if self._reading is not Reading.NOTHING:
            self.replay()
        self.take()
        self.apply_outcomes()
        draining = self.lifecycle.phase is Phase.DRAINING
        if draining and self._given_up and not self._read_back_at_close:  # a close tries them once more
            self._read_back_at_close = True
            self._read_back_given_up()
        now = self.clock()
        if not self.incoming:
            self.progress.drained_at = now
        if draining and now >= self.close_deadline and not self.empty:
            self.give_up()
            return -1.0
        self.dispatch(now, draining)
        self.settle_tickets()
        self.reporter.drain()
        if draining and self.empty and not self.incoming and not self._reading_back:
            return -1.0
        look = self.look_at_progress(now)
        if self.incoming and self._reading is not Reading.DEAD_WRITERS:
            return 0.0  # more to take than one step takes
        if self._reading is not Reading.NOTHING and self._room_to_replay():
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
        if not incoming or self._reading is Reading.DEAD_WRITERS:  # dead processes' files go first
            return
        fresh = self.fresh
        records = self._records
        was_empty = not fresh
        added = 0
        seq = start = self.seq
        popleft = incoming.popleft
        append = fresh.append
        count = TAKE_PER_STEP  # bounded, so that answers and drops are seen between takes
        if self.spool is None:
            with self._popping:  # a closer that gave up on this pump empties the queue meanwhile
                count = min(len(incoming), TAKE_PER_STEP)
                if not self.settlement.counts.tickets_queued:
                    # Only bytes (a flush counts its ticket before queuing it, and only a spool queues
                    # Spooled): the step's worth at once, in C loops.
                    items = list(islice(iter(popleft, None), count))
                    if was_empty:
                        self.fresh_head = seq + 1
                    fresh.extend(items)
                    added = sum(map(len, items))
                    seq += count
                    count = 0
        for _ in range(count):
            try:
                item = popleft()
            except IndexError:
                break
            kind = type(item)
            if kind is bytes:
                seq += 1
                if not fresh:
                    self.fresh_head = seq
                append(item)
                added += len(item)
            elif kind is Spooled:
                seq += 1
                records[seq] = item.record
                if not fresh:
                    self.fresh_head = seq
                append(item.payload)
                added += len(item.payload)
            else:
                self.seq = seq
                self._place(item)
        self.seq = seq
        taken = seq - start
        if taken:
            self._fresh_bytes += added
            self.settlement.taken(taken, added, start + 1)
            if self.spool is not None:
                self._prepare_spool()
        if was_empty and fresh:
            self._oldest_at = self.clock()
        if self.settlement.tickets:
            self.settle_tickets()

    def _prepare_spool(self) -> None:
        """Let the spool make its next segment here, not on a caller's thread (see ``Spool.prepare_next``)."""
        assert self.spool is not None
        try:
            self.spool.prepare_next()
        except Exception:  # never stops delivery: the caller that needs the segment makes it
            logger.exception("seven_segments: preparing the next spool segment failed")

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
        if self._given_up:  # commands let go of in an outage: a flush tries them again, and waits for them
            self._read_back_given_up()
        # Still there: cannot now (the files of dead processes are still being read).
        self.settlement.place(ticket, self.seq, kept_waiting=bool(self._given_up))

    def _room_to_replay(self) -> bool:
        limits = self.limits
        return not self.budget.held or self.budget.held < limits.max_queue_size // 2 and self.budget.held_bytes < limits.max_queue_bytes // 2

    def replay(self) -> None:
        """Take what the spool holds (from processes that died, or let go of in an outage), before
        any new command, within half the queue's bounds (the rest waits on disk for the next step); a
        chunk at least when nothing is held, however small the bounds."""
        replay = self._replay
        fresh = self.fresh
        while replay is not None and self._room_to_replay():
            try:
                chunk = next(replay)
            except StopIteration:
                self._end_reading()
                break
            except Exception:  # a damaged spool must never stop delivery of new commands
                logger.exception("seven_segments: reading the spool failed; what is left stays on disk")
                self._end_reading()
                break
            first_seq = self.seq + 1
            if not fresh:
                self.fresh_head = self.seq + 1
                self._oldest_at = self.clock()
            if self._reading is Reading.DEAD_WRITERS:
                self._learn_tokens(chunk)
            size = 0
            too_large: List[bytes] = []
            for record, payload in chunk:
                self.seq += 1
                self._records[self.seq] = record
                if len(payload) > MAX_COMMAND_BYTES + _LARGEST_ENVELOPE and _data_size(payload) > MAX_COMMAND_BYTES:
                    # Spooled before sizes were checked at the call: failed here, not split by 413s.
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
            if self._reading is Reading.DEAD_WRITERS:
                self.settlement.taken(len(chunk), size, first_seq, replayed=True)
            else:  # taken and counted before: no longer kept
                self.settlement.read_back(len(chunk), size, first_seq)
            if self._reading is Reading.LET_GO:  # queued before every flush waiting now
                self.settlement.wait_for_read_back(self.seq)
            if too_large:
                self._report_too_large(too_large)
        if self._reading is Reading.DEAD_WRITERS and self.lifecycle.phase is Phase.DRAINING:
            self._end_reading()  # closing: what was not read stays in the spool for the next start

    def _report_too_large(self, payloads: List[bytes]) -> None:
        """Replayed commands too large for the server, failed without a request: one warning, and
        ``on_error`` in chunks giving each one's size (as a 413 for it alone would)."""
        reasons = [f"the command takes {_data_size(payload)} bytes as JSON, more than {MAX_COMMAND_BYTES}" for payload in payloads]
        self.settlement.refused_before(payloads, reasons, 413, f"{PATH_BULK}: not sent, too large")

    def _learn_tokens(self, chunk: "List[Tuple[Record, bytes]]") -> None:
        """Mask the company tokens of replayed commands (written by another client, perhaps with
        another token) wherever the server's text is quoted, as this client's own token is."""
        seen = self._tokens_seen
        for _, payload in chunk:
            token = BulkCommandEncoder.company_of(payload)
            if token is not None and token not in seen:
                seen.add(token)
                self._add_secret(token)

    def _read(self, chunks: "Iterator[List[Tuple[Record, bytes]]]", reading: Reading) -> None:
        self._replay = chunks
        self._reading = reading

    def _end_reading(self) -> None:
        self._replay = None
        self._reading = Reading.NOTHING

    @property
    def _reading_back(self) -> bool:
        """Reading back commands this process let go of in an outage."""
        return self._reading is Reading.LET_GO or self._reading is Reading.LET_GO_AGAIN

    def _confirm(self, seqs: Sequence[int]) -> None:
        """Tell the spool that these commands settled (delivered, or failed and reported)."""
        records = self._records
        if not records or self.spool is None:
            return
        settled = [record for record in map(records.pop, seqs, repeat(None)) if record is not None]
        if settled:
            try:
                self.spool.confirm(settled)
            except Exception:  # the commands were delivered: at worst they are sent again (ids dedupe)
                logger.exception("seven_segments: confirming spooled commands failed")

    def report_drops(self) -> None:
        """Pass dropped commands to ``on_error`` and warn (rate-limited), each with its true reason;
        warn about commands the spool could not take (rate-limited)."""
        if self.spool is not None and self.settlement.not_spooled_unsaid:
            self.settlement.say_not_spooled(self.spool.folder, self.spool.last_failure)
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
        if self._given_up and verdict.progress:
            self._read_back_given_up()
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
        """Commands the API did not take within ``retry_deadline`` (down, or answering "retry"):
        failed for good without a spool; with one, let go of (see ``_let_go``), since they are safe on
        disk and the API has not refused them; those the spool could not take are failed."""
        records = self._records
        if self.spool is None:
            self._fail(seqs, payloads, error)
        elif all(seq in records for seq in seqs):
            self._let_go(seqs, payloads, error)
        else:
            on_disk = [index for index, seq in enumerate(seqs) if seq in records]
            in_memory = [index for index, seq in enumerate(seqs) if seq not in records]
            self._let_go([seqs[i] for i in on_disk], [payloads[i] for i in on_disk], error)
            self._fail([seqs[i] for i in in_memory], [payloads[i] for i in in_memory], error)

    def _let_go(self, seqs: Sequence[int], payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Take spooled commands out of memory without confirming them: they stay in the spool,
        counted as kept, and are read back (``Spool.reread``) once an answer settles anything, or
        delivered by the next client on the folder if this process ends first. Not passed to
        ``on_error``: they are not lost."""
        if not seqs:
            return
        given_up = self._given_up
        for name, offset in map(self._records.pop, seqs):
            offsets = given_up.get(name)
            if offsets is None:
                offsets = given_up[name] = array.array("Q")
            offsets.append(offset)
        if self._reading is Reading.LET_GO:
            self._reading = Reading.LET_GO_AGAIN
        folder = self.spool.folder if self.spool is not None else ""
        self.settlement.kept(seqs, sum(map(len, payloads)), error, folder)

    @property
    def has_let_go(self) -> bool:
        """Commands let go of in an outage wait on disk to be read back (a close tries them)."""
        return bool(self._given_up)

    def _read_back_given_up(self) -> None:
        """Read back what was let go of (once the API answers again, for a flush, or when a close
        begins), before new commands; not while the files of dead processes are still being read.
        Flushes waiting meanwhile wait for it too (``settle_tickets``)."""
        if self._reading is not Reading.NOTHING or self.spool is None or self.lifecycle.phase not in (Phase.RUNNING, Phase.DRAINING):
            return
        given_up, self._given_up = self._given_up, {}
        # Chunks of a quarter of the queue at most: new commands keep room while these go again.
        chunk = max(1, min(READ_BACK_CHUNK, self.limits.max_queue_size // 4))
        self._read(self.spool.reread(given_up, chunk, self._lost_on_disk), Reading.LET_GO)

    def _lost_on_disk(self, count: int, path: str) -> None:
        """Commands let go of in an outage that cannot be read back (damaged, or their file cannot
        be read): failed, and every flush waiting or to come for them says not all was delivered."""
        self.settlement.lost_on_disk(count, path, self.seq)

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
        if progress.let_go_since < math.inf and not self._given_up and not self._reading_back:
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
        if not self.settlement.tickets or self._reading is Reading.LET_GO and self._room_to_replay():
            return
        self.settlement.answer_flushes(self.first_unsettled(), self._reading_back or bool(self._given_up))

    def give_up(self) -> None:
        """The close deadline passed: settle everything left, warning first, then ``on_error`` in chunks."""
        if self._split_refusals:
            self._report_split_refusals()  # what is left of their splits is given up below
        if self.spool is not None:
            self._keep_in_spool()
            return
        settlement = self.settlement
        in_flight = settlement.take_in_flight() + self.take_cut_at_close()
        late = cast(List[bytes], self.drain_incoming())  # no spool here: bytes only
        line, self.line = self.line, []
        fresh = list(self.fresh)
        seqs: List[int] = [seq for batch in line for seq in batch.seqs]
        seqs += range(self.fresh_head, self.fresh_head + len(fresh))
        self.fresh.clear()
        self._fresh_bytes = 0
        payloads = [payload for batch in line for payload in batch.payloads] + fresh
        timeout = f"{self.close_timeout:g} s"
        settlement.lost_at_close(len(payloads) + len(late), sum(map(len, in_flight)), self.close_timeout, self.last_trouble)
        settlement.unconfirmed(
            in_flight,
            ServiceUnavailable(
                f"not confirmed within the close deadline ({timeout}): the request was in flight and may have been applied"
            ),
        )
        error = ServiceUnavailable(f"not delivered within the close deadline ({timeout})")
        if payloads:
            self._fail(seqs, payloads, error)
        if late:
            self._fail([self.seq] * len(late), late, error, held_bytes=0)
        settlement.not_all_delivered()
        self.settle_tickets()
        self.reporter.drain()

    def _keep_in_spool(self) -> None:
        """The close deadline passed with a spool: what is left stays in it, for the next client on the
        folder to deliver (the requests in flight too: resending them is safe). Nothing is lost."""
        in_flight = self.settlement.take_in_flight() + self.take_cut_at_close()
        self._end_reading()  # what was not read back yet stays in the spool (counted as kept already)
        late = self.drain_incoming()
        kept = sum(map(len, in_flight)) + sum(map(len, self.line)) + len(self.fresh) + len(late)
        kept -= self._fail_not_spooled(in_flight, late)
        self.line = []
        self.fresh.clear()
        self._fresh_bytes = 0
        self._records.clear()
        on_disk = self.settlement.kept_at_close(kept)  # with those let go of earlier (see _let_go)
        folder = self.spool.folder if self.spool is not None else ""
        self.settlement.kept_said(on_disk, folder, self.close_timeout, self.last_trouble)
        self.settle_tickets()
        self.reporter.drain()

    def _fail_not_spooled(self, in_flight: List[Batch], late: "List[Union[bytes, Spooled]]") -> int:
        """At the close deadline, with a spool: fail (and report) the commands left that it could
        not take (``Counts.not_spooled``), which only memory held; returns how many."""
        records = self._records
        if self.settlement.counts.not_spooled == 0:
            return 0
        error = ServiceUnavailable(
            f"not delivered within the close deadline ({self.close_timeout:g} s), and not in the spool"
        )
        failed = 0
        fresh = Batch(range(self.fresh_head, self.fresh_head + len(self.fresh)), list(self.fresh), 0.0)
        batches = in_flight + self.line + [fresh]
        for batch in batches:
            lost = [index for index, seq in enumerate(batch.seqs) if seq not in records]
            if lost:
                self._fail([batch.seqs[i] for i in lost], [batch.payloads[i] for i in lost], error)
                failed += len(lost)
        late_in_memory = [item for item in late if type(item) is bytes]
        if late_in_memory:
            self._fail([self.seq] * len(late_in_memory), late_in_memory, error, held_bytes=0)
            failed += len(late_in_memory)
        return failed

    def drain_incoming(self) -> "List[Union[bytes, Spooled]]":
        """Empty the incoming queue: its commands (counted as taken, not as held bytes), and its
        tickets, placed."""
        commands: "List[Union[bytes, Spooled]]" = []
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
        late = [item for item in items if type(item) is bytes]
        if late:
            self.seq += 1
        # Spooled ones are on disk already: the next client on the folder delivers them.
        self.settlement.late(late, len(items) - len(late), self.seq)
        self.report_drops()
        self.reporter.drain()

    def close_summary(self) -> None:
        """The one warning of a close that lost commands before its deadline (none when give_up spoke),
        and, with a spool, of commands let go of during an outage and not read back since."""
        self.settlement.close_summary(self.spool.folder if self.spool is not None else None)

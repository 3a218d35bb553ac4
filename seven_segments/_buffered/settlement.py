"""Settlement: the one writer of counts, flush verdicts, ``on_error`` chunks and loss warnings.

Every other stage says what happened to a batch of commands, through a few calls named for it:
:meth:`Settlement.taken`, :meth:`~Settlement.delivered`, :meth:`~Settlement.refused`,
:meth:`~Settlement.failed` (dropped with a reason), :meth:`~Settlement.unconfirmed`,
:meth:`~Settlement.kept` (on disk), :meth:`~Settlement.dropped` (at the call). Each call counts,
releases what the commands held (the :class:`Budget`), marks the flushes waiting for them, queues
``on_error`` chunks and warns: a new counter is added here and nowhere else.

Counters are written under ``lock`` (``stats()`` reads them from any thread). The budget and the
flush tickets are written by the pump's thread only (but a ticket's drops, by its caller before
queuing it); callers read the budget without a lock.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..clock import Clock
from ..errors import ClientClosedError, QueueFull, SevenSegmentsError, ServiceUnavailable
from .batching import Batch
from .lifecycle import Lifecycle, Phase
from .limits import Limits
from .progress import Progress
from .reporting import CHUNK, Reporter, refusal_summary

__all__ = ["FlushTicket", "Budget", "CloseReport", "Counts", "Flushes", "DropReason", "FULL", "CLOSED", "REASONS", "Settlement", "COMMAND_COST"]

logger = logging.getLogger("seven_segments")

DropReason = str
#: Why a command was dropped at the call.
FULL: DropReason = "full"
CLOSED: DropReason = "closed"
REASONS = (FULL, CLOSED)

#: What a queued command costs besides its JSON's bytes, against ``max_queue_bytes``: the bytes
#: object's header and its slot in the queue (and in a batch).
COMMAND_COST = 64
#: Commands let go of during an outage, or that the spool could not take, are warned about at most
#: this often.
LET_GO_WARNING_SECONDS = 60.0

Why = Union[str, SevenSegmentsError]


class FlushTicket:
    """A ``flush()`` waiting, in the queue, for the commands queued before it to settle."""

    __slots__ = ("done", "upto", "drops", "delivered_all")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.upto = -1  # the sequence number of the last command queued before it
        self.drops = 0  # commands dropped before it
        self.delivered_all = True


class Budget:
    """What the pump holds (commands taken and not settled) and their JSON's bytes, and what it ever
    took from the incoming queue, checked by callers without a lock against ``max_queue_size`` and
    ``max_queue_bytes``; written by settlement only.

    Callers count what they queue (``Core.arrived``, ``Core.arrived_bytes``); less ``taken`` and
    ``taken_bytes``, that is exactly what waits in the queue, at its own size. The pump writes
    ``taken_bytes`` after ``held_bytes``: a caller reading them the other way round may count a
    command twice for a moment, never not at all."""

    __slots__ = ("held", "held_bytes", "taken", "taken_bytes")

    def __init__(self) -> None:
        self.held = 0
        self.held_bytes = 0
        #: Commands taken from the incoming queue since the engine began, and their bytes.
        self.taken = 0
        self.taken_bytes = 0

    def queued_bytes(self, waiting: int, waiting_bytes: int) -> int:
        """What ``max_queue_bytes`` counts now: the JSON of the commands held and ``COMMAND_COST`` each,
        and of the ``waiting`` commands not taken yet (``waiting_bytes`` of JSON)."""
        return self.held_bytes + (self.held + waiting) * COMMAND_COST + waiting_bytes


class Counts:
    """The counters of one engine, as ``stats()`` shows them (written by :class:`Settlement` only)."""

    def __init__(self) -> None:
        self.taken = 0
        self.sent = 0
        self.failed = 0
        self.unconfirmed = 0
        self.retried = 0
        self.batches = 0
        #: With a spool: commands taken from it (left by an earlier process), and kept in it.
        self.replayed = 0
        self.kept = 0
        #: With a spool: commands it could not take, queued in memory only.
        self.not_spooled = 0
        self.dropped: Dict[DropReason, int] = {reason: 0 for reason in REASONS}
        #: The highest sequence number that failed, and what flush callers have seen so far.
        self.last_failed_seq = 0
        self.reported_upto = 0
        self.reported_drops = 0
        #: ``flush()`` requests in the incoming queue, not yet placed by the pump.
        self.tickets_queued = 0

    @property
    def total_dropped(self) -> int:
        """Commands dropped at the call, for any reason."""
        return sum(self.dropped.values())

    @property
    def unsettled(self) -> int:
        """Commands taken and not settled yet."""
        return max(0, self.taken - (self.sent + self.failed + self.unconfirmed + self.kept))

    def snapshot(self, arrived: int, in_flight: int) -> Dict[str, int]:
        """The counters as ``stats()`` shows them; ``arrived``: the commands callers queued so far (read
        before this call). ``queued`` never goes backwards: both terms only grow."""
        queued = max(self.taken, arrived + self.replayed)
        settled = self.sent + self.failed + self.unconfirmed + self.kept
        return {
            "queued": queued,
            "sent": self.sent,
            "retried": self.retried,
            "failed": self.failed,
            "unconfirmed": self.unconfirmed,
            "dropped": self.total_dropped,
            "dropped_queue_full": self.dropped[FULL],
            "dropped_closed": self.dropped[CLOSED],
            "replayed": self.replayed,
            "not_spooled": self.not_spooled,
            "kept_in_spool": self.kept,
            "batches": self.batches,
            "in_flight": in_flight,
            "pending": max(0, queued - settled),
        }


class Drops:
    """Commands dropped at the call, kept (within bounds) for ``on_error`` until the pump reports them."""

    def __init__(self, keep: int) -> None:
        #: How many dropped commands are kept for ``on_error`` (0: none).
        self.keep = keep
        self.kept: Dict[DropReason, List[bytes]] = {reason: [] for reason in REASONS}
        self.not_kept: Dict[DropReason, int] = {reason: 0 for reason in REASONS}

    def add(self, command: bytes, reason: DropReason) -> Tuple[bool, Optional[List[bytes]]]:
        """Keep ``command``; whether it is the first one waiting, and, when the kept ones reached the
        bound, the oldest ``CHUNK`` of them (taken out, for the caller to report: the one that drops
        pays for one ``on_error`` call, not for the whole bound)."""
        if not self.keep:
            self.not_kept[reason] += 1
            return self.not_kept[reason] == 1, None
        kept = self.kept[reason]
        kept.append(command)
        if len(kept) < self.keep:
            return len(kept) == 1, None
        self.kept[reason] = kept[CHUNK:]
        return False, kept[:CHUNK]

    @property
    def waiting(self) -> bool:
        """Dropped commands wait to be reported."""
        return any(self.kept.values()) or any(self.not_kept.values())

    def take(self) -> List[Tuple[DropReason, List[bytes], int]]:
        """The dropped commands waiting, by reason, with the count of those not kept (taken out)."""
        taken = []
        for reason in REASONS:
            kept, not_kept = self.kept[reason], self.not_kept[reason]
            if kept or not_kept:
                taken.append((reason, kept, not_kept))
                self.kept[reason] = []
                self.not_kept[reason] = 0
        return taken


class Settlement:
    """Counts, budget, flush verdicts, ``on_error`` and loss warnings of one engine (see the module)."""

    def __init__(self, limits: Limits, reporter: Reporter, lifecycle: Lifecycle, clock: Clock, keep_drops: int) -> None:
        self.lock = threading.Lock()
        self.counts = Counts()
        self.budget = Budget()
        self.drops = Drops(keep_drops)
        self.reporter = reporter
        self.progress = Progress(limits.stall_warning_after)
        self._limits = limits
        self._lifecycle = lifecycle
        self._clock = clock
        #: Masks secrets in what the server said (the transport's, set by the pump).
        self.scrub: Callable[[str], str] = _as_is
        #: Flush tickets and their verdicts; the warnings of a close.
        self.flushes = Flushes(self.lock, self.counts)
        self.close_report = CloseReport(self.counts, reporter)
        #: Rate-limited warnings: commands let go of, and commands the spool could not take.
        self._let_go = _RateLimited()
        self._not_spooled_said = _RateLimited()
        #: The requests in flight, by number: settled once, by whoever takes one out first (the pump
        #: with its answer, or a closer giving up on it).
        self.in_flight: Dict[int, Batch] = {}

    # In flight ----------------------------------------------------------------------------------

    def launch(self, number: int, batch: Batch) -> None:
        """``batch`` goes out as request ``number``."""
        with self.lock:
            self.in_flight[number] = batch

    def land(self, number: int) -> Optional[Batch]:
        """Request ``number`` was answered: its batch, or None when a closer already gave up on it."""
        with self.lock:
            return self.in_flight.pop(number, None)

    def take_in_flight(self) -> List[Batch]:
        """Every request in flight, taken out (a close gives up on them)."""
        with self.lock:
            batches = list(self.in_flight.values())
            self.in_flight.clear()
        return batches

    def any_in_flight(self, test: Callable[[Batch], bool]) -> bool:
        """Whether a batch in flight passes ``test``."""
        with self.lock:
            return any(map(test, self.in_flight.values()))

    def first_in_flight(self) -> float:
        """The oldest sequence number in flight (infinity when none is)."""
        with self.lock:
            return min((batch.first_seq for batch in self.in_flight.values()), default=float("inf"))

    def snapshot(self, arrived: int) -> Dict[str, int]:
        """The counters as ``stats()`` shows them; ``arrived``: the commands callers queued so far."""
        with self.lock:
            return self.counts.snapshot(arrived, len(self.in_flight))

    # Taken --------------------------------------------------------------------------------------

    def taken(self, count: int, size: int, first_seq: int, replayed: bool = False) -> None:
        """``count`` commands (``size`` bytes of JSON) were taken from the queue (or, ``replayed``, from
        the spool, left by a process that died), numbered from ``first_seq``."""
        with self.lock:
            self.counts.taken += count
            if replayed:
                self.counts.replayed += count
        self._hold(count, size, first_seq)
        if not replayed:
            self._taken_from_queue(count, size)

    def read_back(self, count: int, size: int, first_seq: int) -> None:
        """``count`` commands kept on disk in an outage were read back: held again, no longer kept."""
        with self.lock:
            self.counts.kept -= count
        self._hold(count, size, first_seq)

    def _hold(self, count: int, size: int, first_seq: int) -> None:
        budget = self.budget
        budget.held += count
        budget.held_bytes += size
        if count:
            self.progress.taken(first_seq, self._clock())

    def _taken_from_queue(self, count: int, size: int) -> None:
        budget = self.budget
        budget.taken += count
        budget.taken_bytes += size  # after held_bytes (see Budget)

    def taken_late(self, count: int, size: int) -> None:
        """``count`` commands (``size`` bytes) were taken when the queue was emptied (at close): held,
        not as bytes."""
        with self.lock:
            self.counts.taken += count
        self.budget.held += count
        self._taken_from_queue(count, size)

    def not_spooled(self) -> None:
        """A command the spool could not take was queued in memory only (from a caller)."""
        with self.lock:
            self.counts.not_spooled += 1

    # Settled ------------------------------------------------------------------------------------

    def delivered(self, count: int, size: int, batches: int = 1) -> None:
        """``count`` commands (``size`` bytes) were delivered, in ``batches`` answered requests."""
        with self.lock:
            self.counts.sent += count
            self.counts.batches += batches
        self._release(count, size)

    def retried(self, count: int) -> None:
        """``count`` commands go again."""
        with self.lock:
            self.counts.retried += count

    def failed(
        self,
        seqs: Sequence[int],
        payloads: Sequence[bytes],
        error: Optional[SevenSegmentsError],
        why: Optional[Why] = None,
        held_bytes: Optional[int] = None,
    ) -> None:
        """Commands dropped for good with a reason: counted, released, the flushes they concern marked,
        said in one warning (``why``, else ``error``; none when both are None: said later) and passed
        to ``on_error`` with ``error`` (none when None)."""
        if not seqs:
            return
        with self.lock:
            self.counts.failed += len(seqs)
            self.counts.last_failed_seq = max(self.counts.last_failed_seq, max(seqs))
        said = why if why is not None else error
        self.progress.failed_for_good(self._clock(), "" if said is None else self.scrub(str(said)))
        self._release(len(seqs), sum(map(len, payloads)) if held_bytes is None else held_bytes)
        self.flushes.not_all_delivered(min(seqs))
        if said is not None:
            self._say_failed(len(seqs), said)
        if error is not None:
            self.reporter.failed(error, payloads)

    def refused(
        self, seqs: Sequence[int], payloads: Sequence[bytes], reasons: Sequence[str], status: int, why: str
    ) -> None:
        """The server refused these commands for good, each for its reason: failed, one warning
        (``why``, with their first reasons), ``on_error`` in chunks giving each its own reason."""
        self.failed(seqs, payloads, None, f"{why}: {refusal_summary(reasons)}")
        self.reporter.refused(payloads, reasons, status)

    def refused_before(self, payloads: Sequence[bytes], reasons: Sequence[str], status: int, why: str) -> None:
        """Commands counted as failed already (refused alone, after their batch was split, or too large
        to send): now said in one warning and passed to ``on_error``."""
        self._say_failed(len(payloads), f"{why}: {refusal_summary(reasons)}")
        self.reporter.refused(payloads, reasons, status)

    def unconfirmed(self, batches: Sequence[Batch], error: Optional[SevenSegmentsError]) -> int:
        """The requests of ``batches`` were cut short: they may have been applied. Counted, released,
        passed to ``on_error`` with ``error`` (unless None); returns how many commands."""
        count = sum(map(len, batches))
        if not count:
            return 0
        payloads = [payload for batch in batches for payload in batch.payloads]
        with self.lock:
            self.counts.unconfirmed += count
        self._release(count, sum(map(len, payloads)))
        if error is not None:
            self.reporter.failed(error, payloads)
        return count

    def kept(self, seqs: Sequence[int], size: int, why: Optional[Why] = None, folder: str = "") -> None:
        """Spooled commands let go of undelivered (an outage): they stay on disk, counted as kept, for
        this process to read back or the next client on the folder; a rate-limited warning says why."""
        if not seqs:
            return
        self.progress.let_go(seqs)
        with self.lock:
            self.counts.kept += len(seqs)
        self._release(len(seqs), size)
        self.flushes.not_all_delivered(min(seqs))
        if why is None:
            return
        unsaid = self._let_go.add(len(seqs), self._clock())
        if unsaid:
            logger.warning(
                "seven_segments: %d commands stay in the spool %s for now: %s; they are sent again when the"
                " API answers (or by the next client on that folder)",
                unsaid,
                folder,
                self.scrub(str(why)),
            )

    def kept_at_close(self, count: int) -> int:
        """``count`` more commands stay in the spool at close (everything held is released); returns how
        many the spool keeps in all."""
        with self.lock:
            self.counts.kept += count
            kept = self.counts.kept
        self.budget.held = self.budget.held_bytes = 0
        self.flushes.not_all_delivered()
        return kept

    def lost_on_disk(self, count: int, path: str, seq: int) -> None:
        """Commands kept in an outage that cannot be read back (damaged): failed."""
        with self.lock:
            self.counts.kept -= count
            self.counts.failed += count
            self.counts.last_failed_seq = max(self.counts.last_failed_seq, seq)
        self.flushes.not_all_delivered()
        logger.warning(
            "seven_segments: %d commands let go of in an outage cannot be read back from %s (damaged): lost", count, path
        )

    def _release(self, count: int, size: int) -> None:
        self.budget.held -= count
        self.budget.held_bytes -= size

    def _say_failed(self, count: int, why: Why) -> None:
        """One warning for ``count`` commands failed for good (while closing: in the close's summary)."""
        phase = self._lifecycle.phase
        if phase is Phase.DRAINING or phase is Phase.STOPPED:
            self.close_report.add(count, str(why))
        else:
            logger.warning("seven_segments: %d commands could not be delivered: %s", count, why)

    # Dropped at the call ------------------------------------------------------------------------

    def dropped(self, command: bytes, reason: DropReason) -> Tuple[bool, Optional[List[bytes]]]:
        """A caller dropped ``command``: counted, kept for ``on_error`` within bounds (see ``Drops.add``)."""
        with self.lock:
            self.counts.dropped[reason] += 1
            return self.drops.add(command, reason)

    def report_drops(self, bounded: bool = False) -> None:
        """Pass the dropped commands waiting to ``on_error`` and warn (rate-limited); ``bounded``: not
        while earlier ones still wait for it (they stay in ``drops``, within its bound)."""
        if not self.drops.waiting or bounded and self.reporter.drops_waiting:
            return
        with self.lock:
            taken = self.drops.take()
        for reason, commands, not_kept in taken:
            self.report_dropped(reason, commands, not_kept)

    def report_dropped(self, reason: DropReason, commands: List[bytes], not_kept: int) -> int:
        """Queue dropped commands for ``on_error`` and warn (rate-limited), with their true reason; how
        many chunks were queued."""
        limits = self._limits
        if reason == FULL:
            text = f"the queue is full ({limits.max_queue_size} commands or {limits.max_queue_bytes} bytes)"
        else:
            text = "the client is closed"
        self.progress.dropped_at = self._clock()
        self.reporter.dropped(len(commands) + not_kept, text)
        kind = QueueFull if reason == FULL else ClientClosedError  # what on_error gets says which
        return self.reporter.dropped_commands(kind(f"{len(commands) + not_kept} commands dropped: {text}"), commands)

    @property
    def not_spooled_unsaid(self) -> bool:
        """Commands the spool could not take were not warned about yet."""
        return self.counts.not_spooled != self._not_spooled_said.total

    def say_not_spooled(self, folder: str, failure: str) -> None:
        """One warning (at most a minute) for the commands the spool could not take since the last."""
        total = self.counts.not_spooled
        said = self._not_spooled_said
        if total == said.total:
            return
        now = self._clock()
        if now - said.said_at < LET_GO_WARNING_SECONDS:
            return
        logger.warning(
            "seven_segments: %d commands are not in the spool %s (%s): they are sent from memory, and lost if"
            " this process dies before they are delivered",
            total - said.total,
            folder,
            failure or "it cannot be written",
        )
        said.total, said.said_at = total, now

    def late(self, late: Sequence[bytes], spooled: int, seq: int) -> None:
        """After the stop: commands that reached the queue after the pump's last look (``spooled`` of
        them on disk already: kept) failed, and every flush waiting answered."""
        if spooled:
            with self.lock:
                self.counts.kept += spooled
            self._release(spooled, 0)
            self.flushes.not_all_delivered()
        if late:
            error = ServiceUnavailable(f"{len(late)} commands arrived after the client was closed")
            logger.warning("seven_segments: %s", error)
            with self.lock:
                self.counts.failed += len(late)
                self.counts.last_failed_seq = max(self.counts.last_failed_seq, seq)
            self._release(len(late), 0)
            self.reporter.failed(error, late)
            self.flushes.not_all_delivered()
        self.flushes.answer_all(delivered_all=True)


def _as_is(text: str) -> str:
    return text


class Flushes:
    """Flush tickets placed by the pump, and their verdicts (written here only: see ``Settlement``)."""

    def __init__(self, lock: threading.Lock, counts: Counts) -> None:
        self._lock = lock
        self._counts = counts
        #: Flushes placed by the pump, waiting for the commands queued before them to settle.
        self.tickets: List[FlushTicket] = []

    def queued(self, ticket: FlushTicket) -> None:
        """A caller is queuing ``ticket``: it answers for the commands dropped before this call only
        (a drop is counted before its call returns)."""
        with self._lock:
            self._counts.tickets_queued += 1
            ticket.drops = self._counts.total_dropped

    def place(self, ticket: FlushTicket, upto: int, kept_waiting: bool) -> None:
        """The pump took ``ticket``, behind command ``upto``: it waits with the others. It cannot say all
        was delivered when commands failed or were dropped (before its call: see ``queued``) since the
        flush its caller saw last, or (``kept_waiting``) commands kept on disk cannot be read back now."""
        ticket.upto = upto
        with self._lock:
            counts = self._counts
            counts.tickets_queued -= 1
            if counts.last_failed_seq > counts.reported_upto or ticket.drops > counts.reported_drops:
                ticket.delivered_all = False
        if kept_waiting:
            ticket.delivered_all = False
        self.tickets.append(ticket)

    def wait_for_read_back(self, seq: int) -> None:
        """Commands read back were queued before every flush waiting now: the flushes wait for them."""
        for ticket in self.tickets:
            ticket.upto = max(ticket.upto, seq)

    def not_all_delivered(self, first: int = 0) -> None:
        """The flushes waiting for command ``first`` (or any, for 0) will say not all was delivered."""
        for ticket in self.tickets:
            if ticket.upto >= first:
                ticket.delivered_all = False

    def answer(self, first_unsettled: float, left_on_disk: bool) -> None:
        """Answer the flushes whose commands all settled (before ``first_unsettled``); not all was
        delivered when commands were left on disk."""
        waiting = []
        for ticket in self.tickets:
            if ticket.upto < first_unsettled:
                if left_on_disk:
                    ticket.delivered_all = False
                ticket.done.set()
            else:
                waiting.append(ticket)
        self.tickets = waiting

    def answer_all(self, delivered_all: bool) -> None:
        """Answer every flush waiting (at close)."""
        for ticket in self.tickets:
            if not delivered_all:
                ticket.delivered_all = False
            ticket.done.set()
        self.tickets = []

    def seen(self, ticket: FlushTicket) -> None:
        """The caller of ``ticket`` was told its result: later flushes judge from here."""
        with self._lock:
            counts = self._counts
            counts.reported_upto = max(counts.reported_upto, ticket.upto)
            counts.reported_drops = max(counts.reported_drops, ticket.drops)

    def all_delivered_after_close(self) -> bool:
        """After the stop: whether everything since the last flush seen was delivered."""
        with self._lock:
            counts = self._counts
            return (
                counts.last_failed_seq <= counts.reported_upto
                and counts.total_dropped <= counts.reported_drops
                and counts.unconfirmed == 0
                and counts.taken == counts.sent + counts.failed
            )


class CloseReport:
    """The warnings of a close: commands failed while closing are said once, in its summary."""

    def __init__(self, counts: Counts, reporter: Reporter) -> None:
        self._counts = counts
        self._reporter = reporter
        self.count = 0
        self.last = ""
        self.said = False
        self.kept_said = False

    def add(self, count: int, why: str) -> None:
        """``count`` commands failed while closing, for ``why``: said in the summary."""
        self.count += count
        self.last = why

    def lost(self, waiting: int, unconfirmed: int, timeout: float, last_trouble: str) -> None:
        """The one warning of a close deadline that passed in memory: ``waiting`` commands not
        delivered, ``unconfirmed`` in flight, with the losses said before in the close's summary."""
        losses = self
        lost = waiting + unconfirmed + losses.count
        parts = []
        if losses.count:
            parts.append(f"{losses.count} failed ({losses.last})")
        if waiting:
            last = f"; last error: {last_trouble}" if last_trouble else ""
            parts.append(f"{waiting} not delivered within the close deadline ({timeout:g} s{last})")
        if unconfirmed:
            parts.append(
                f"{unconfirmed} unconfirmed (in flight at the deadline: the server may have applied them; sending"
                " them again is safe)"
            )
        logger.warning("seven_segments: %d commands were lost at close: %s", lost, ", ".join(parts))
        losses.said = True

    def kept(self, kept: int, folder: str, timeout: float, last_trouble: str) -> None:
        """The one warning of a close deadline that passed with a spool: ``kept`` commands stay in it."""
        self.kept_said = True
        if kept:
            last = f"; last error: {last_trouble}" if last_trouble else ""
            logger.warning(
                "seven_segments: %d commands were kept in the spool %s: not delivered within the close deadline"
                " (%g s%s); the next client on that folder delivers them",
                kept,
                folder,
                timeout,
                last,
            )

    def summary(self, folder: Optional[str]) -> None:
        """The one warning of a close that lost commands before its deadline (none when the deadline's
        warning spoke), and, with a spool (``folder``), of commands kept and not read back since."""
        losses = self
        if folder is not None and not losses.kept_said and self._counts.kept:
            losses.kept_said = True
            logger.warning(
                "seven_segments: %d commands were kept in the spool %s: not delivered within retry_deadline;"
                " the next client on that folder delivers them",
                self._counts.kept,
                folder,
            )
        if losses.count and not losses.said:
            losses.said = True  # once: the closer and a pump that comes back both sum up
            logger.warning("seven_segments: %d commands were lost at close: %s", losses.count, losses.last)
        self._reporter.flush_drop_warnings()

    def report(self, until: float, pump_alive: bool, grace: float) -> None:
        """After the close: ``on_error`` receives what was given up until ``until`` (on this thread
        when the pump's thread is gone; else the pump finishes the chunks it has); what is left then is
        counted in a warning."""
        reporter = self._reporter
        if not pump_alive:
            reporter.drain(until=until)  # nobody else will
        else:
            while reporter.pending and reporter.clock() < until:
                time.sleep(REPORT_POLL)
        unreported = reporter.abandon()
        if unreported:
            logger.warning(
                "seven_segments: %d commands given up at close were not passed to on_error: it did not keep up"
                " within %g s after the close deadline",
                unreported,
                grace,
            )


REPORT_POLL = 0.005


class _RateLimited:
    """A count said at most every ``LET_GO_WARNING_SECONDS``."""

    __slots__ = ("unsaid", "said_at", "total")

    def __init__(self) -> None:
        self.unsaid = 0
        self.said_at = -math.inf
        self.total = 0

    def add(self, count: int, now: float) -> int:
        """Add ``count``; how many to say now (0: not yet)."""
        self.unsaid += count
        self.total += count
        if now - self.said_at < LET_GO_WARNING_SECONDS:
            return 0
        unsaid, self.unsaid, self.said_at = self.unsaid, 0, now
        return unsaid

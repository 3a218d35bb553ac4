"""The one place that counts: commands taken, sent, failed, unconfirmed, dropped; requests in flight.

Written by the pump once per batch (never per command) and by callers only when they drop a command,
always under ``lock``; read by ``stats()`` from any thread. A request in flight is settled exactly once:
whoever takes it out of ``in_flight`` first (the pump with its answer, or a closer giving up on it)
counts it, and the other finds nothing to count.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Tuple

from .batching import Batch

__all__ = ["Ledger", "DropReason", "FULL", "CLOSED", "REASONS"]

DropReason = str
#: Why a command was dropped at the call.
FULL: DropReason = "full"
CLOSED: DropReason = "closed"
REASONS = (FULL, CLOSED)


class Ledger:
    """Counters and the requests in flight of one engine."""

    def __init__(self, keep_drops: int) -> None:
        self.lock = threading.Lock()
        #: How many dropped commands are kept for ``on_error`` until the pump reports them (0: none).
        self.keep_drops = keep_drops
        self.taken = 0
        self.sent = 0
        self.failed = 0
        self.unconfirmed = 0
        self.retried = 0
        self.batches = 0
        #: With a spool: commands taken from it (left by an earlier process), and kept in it at close.
        self.replayed = 0
        self.kept = 0
        #: With a spool: commands it could not take (full, the disk full, not writable), queued in
        #: memory only.
        self.not_spooled = 0
        self.dropped: Dict[DropReason, int] = {reason: 0 for reason in REASONS}
        #: Dropped commands waiting to be passed to ``on_error``, and those beyond ``keep_drops``.
        self.drops: Dict[DropReason, List[bytes]] = {reason: [] for reason in REASONS}
        self.drops_not_kept: Dict[DropReason, int] = {reason: 0 for reason in REASONS}
        self.in_flight: Dict[int, Batch] = {}
        #: The highest sequence number that failed, and what flush callers have seen so far.
        self.last_failed_seq = 0
        self.reported_upto = 0
        self.reported_drops = 0
        #: ``flush()`` requests in the incoming queue, not yet placed by the pump.
        self.tickets_queued = 0

    # Callers ------------------------------------------------------------------------------------

    def drop(self, command: bytes, reason: DropReason) -> Tuple[bool, Optional[List[bytes]]]:
        """Count a dropped command, kept for ``on_error`` within bounds. Returns whether it is the first
        one waiting to be reported, and, when the kept ones reached the bound before the pump could
        report them, those commands, taken out for the caller to report itself."""
        with self.lock:
            self.dropped[reason] += 1
            if not self.keep_drops:
                self.drops_not_kept[reason] += 1
                return self.drops_not_kept[reason] == 1, None
            kept = self.drops[reason]
            kept.append(command)
            if len(kept) < self.keep_drops:
                return len(kept) == 1, None
            self.drops[reason] = []
            return False, kept

    def count_not_spooled(self) -> None:
        """A command the spool could not take was queued in memory only."""
        with self.lock:
            self.not_spooled += 1

    @property
    def total_dropped(self) -> int:
        """Commands dropped at the call, for any reason."""
        return sum(self.dropped.values())

    def take_drops(self) -> List[Tuple[DropReason, List[bytes], int]]:
        """The dropped commands waiting to be reported, by reason, with the count of those not kept."""
        taken = []
        with self.lock:
            for reason in REASONS:
                kept, not_kept = self.drops[reason], self.drops_not_kept[reason]
                if kept or not_kept:
                    taken.append((reason, kept, not_kept))
                    self.drops[reason] = []
                    self.drops_not_kept[reason] = 0
        return taken

    # The pump -----------------------------------------------------------------------------------

    def launch(self, number: int, batch: Batch) -> None:
        """``batch`` goes out as request ``number``."""
        with self.lock:
            self.in_flight[number] = batch

    def land(self, number: int) -> Optional[Batch]:
        """Request ``number`` was answered: its batch, or None when a closer already gave up on it."""
        with self.lock:
            return self.in_flight.pop(number, None)

    def give_up_in_flight(self, unconfirmed: bool = True) -> List[Batch]:
        """Take every request in flight out, counted as unconfirmed (they may have been applied)
        unless the caller counts them otherwise (kept in a spool)."""
        with self.lock:
            batches = list(self.in_flight.values())
            self.in_flight.clear()
            if unconfirmed:
                self.unconfirmed += sum(map(len, batches))
        return batches

    def count(self, *, sent: int = 0, retried: int = 0, batches: int = 0) -> None:
        """Add to the counters of delivery."""
        with self.lock:
            self.sent += sent
            self.retried += retried
            self.batches += batches

    def count_failed(self, count: int, last_seq: int) -> None:
        """``count`` commands failed for good, the last of them numbered ``last_seq``."""
        with self.lock:
            self.failed += count
            if last_seq > self.last_failed_seq:
                self.last_failed_seq = last_seq

    def count_kept(self, count: int) -> None:
        """``count`` spooled commands were let go of undelivered: they stay in the spool, for this
        process to read back (after an outage) or for the next client on the folder."""
        with self.lock:
            self.kept += count

    def first_in_flight(self) -> float:
        """The oldest sequence number in flight (infinity when none is)."""
        with self.lock:
            return min((batch.first_seq for batch in self.in_flight.values()), default=float("inf"))

    def snapshot(self, waiting: int) -> Dict[str, int]:
        """The counters as ``stats()`` shows them; ``waiting``: commands queued but not yet taken."""
        with self.lock:
            queued = self.taken + waiting
            settled = self.sent + self.failed + self.unconfirmed + self.kept
            return {
                "queued": queued,
                "sent": self.sent,
                "retried": self.retried,
                "failed": self.failed,
                "unconfirmed": self.unconfirmed,
                "dropped": sum(self.dropped.values()),
                "dropped_queue_full": self.dropped[FULL],
                "dropped_closed": self.dropped[CLOSED],
                "replayed": self.replayed,
                "not_spooled": self.not_spooled,
                "kept_in_spool": self.kept,
                "batches": self.batches,
                "in_flight": len(self.in_flight),
                "pending": max(0, queued - settled),
            }

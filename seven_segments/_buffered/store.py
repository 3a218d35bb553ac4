"""Where the commands the pump holds lie: in memory only, or in memory and in a durable spool.

The pump asks a store the same things whichever it is (:class:`Store`): take what callers queued,
tell it what settled, give back what the API did not take in time (let go: kept on disk, or not),
read back what it keeps, and settle what is left at the close deadline. :class:`MemoryStore` keeps
nothing; :class:`SpoolStore` keeps what the spool holds and reads it back.

A queued command is one kind per store: with memory only, its bytes; with a spool, a :class:`Spooled`
(its bytes, and where the spool holds them, or None when the spool could not take it).
"""

from __future__ import annotations

import array
import enum
import logging
from itertools import repeat
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..errors import SevenSegmentsError, ServiceUnavailable
from ..serialization import BulkCommandEncoder
from .batching import Batch
from .lifecycle import Phase
from .limits import Limits
from .settlement import Settlement

if TYPE_CHECKING:
    from ..spool import Record, Spool

__all__ = ["MemoryStore", "Reading", "Spooled", "SpoolStore", "Store", "READ_BACK_CHUNK"]

logger = logging.getLogger("seven_segments")

#: Commands kept on disk in an outage are read back at most this many at a time.
READ_BACK_CHUNK = 1_000

Chunk = List[Tuple["Record", bytes]]


class Spooled:
    """A command a client with a spool queued: its bytes, and where the spool holds them (None: the
    spool could not take it, so only memory holds it)."""

    __slots__ = ("payload", "record")

    def __init__(self, payload: bytes, record: "Optional[Record]") -> None:
        self.payload = payload
        self.record = record


class Reading(enum.Enum):
    """What the pump is reading back from the store, before or between new commands."""

    #: Nothing (always, in memory).
    NOTHING = "nothing"
    #: The files of processes that died (``Spool.recover``): before any new command.
    DEAD_WRITERS = "dead writers"
    #: This process's commands let go of in an outage (``Spool.reread``): counted once already,
    #: between new commands; flushes wait for them while they can go on.
    LET_GO = "let go"
    #: The same, but some of what was read back was let go of again (the API is still down):
    #: flushes no longer wait for the rest.
    LET_GO_AGAIN = "let go again"


class Left:
    """What is left unsettled at the close deadline: requests in flight, batches waiting, commands that
    reached the queue late (numbered ``seq``, the last number given)."""

    __slots__ = ("in_flight", "waiting", "late", "seq", "timeout", "last_trouble")

    def __init__(
        self, in_flight: List[Batch], waiting: List[Batch], late: List[Any], seq: int, timeout: float, last_trouble: str
    ) -> None:
        self.in_flight = in_flight
        self.waiting = waiting
        self.late = late
        self.seq = seq
        self.timeout = timeout
        self.last_trouble = last_trouble


class Store:
    """What the pump needs from where commands lie (the memory-only behaviour: keeps nothing)."""

    #: The folder a close's warning names (None: memory only).
    folder: Optional[str] = None
    #: On the caller's thread, before a command is queued: what to queue (None: its bytes as they are).
    admit: Optional[Callable[[bytes, int], Any]] = None

    def __init__(self, settlement: Settlement) -> None:
        self.settlement = settlement
        self.reading = Reading.NOTHING

    @property
    def bytes_held(self) -> int:
        """Bytes the store holds on disk (0 in memory)."""
        return 0

    def take(self, items: List[Any], first_seq: int) -> List[bytes]:
        """The bytes of ``items`` (queued commands), numbered from ``first_seq``."""
        return items

    def taken(self) -> None:
        """The pump took commands (a spool makes its next segment here, not on a caller's thread)."""

    def payloads(self, items: List[Any]) -> List[bytes]:
        """The bytes of queued commands taken when the queue was emptied."""
        return items

    def settled(self, seqs: Sequence[int]) -> None:
        """These commands settled (delivered, or failed and reported): not to be read back."""

    def fail(
        self,
        seqs: Sequence[int],
        payloads: Sequence[bytes],
        error: Optional[SevenSegmentsError],
        held_bytes: Optional[int] = None,
    ) -> None:
        """Commands failed for good: not to be read back; counted, said and reported (``error``: none
        when None, said later)."""
        if not seqs:
            return
        self.settled(seqs)
        self.settlement.failed(seqs, payloads, error, held_bytes=held_bytes)

    def fail_unrefused(self, seqs: Sequence[int], payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Commands that failed without the API refusing them (the host does not resolve, TLS, a proxy,
        a redirect): failed and reported like others; a spool keeps them on disk (see ``SpoolStore``)."""
        self.fail(seqs, payloads, error)

    def let_go(self, seqs: Sequence[int], payloads: Sequence[bytes], why: SevenSegmentsError) -> List[int]:
        """The API did not take these commands within ``retry_deadline``: those the store keeps are
        settled as kept; returns the indexes of the others (the pump fails them)."""
        return list(range(len(seqs)))

    @property
    def has_kept(self) -> bool:
        """Commands let go of in an outage wait to be read back."""
        return False

    @property
    def reading_back(self) -> bool:
        """Reading back commands this process let go of in an outage."""
        return self.reading is Reading.LET_GO or self.reading is Reading.LET_GO_AGAIN

    def read_back_kept(self, phase: Phase) -> None:
        """Read back what was let go of (the API answers again, a flush, a close), unless reading already."""

    def read(self, first_seq: int) -> Optional[List[bytes]]:
        """The next chunk read back, numbered from ``first_seq``; None when reading ended."""
        self.reading = Reading.NOTHING
        return None

    def end_reading(self) -> None:
        """Stop reading back: what is left stays where it lies."""
        self.reading = Reading.NOTHING

    def say(self) -> None:
        """Warn about what the store could not take (rate-limited)."""

    def close_deadline(self, left: Left) -> None:
        """Settle what is left at the close deadline: in memory, lost (in flight: unconfirmed)."""
        settlement = self.settlement
        waiting = [payload for batch in left.waiting for payload in batch.payloads]
        seqs = [seq for batch in left.waiting for seq in batch.seqs]
        late = self.payloads(left.late)
        settlement.close_report.lost(len(waiting) + len(late), sum(map(len, left.in_flight)), left.timeout, left.last_trouble)
        timeout = f"{left.timeout:g} s"
        settlement.unconfirmed(
            left.in_flight,
            ServiceUnavailable(
                f"not confirmed within the close deadline ({timeout}): the request was in flight and may have been applied"
            ),
        )
        error = ServiceUnavailable(f"not delivered within the close deadline ({timeout})")
        settlement.failed(seqs, waiting, error)
        settlement.failed([left.seq] * len(late), late, error, held_bytes=0)
        settlement.flushes.not_all_delivered()

    def late(self, items: List[Any], seq: int) -> None:
        """After the stop: settle commands that reached the queue after the pump's last look."""
        self.settlement.late(self.payloads(items), 0, seq)

    def close(self) -> None:
        """Release what the store holds open."""


MemoryStore = Store


class SpoolStore(Store):
    """Commands in memory and in a durable spool: what the API did not take in time stays on disk."""

    def __init__(
        self,
        settlement: Settlement,
        spool: "Spool",
        limits: Limits,
        token: str,
        add_secret: Callable[[str], None],
    ) -> None:
        super().__init__(settlement)
        self.spool = spool
        self.folder = spool.folder
        self._limits = limits
        #: Keeps the company tokens of replayed commands out of what the server's text quotes (a dead
        #: client's spool may have been written with another token).
        self._add_secret = add_secret
        self._tokens_seen: Set[str] = {token}
        #: The record of each spooled command held, by sequence number (confirmed when it settles).
        self._records: "Dict[int, Record]" = {}
        #: The chunks being read back (see ``Reading``): set and ended with ``reading``.
        self._chunks: "Optional[Iterator[Chunk]]" = None
        #: The records of commands let go of in an outage, kept as offsets by segment name, 8 bytes
        #: each (an outage may let go of millions): read back after an answer that settles anything,
        #: for a flush, and once by a close.
        self._kept: "Dict[str, array.array[int]]" = {}
        # Chunks of a quarter of the queue at most, as for read_back_kept: replay (within half the
        # queue) leaves room for the commands queued meanwhile.
        self._start(spool.recover(chunk_size=self._chunk_size()), Reading.DEAD_WRITERS)

    def _chunk_size(self) -> int:
        return max(1, min(READ_BACK_CHUNK, self._limits.max_queue_size // 4))

    @property
    def bytes_held(self) -> int:
        return self.spool.bytes_held

    def admit(self, payload: bytes, pid: int) -> Spooled:
        """On the caller's thread: write ``payload`` down; a command the spool cannot take (full, the
        disk full) is queued in memory only, and counted."""
        record = self.spool.append(payload, pid)
        if record is None:
            self.settlement.not_spooled()
        return Spooled(payload, record)

    def take(self, items: List[Any], first_seq: int) -> List[bytes]:
        records = self._records
        seq = first_seq
        for item in items:
            if item.record is not None:
                records[seq] = item.record
            seq += 1
        return [item.payload for item in items]

    def taken(self) -> None:
        try:
            self.spool.prepare_next()
        except Exception:  # never stops delivery: the caller that needs the segment makes it
            logger.exception("seven_segments: preparing the next spool segment failed")

    def payloads(self, items: List[Any]) -> List[bytes]:
        return [item.payload for item in items]

    def settled(self, seqs: Sequence[int]) -> None:
        records = self._records
        if not records:
            return
        settled = [record for record in map(records.pop, seqs, repeat(None)) if record is not None]
        if settled:
            try:
                self.spool.confirm(settled)
            except Exception:  # the commands were delivered: at worst they are sent again (ids dedupe)
                logger.exception("seven_segments: confirming spooled commands failed")

    def fail_unrefused(self, seqs: Sequence[int], payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Failed and reported, but not confirmed: only what the API refused is settled on disk; these
        stay in the spool for the next client on the folder (their ``command_id`` dedupes a resend)."""
        records = self._records
        for seq in seqs:
            records.pop(seq, None)
        self.settlement.failed(seqs, payloads, error)

    def let_go(self, seqs: Sequence[int], payloads: Sequence[bytes], why: SevenSegmentsError) -> List[int]:
        records = self._records
        on_disk = [index for index, seq in enumerate(seqs) if seq in records]
        if on_disk:
            kept = self._kept
            for index in on_disk:
                name, offset = records.pop(seqs[index])
                offsets = kept.get(name)
                if offsets is None:
                    offsets = kept[name] = array.array("Q")
                offsets.append(offset)
            if self.reading is Reading.LET_GO:
                self.reading = Reading.LET_GO_AGAIN
            size = sum(len(payloads[index]) for index in on_disk)
            self.settlement.kept([seqs[index] for index in on_disk], size, why, self.spool.folder)
        if len(on_disk) == len(seqs):
            return []
        kept_here = set(on_disk)
        return [index for index in range(len(seqs)) if index not in kept_here]

    @property
    def has_kept(self) -> bool:
        return bool(self._kept)

    def read_back_kept(self, phase: Phase) -> None:
        if not self._kept or self.reading is not Reading.NOTHING or phase not in (Phase.RUNNING, Phase.DRAINING):
            return
        kept, self._kept = self._kept, {}
        # Chunks of a quarter of the queue at most: new commands keep room while these go again.
        self._start(self.spool.reread(kept, self._chunk_size(), self._lost_on_disk), Reading.LET_GO)

    def _lost_on_disk(self, count: int, path: str) -> None:
        self.settlement.lost_on_disk(count, path, self._last_seq)

    def read(self, first_seq: int) -> Optional[List[bytes]]:
        self._last_seq = first_seq - 1
        try:
            chunk = next(self._chunks) if self._chunks is not None else None
        except StopIteration:
            chunk = None
        except Exception:  # a damaged spool must never stop delivery of new commands
            logger.exception("seven_segments: reading the spool failed; what is left stays on disk")
            chunk = None
        if chunk is None:
            self.end_reading()
            return None
        if self.reading is Reading.DEAD_WRITERS:
            self._learn_tokens(chunk)
        records = self._records
        for offset, (record, _) in enumerate(chunk):
            records[first_seq + offset] = record
        return [payload for _, payload in chunk]

    def _learn_tokens(self, chunk: Chunk) -> None:
        """Mask the company tokens of replayed commands (written by another client, perhaps with
        another token) wherever the server's text is quoted, as this client's own token is."""
        seen = self._tokens_seen
        for _, payload in chunk:
            token = BulkCommandEncoder.company_of(payload)
            if token is not None and token not in seen:
                seen.add(token)
                self._add_secret(token)

    def _start(self, chunks: "Iterator[Chunk]", reading: Reading) -> None:
        self._chunks = chunks
        self.reading = reading
        self._last_seq = 0

    def end_reading(self) -> None:
        self._chunks = None
        self.reading = Reading.NOTHING

    def say(self) -> None:
        if self.settlement.not_spooled_unsaid:
            self.settlement.say_not_spooled(self.spool.folder, self.spool.last_failure)

    def close_deadline(self, left: Left) -> None:
        """With a spool, what is left stays in it for the next client on the folder (the requests in
        flight too: resending them is safe); only what the spool could not take is lost."""
        self.end_reading()  # what was not read back yet stays in the spool (counted as kept already)
        records = self._records
        error = ServiceUnavailable(f"not delivered within the close deadline ({left.timeout:g} s), and not in the spool")
        kept = 0
        for batch in left.in_flight + left.waiting:
            lost = [index for index, seq in enumerate(batch.seqs) if seq not in records]
            kept += len(batch) - len(lost)
            self.settlement.failed([batch.seqs[i] for i in lost], [batch.payloads[i] for i in lost], error)
        late = [item.payload for item in left.late if item.record is None]
        kept += len(left.late) - len(late)
        self.settlement.failed([left.seq] * len(late), late, error, held_bytes=0)
        records.clear()
        on_disk = self.settlement.kept_at_close(kept)  # with those let go of earlier
        self.settlement.close_report.kept(on_disk, self.spool.folder, left.timeout, left.last_trouble)

    def late(self, items: List[Any], seq: int) -> None:
        in_memory = [item.payload for item in items if item.record is None]
        # Those on disk already stay there: the next client on the folder delivers them.
        self.settlement.late(in_memory, len(items) - len(in_memory), seq)

    def close(self) -> None:
        self.spool.close()

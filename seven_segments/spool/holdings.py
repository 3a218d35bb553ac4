"""What one spool holds: its segments (the one being written, a spare, the sealed and taken-over
ones), the disk they take, and its counters; all under the spool's one lock.

A segment is sealed when the next record would take it past ``segment_bytes`` (its map closed, the
unwritten rest of its file given back); a sealed segment whose records are all confirmed is
deleted with its ack file, so the spool does not grow while the API is up.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from . import files
from .format import ack_bytes
from .segments import Segment, SegmentMaker, _no_longer_in_hand, release, unlink_quietly

logger = logging.getLogger(__name__)

#: Why a record was not written when the spool's bound was reached.
FULL = "full: spool_max_bytes reached"
#: What ``dict.pop`` gives for an offset not (or no longer) unconfirmed.
_ABSENT = object()
#: A segment's ``ack_fd`` when its ack file is not a regular file: confirmations are not noted.
_NO_ACK_FILE = -2


class Tally:
    """Counters of one spool in this process (see ``Spool.stats``), and why the last write failed."""

    __slots__ = ("appended", "confirmed", "replayed", "dropped", "damaged", "failure_logged", "last_failure")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start counting again (a forked child's counters start at 0)."""
        self.appended = self.confirmed = self.replayed = self.dropped = self.damaged = 0
        self.failure_logged = False
        #: Why the last record that could not be written was not ("" when none failed).
        self.last_failure = ""

    def drop(self, why: str) -> None:
        """A record was not written, because of ``why`` ("" keeps the last reason)."""
        self.dropped += 1
        if why:
            self.last_failure = why


class Holdings:
    """The segments one spool holds, by name, and the bytes their files take (``kept_bytes``),
    guarded by ``lock``. An RLock only so that ``append`` can ask whether this thread holds it (the
    question ``threading.Condition`` asks too); the lock and its question are read together, from
    one tuple (``after_fork`` replaces both)."""

    def __init__(self, maker: SegmentMaker, tally: Tally, max_bytes: int) -> None:
        self.maker = maker
        self.tally = tally
        self.max_bytes = max_bytes
        self.lock = threading.RLock()
        self.lock_and_owner: "Tuple[threading.RLock, Callable[[], bool]]" = (self.lock, getattr(self.lock, "_is_owned"))
        self.segments: Dict[str, Segment] = {}
        #: The target of each file taken over (a dead writer's), by segment name.
        self.targets: Dict[str, str] = {}
        self.current: Optional[Segment] = None
        #: The segment made ahead of need by ``prepare_next`` (held, empty), which the append that
        #: fills the current one takes over.
        self.spare: Optional[Segment] = None
        self.kept_bytes = 0
        self.closed = False
        self.kept_at_close = 0

    def forget_after_fork(self) -> None:
        """In a forked child: a new lock (the parent's may have been held by one of its threads),
        and none of the parent's files (their descriptors closed, their locks left to the parent)."""
        self.lock = threading.RLock()
        self.lock_and_owner = (self.lock, getattr(self.lock, "_is_owned"))
        for segment in self.segments.values():
            release(segment, forked=True)
        self.segments = {}
        self.targets = {}
        self.current = self.spare = None
        self.kept_bytes = 0

    def hold(self, segment: Segment) -> None:
        """Hold ``segment`` (made here, or taken over), under the lock."""
        self.segments[segment.name] = segment
        self.kept_bytes += segment.allocated

    def new_segment(self, capacity: int = 0, reserve: bool = True) -> Segment:
        """Make a new segment and hold it (under the lock); see ``SegmentMaker.make``."""
        self.maker.serial += 1
        segment = self.maker.make(self.maker.serial, capacity, reserve)
        self.hold(segment)
        _no_longer_in_hand(segment)
        return segment

    def next_segment(self, full: Optional[Segment], size: int) -> Optional[Segment]:
        """Seal ``full`` (the current segment, which has no room for ``size`` bytes) and start the next
        one, under the lock; None (the record counted as dropped) when the spool's bound leaves no room
        or the file cannot be made (then none is tried again for a second)."""
        if full is not None:
            self.seal(full)
        maker = self.maker
        spare = self.spare
        if spare is not None and maker.start + size <= spare.capacity:
            self.spare = None
            self.current = spare
            return spare
        room = self.max_bytes - self.kept_bytes
        capacity = min(max(maker.segment_bytes, maker.start + size), room)
        if maker.mapped and capacity < maker.start + size or not maker.mapped and room < maker.start + size:
            self.tally.drop(FULL)
            return None
        now = time.monotonic()
        if now < maker.no_segment_until:
            self.tally.drop("")
            return None
        try:
            self.current = self.new_segment(capacity)
        except OSError as error:
            maker.no_segment_until = now + 1.0
            self.write_failed(None, error)
            return None
        return self.current

    def seal(self, segment: Segment) -> None:
        """No more records go to ``segment`` (under the lock): its map is closed and the unwritten
        rest of its file given back; deleted at once when nothing in it waits."""
        segment.sealed = True
        if self.current is segment:
            self.current = None
        if segment.view is not None:
            segment.view.close()
            segment.view = None
            try:
                os.ftruncate(segment.fd, segment.size)
                self.kept_bytes -= segment.allocated - segment.size
                segment.allocated = segment.size
            except OSError:
                pass  # the rest stays allocated (zeros, which readers skip) until the file is deleted
        if not segment.unconfirmed:
            self.delete(segment)

    def write_failed(self, segment: Optional[Segment], error: OSError) -> None:
        """Count the drop (the lock is held) and seal the segment: what part of the record got written
        stays as a gap that readers skip (length and checksum), and the next record goes to a new file."""
        self.tally.drop(error.strerror or str(error))
        if not self.tally.failure_logged:
            self.tally.failure_logged = True
            logger.warning(
                "seven_segments: cannot write to the spool %s (%s); records are not kept there until it can be",
                self.maker.folder, error.strerror or error,
            )
        if segment is not None and segment is self.current:
            self.seal(segment)

    def delete(self, segment: Segment) -> None:
        """Remove a segment (file first, then its ack file, then the lock), under the lock."""
        unlink_quietly(segment.path, segment.ack_path)
        release(segment)
        self.kept_bytes -= segment.allocated
        self.segments.pop(segment.name, None)
        self.targets.pop(segment.name, None)

    def reserve(self, segment: Segment, offset: int, size: int) -> bool:
        """Reserve the place of a record in a ``pwrite`` segment (under the lock), to be written
        outside it (``pwrite``); False (the record dropped) when the spool's bound leaves no room."""
        if self.kept_bytes + size > self.max_bytes:
            self.tally.drop(FULL)
            return False
        segment.size = segment.allocated = offset + size
        segment.records += 1
        segment.unconfirmed[offset] = None
        self.kept_bytes += size
        self.tally.appended += 1
        segment.writers += 1
        return True

    def pwrite(self, segment: Segment, data: bytes, offset: int) -> bool:
        """Write a record at the place reserved for it in a ``pwrite`` segment, outside the lock (the
        caller counted ``segment.writers``); on failure, give the place back and count the drop.
        False when it failed."""
        fd, size = segment.fd, len(data)
        failure: Optional[OSError] = None
        try:
            written = os.pwrite(fd, data, offset)
            if written != size:
                raise OSError(errno.ENOSPC, f"only {written} of {size} bytes written")
            if self.maker.fsync:
                os.fsync(fd)
        except OSError as error:
            failure = error
        finally:  # also for KeyboardInterrupt in a slow fsync: the count of writers must come down
            with self.lock:
                segment.writers -= 1
                if failure is not None:
                    self._give_back(segment, fd, offset, size, failure)
                if segment.closed:  # released while this record was being written: the last writer closes
                    release(segment)
        return failure is None

    def _give_back(self, segment: Segment, fd: int, offset: int, size: int, failure: OSError) -> None:
        """A ``pwrite`` failed: the record is no longer held (under the lock)."""
        segment.unconfirmed.pop(offset, None)
        segment.records -= 1
        self.kept_bytes -= size
        self.tally.appended -= 1
        if segment.size == offset + size and not segment.closed:  # the last place reserved: cut what got written
            try:
                os.ftruncate(fd, offset)
                segment.size = segment.allocated = offset
            except OSError:
                pass
        if not segment.closed:
            self.write_failed(segment, failure)

    def confirm(self, by_segment: Dict[str, List[int]]) -> None:
        """Note confirmed offsets, by segment name (under the lock): one write to each touched
        segment's ack file; a sealed segment whose records are all confirmed is deleted."""
        for name, offsets in by_segment.items():
            segment = self.segments.get(name)  # None: deleted, a parent's (after a fork), or closed
            if segment is None or segment.closed:
                continue
            take = segment.unconfirmed.pop
            fresh = [offset for offset in offsets if take(offset, _ABSENT) is not _ABSENT]
            if not fresh:
                continue
            self.tally.confirmed += len(fresh)
            if segment.sealed and not segment.unconfirmed:
                self.delete(segment)
            elif segment.ack_fd != _NO_ACK_FILE:
                _note_acks(segment, fresh)

    def close(self) -> int:
        """Let go of every file (under the lock), deleting those with nothing unconfirmed; how many
        records remain unconfirmed."""
        kept = 0
        for segment in list(self.segments.values()):
            if segment.view is not None and segment.unconfirmed:
                self.seal(segment)  # gives back the unwritten rest of its file
            if not segment.unconfirmed:
                self.delete(segment)
            else:
                kept += len(segment.unconfirmed)
                release(segment)
        self.segments = {}
        self.current = self.spare = None
        self.closed = True
        self.kept_at_close = kept
        return kept

    def kept(self) -> int:
        """Records unconfirmed now (under the lock)."""
        if self.closed:
            return self.kept_at_close
        return sum(len(segment.unconfirmed) for segment in self.segments.values())

    def take_spare(self, segment: Segment, pid: int) -> bool:
        """Hold ``segment``, made ahead by ``prepare_next`` outside the lock, as the spare (under the
        lock); False when it is of no use now (it is then the caller's to delete)."""
        usable = (
            segment.view is not None
            and self.spare is None
            and not self.closed
            and pid == os.getpid()
            and self.kept_bytes + segment.allocated <= self.max_bytes
        )
        if usable:
            self.hold(segment)
            self.spare = segment
        return usable


def _note_acks(segment: Segment, offsets: List[int]) -> None:
    """Append ``offsets`` to the segment's ack file (opened on first use, never through a link)."""
    try:
        if segment.ack_fd < 0:
            segment.ack_fd = files.open_file(segment.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(segment.ack_fd, ack_bytes(offsets))
    except files.NotAFileError as error:  # planted: never written through; its records may go twice
        segment.ack_fd = _NO_ACK_FILE
        logger.warning("seven_segments: spool file %s is %s", segment.ack_path, error.strerror)
    except OSError as error:
        logger.debug("seven_segments: cannot note confirmations in %s: %s", segment.ack_path, error)

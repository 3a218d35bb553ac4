"""``Spool``: segment files in one folder, written before ``track()`` returns, replayed after a crash.

What it is made of: ``format`` (the bytes), ``files`` (opening them safely, the private folder),
``segments`` (the files this process holds and makes, and the fork registry), ``holdings`` (what one
spool holds, under its lock), ``recovery`` (reading back), ``processes`` (forks, signals, threads).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import files
from .format import (
    DEFAULT_MAX_BYTES,
    HEADER_BYTES,
    RECORD_HEADER,
    RECORD_MAGIC,
    RECOVER_CHUNK,
    SEGMENT_BYTES,
    SEGMENT_SUFFIX,
    Record,
    SpoolError,
    is_newer,
    newer,
    target_block,
)
from .holdings import Holdings, Tally
from .processes import acquire_without_convoy, ignore_sigxfsz, register
from .recovery import Chunk, Recovery
from .segments import Segment, SegmentMaker, _forget_the_parents, _no_longer_in_hand, deleted, release, unlink_quietly

__all__ = ["Spool"]

logger = logging.getLogger(__name__)


def _checked(folder: object, max_bytes: object, segment_bytes: object, target: object) -> int:
    """Refuse bad settings (``TypeError``, ``ValueError``); the segment size to use."""
    if not isinstance(target, str):
        raise TypeError(f"a spool's target must be a string, not {type(target).__name__} {target!r}")
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"spool must be a folder path, not {type(folder).__name__} {folder!r}")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"spool_max_bytes must be a positive integer, not {max_bytes!r}")
    if segment_bytes is None:
        segment_bytes = SEGMENT_BYTES
    if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or segment_bytes <= HEADER_BYTES:
        raise ValueError(f"segment_bytes must be an integer > {HEADER_BYTES}, not {segment_bytes!r}")
    return segment_bytes


def _refuse_newer_files(folder: str) -> None:
    """``SpoolError`` when a file in ``folder`` was written by a newer seven_segments."""
    for name in files.segment_names(folder):
        path = os.path.join(folder, name + SEGMENT_SUFFIX)
        try:
            head = files.read_file(path, HEADER_BYTES)
        except OSError:
            continue  # deleted meanwhile, not a file, or not ours to read: recover() says so
        if is_newer(head):
            raise newer(path, head[7])


class Spool:
    """Segment files in one folder, private to the user (0o700), shared by many processes.

    ``append`` is safe from many threads at once; ``confirm`` and ``recover`` are meant for one
    thread (the engine's pump), and may run while others append. Each process writes its own files
    and takes over those of dead processes only (see the package's docstring).

    ``target`` (the API's base URL) is written in each segment's header; ``recover`` takes only the
    files of that target (or that name none). ``accepts``, if given, is asked about each recovered
    record before it is yielded: one it refuses is skipped and counted as damaged.
    """

    def __init__(
        self,
        folder: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        fsync: bool = False,
        segment_bytes: Optional[int] = None,
        target: str = "",
        accepts: Optional[Callable[[bytes], bool]] = None,
    ) -> None:
        segment_bytes = _checked(folder, max_bytes, segment_bytes, target)
        self._folder = os.path.abspath(os.fspath(folder))
        self._target = target
        block = target_block(target)
        start = HEADER_BYTES + len(block)
        # A fully confirmed segment still takes its room until it is sealed: keep it a small part of the bound.
        size = max(start + 1, min(segment_bytes, max_bytes // 4))
        self._maker = SegmentMaker(self._folder, block, size, bool(fsync))
        files.prepare_folder(self._folder)
        _refuse_newer_files(self._folder)
        ignore_sigxfsz()
        self._tally = Tally()
        self._held = Holdings(self._maker, self._tally, max_bytes)
        self._recovery = Recovery(self._held, target, accepts)
        self._pid = os.getpid()
        try:  # a first segment now proves the folder can be written, with a clear error if not
            first = self._held.new_segment(reserve=False)
        except OSError as error:
            raise SpoolError(f"spool folder {self._folder} cannot be written: {error.strerror or error}") from None
        with self._held.lock:
            if self._maker.mapped:  # the first append makes a reserved one: a nearly full disk does not stop the start
                self._held.delete(first)
            else:
                self._held.current = first
        register(self)

    @property
    def folder(self) -> str:
        """The spool's folder (absolute)."""
        return self._folder

    @property
    def last_failure(self) -> str:
        """Why the last record that could not be written was not ("" when none failed)."""
        return self._tally.last_failure

    @property
    def target(self) -> str:
        """The target written in this spool's segments ("" when made without one)."""
        return self._target

    @property
    def bytes_held(self) -> int:
        """The size of the files this spool holds now (read without its lock: for metrics)."""
        return self._held.kept_bytes

    @property
    def _lock(self) -> "threading.RLock":
        """The lock that guards what this spool holds (replaced in a forked child)."""
        return self._held.lock

    def held_here(self) -> bool:
        """Whether this thread holds the spool's lock (see ``lock_held_here``)."""
        return self._held.lock_and_owner[1]()

    def target_of(self, name: str) -> str:
        """The target a segment of this spool (by the name in its records) was written for: this
        spool's own, or the one a dead writer's file says ("" when it says none)."""
        return self._held.targets.get(name, self._target)

    def __repr__(self) -> str:
        return f"Spool({self._folder!r})"

    # -- writing ---------------------------------------------------------------------------------

    def append(self, payload: bytes, pid: int = 0) -> Optional[Record]:
        """Write one record; returns it, or None (never raises) when the spool is full, closed, or the
        write failed (a full disk, ``RLIMIT_FSIZE``): such a record is counted as dropped. ``pid`` is
        the current process id when the caller knows it (0: read it here).

        In a mapped segment the record is copied into the map under the lock: no system call, so the
        calling thread keeps the GIL. A ``pwrite`` segment's record is written outside the lock, at
        the place reserved for it (see ``Holdings.pwrite``). A call made while this thread is inside
        ``append`` already (a signal or logging handler) is dropped and counted: it cannot wait for itself."""
        if self._pid != (pid or os.getpid()):
            self.after_fork()
        data = RECORD_HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        size = len(data)
        held, tally = self._held, self._tally
        lock, held_here = held.lock_and_owner
        if held_here():  # append called from within append (a signal handler, a logging handler)
            tally.drop("a write from within a write (a signal or logging handler)")
            return None
        try:
            if not lock.acquire(False):
                acquire_without_convoy(lock)
            segment = held.current
            if held.closed:
                tally.drop("the spool is closed")
                return None
            if segment is None or segment.size + size > segment.capacity and (segment.records or segment.view is not None):
                segment = self._next_segment(segment, size)
                if segment is None:
                    return None
            offset = segment.size
            view = segment.view
            if view is not None:
                # Only operators here, no call: CPython hands the GIL to another thread at a call or a
                # loop, and a thread that lost the GIL while holding this lock would keep every other
                # appender spinning (see acquire_without_convoy) until it got the GIL back.
                view[offset : offset + size] = data
                segment.size = offset + size
                segment.records += 1
                segment.unconfirmed[offset] = None
                tally.appended += 1
            elif not held.reserve(segment, offset, size):  # a pwrite segment: written outside the lock
                return None
        finally:
            # Whether this thread holds it (an exception from a signal handler may come between
            # acquire() and the next line): the lock is an RLock for that question.
            if held_here():
                lock.release()
        if view is not None or held.pwrite(segment, data, offset):
            return segment.name, offset
        return None

    def _next_segment(self, full: Optional[Segment], size: int) -> Optional[Segment]:
        """Seal the full current segment and start the next (under the lock; see ``Holdings.next_segment``)."""
        return self._held.next_segment(full, size)

    def prepare_next(self) -> None:
        """Make the segment that follows the current one before it is needed: from the engine's pump
        thread, never from a caller of ``append``. Making a reserved, mapped 4 MiB file takes a
        millisecond or two (most of it with the GIL released); done here, the append that fills the
        current segment only switches to the spare. Does nothing until the current mapped segment is
        half full, when a spare exists already, or when the spool's bound leaves no room for a whole
        one. Never raises: a file that cannot be made now is tried again by the append that needs it.

        A current segment whose file was deleted (with the folder, say) is sealed here, so that the
        records after it go to a new file (in the folder made again), not to one that is gone."""
        held, maker = self._held, self._maker
        current = held.current
        if current is not None and self._deleted(current):
            current = self._let_go_of_deleted(current)
            if current is None and not maker.mapped:
                return  # the next append makes the next file
        elif current is None or current.view is None or current.size * 2 < current.capacity:
            return
        if (
            held.spare is not None
            or held.closed
            or self._pid != os.getpid()
            or held.max_bytes - held.kept_bytes < 2 * maker.segment_bytes  # room for it and a smaller last one
            or time.monotonic() < maker.no_segment_until
        ):
            return
        with held.lock:
            maker.serial += 1
            serial = maker.serial
        try:
            segment = maker.make(serial, maker.segment_bytes)
        except OSError as error:
            logger.debug("seven_segments: cannot make the next spool segment ahead (%s)", error)
            return
        with held.lock:
            usable = held.take_spare(segment, self._pid)
        if not usable:
            unlink_quietly(segment.path, segment.ack_path)
            release(segment)  # first: a fork in between must find it in hand or closed
        _no_longer_in_hand(segment)

    def _deleted(self, segment: Segment) -> bool:
        """Whether the file of a segment this process writes was deleted (no name left in any folder)."""
        return not self._held.closed and self._pid == os.getpid() and deleted(segment)

    def _let_go_of_deleted(self, current: Segment) -> Optional[Segment]:
        """Seal the current segment, whose file was deleted, and delete a spare made in the same
        folder; returns the current segment after (None when it was sealed)."""
        held = self._held
        with held.lock:
            if held.current is current and not current.closed:
                held.seal(current)
            spare = held.spare
            if spare is not None and self._deleted(spare):
                held.spare = None
                held.delete(spare)
            return held.current

    # -- confirming and reading back -------------------------------------------------------------

    def confirm(self, records: Sequence[Record]) -> None:
        """Note that ``records`` (in any order) were settled: delivered, or refused for good.

        One write to each touched segment's ack file; a sealed segment whose records are all
        confirmed is deleted with its ack file. Records of another process (a parent's, after a
        fork) or of a closed spool are ignored. Never raises for a disk error (the records would be
        replayed, which the server's ``command_id`` makes harmless)."""
        if not records:
            return
        touched = {name for name, _ in records}
        by_segment: Dict[str, List[int]]
        if len(touched) == 1:  # the usual case: one request's commands, from one file
            by_segment = {touched.pop(): [offset for _, offset in records]}
        else:
            by_segment = {}
            for name, offset in records:
                by_segment.setdefault(name, []).append(offset)
        with self._held.lock:
            self._held.confirm(by_segment)

    def recover(
        self, every_target: bool = False, chunk_size: int = RECOVER_CHUNK
    ) -> Iterator[List[Tuple[Record, bytes]]]:
        """The records never confirmed of the segments whose writer is dead, in chunks of at most
        ``chunk_size`` (``RECOVER_CHUNK``), oldest first: of the files written for this spool's target or naming
        none (version 1, or a spool made without one); with ``every_target``, of all (``target_of``
        says whose each is).

        Each such segment is taken over (its lock) as the iteration reaches it, and belongs to this
        process from then on: confirm its records like any others; once all are, it is deleted.
        Damaged or cut records, and those ``accepts`` refuses, are skipped with one warning per
        file. Call it again later to take over files of writers that died since; files already taken
        are not yielded again. The files of other targets are left as they are, untouched.
        """
        if self._pid != os.getpid():
            self.after_fork()
        yield from self._recovery.recover(every_target, max(1, chunk_size))

    def reread(
        self,
        by_name: "Mapping[str, Sequence[int]]",
        chunk_size: int = RECOVER_CHUNK,
        lost: Optional[Callable[[int, str], None]] = None,
    ) -> Iterator[Chunk]:
        """The payloads of records of this process (``{segment name: offsets}``, from ``append``,
        ``recover`` or an earlier ``reread``) that are still unconfirmed, read back from their files,
        in chunks of at most ``chunk_size``, in the order given. For commands the engine let go of
        after trying for ``retry_deadline`` (an outage): they stayed on disk, and go again when the
        API answers. A record that is gone (confirmed, its file deleted, the spool closed) is
        skipped; one that is damaged, or in a file that cannot be read, is skipped and counted to
        ``lost(count, path)``."""
        return self._recovery.reread(by_name, chunk_size, lost)

    # -- processes and the end -------------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's files (closing the inherited descriptors, which
        leaves the parent's locks to the parent) and start the child's own segment on its next append.
        Does nothing in the process that made the spool (or that already ran it)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        _forget_the_parents()  # also when the fork skipped the hooks (uwsgi)
        self._held.forget_after_fork()
        self._maker.after_fork()
        self._tally.reset()  # counters of this process: the child's start at 0

    def close(self) -> int:
        """Stop writing and let go of every file (their locks); returns how many records remain
        unconfirmed, kept on disk for the next start. Idempotent."""
        if self._pid != os.getpid():
            self.after_fork()
        with self._held.lock:
            if self._held.closed:
                return self._held.kept_at_close
            return self._held.close()

    def stats(self) -> Dict[str, int]:
        """Counters of this process: appended, confirmed, replayed (yielded by ``recover``), dropped
        (full, closed, or failed writes), damaged (records lost to damage in files taken over),
        kept (records unconfirmed now), kept_bytes (size of the files held) and files (held)."""
        held, tally = self._held, self._tally
        with held.lock:
            return {
                "appended": tally.appended,
                "confirmed": tally.confirmed,
                "replayed": tally.replayed,
                "dropped": tally.dropped,
                "damaged": tally.damaged,
                "kept": held.kept(),
                "kept_bytes": held.kept_bytes,
                "files": len(held.segments),
            }

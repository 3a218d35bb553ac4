"""The segment files this process holds, and how they are made and let go of.

Each process writes its own segments, ``<host>-<pid>-<random>-<n>.seg``, and holds an OS lock
(``flock``) on each for as long as it lives: the lock ends with the process however it ends, so a
file whose lock can be taken belongs to nobody.

Forks: a segment's descriptors are made under a per-process lock (``making()``) that ``fork()``
waits for, and stay "in hand" (``in_hand``) until their spool holds them; a forked child closes
the descriptors of its parent's segments in hand (``forget_the_parents``), so that no descriptor
(and no ``flock``) of the parent outlives the parent in a child that knew nothing of it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import socket
import threading
import time
from typing import Dict, Optional, Tuple

from . import files
from .format import ACK_SUFFIX, SEGMENT_SUFFIX, TEMP_SUFFIX, SpoolError, header_bytes

logger = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")[:64] or "host"


class Segment:
    """One segment file this process holds (its lock is on ``fd``).

    A segment being written is either *mapped* (``view``: its whole preallocated file, mapped
    shared; records are copied into it) or written with ``pwrite`` (``view`` is None: with
    ``fsync=True``, or where the file cannot be mapped). ``size`` is where the next record goes;
    ``allocated`` is what the file takes on disk (the preallocated length while mapped); ``capacity``
    the size past which no record goes to it (but the first, in a ``pwrite`` segment).
    """

    __slots__ = (
        "name", "path", "ack_path", "fd", "ack_fd", "size", "allocated", "capacity", "view", "unconfirmed", "sealed",
        "closed", "records", "writers",
    )

    def __init__(
        self, folder: str, name: str, fd: int, size: int, view: "Optional[mmap.mmap]" = None, capacity: int = 0
    ) -> None:
        self.name = name
        self.path = os.path.join(folder, name + SEGMENT_SUFFIX)
        self.ack_path = os.path.join(folder, name + ACK_SUFFIX)
        self.fd = fd
        self.ack_fd = -1
        self.size = size
        self.allocated = len(view) if view is not None else size
        self.capacity = self.allocated if view is not None else capacity
        self.view = view
        #: Offsets of the records not confirmed yet (a dict used as a set: ``unconfirmed[offset] = None``
        #: is no call, see ``Spool.append``).
        self.unconfirmed: Dict[int, None] = {}
        self.sealed = False
        self.closed = False
        #: Records ever held (appended, or found unconfirmed when taken over).
        self.records = 0
        #: Appenders writing to ``fd`` outside the lock (``pwrite``): the last one closes the
        #: descriptors of a segment released meanwhile, so that no write lands in a file that reused
        #: the number.
        self.writers = 0


def release(segment: Segment, forked: bool = False) -> None:
    """Close the segment's map and descriptors (letting its lock go); while an appender still
    writes to it (``writers``), that appender closes them when done. ``forked``: in a child,
    where the parent's writers do not run."""
    segment.closed = True
    if segment.view is not None:
        segment.view.close()  # its own duplicate of the descriptor too, which holds the lock
        segment.view = None
    if segment.writers and not forked:
        return
    fds = (segment.ack_fd, segment.fd)
    segment.fd = segment.ack_fd = -1  # first: no one reads a number about to be closed
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def unlink_quietly(*paths: str) -> None:
    """Remove ``paths``, ignoring those that are gone or cannot be removed."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


# -- the fork registry ----------------------------------------------------------------------------

#: Per process: held while a segment's descriptors are made (opened, locked, mapped) or a dead
#: writer's file is opened and locked, until the segment is in hand (``_IN_HAND``); ``fork()`` waits
#: for it (``os.register_at_fork``). Without it, a fork in the middle left the child a descriptor
#: (and its ``flock``) that no spool of the child knew of: the parent's file looked alive, and was
#: not replayed, for as long as the child lived. Nothing is logged and no lock is taken while it is
#: held (a logging handler may call ``track``); it is taken after a spool's own lock, never before.
#: Per process id, so that a fork that skips the hooks (uwsgi) leaves the child a lock of its own.
_MAKING_BY_PID: "Dict[int, threading.Lock]" = {}
#: Segments whose descriptors exist but that their spool does not hold yet, by process id and
#: ``id(segment)``: a forked child lets go of its parent's.
_IN_HAND: "Dict[int, Dict[int, Segment]]" = {}


def _making() -> "threading.Lock":
    """This process's lock for making a segment's descriptors (see ``_MAKING_BY_PID``)."""
    pid = os.getpid()
    lock = _MAKING_BY_PID.get(pid)
    if lock is None:
        lock = _MAKING_BY_PID.setdefault(pid, threading.Lock())
    return lock


def _in_hand(segment: Segment) -> None:
    """Note ``segment`` as in hand (``_making()`` is held)."""
    _IN_HAND.setdefault(os.getpid(), {})[id(segment)] = segment


def _no_longer_in_hand(segment: Segment) -> None:
    """``segment`` is held by its spool now, or closed."""
    with _making():
        _IN_HAND.get(os.getpid(), {}).pop(id(segment), None)


def _forget_the_parents() -> None:
    """In a forked child: close the descriptors of segments a thread of the parent was making, and
    forget the parent's locks (one may be held, and a later process may get the parent's id)."""
    pid = os.getpid()
    for other in [other for other in _IN_HAND if other != pid]:
        for segment in _IN_HAND.pop(other).values():
            release(segment, forked=True)
    for other in [other for other in _MAKING_BY_PID if other != pid]:
        _MAKING_BY_PID.pop(other, None)


def lock_dead_writers(folder: str, name: str) -> "Tuple[Optional[Segment], Optional[OSError]]":
    """Open and lock a segment file whose writer may be dead: the segment (in hand), or None when it
    is gone or alive; and the error that kept it from being opened, if any (logged by the caller:
    nothing is logged under ``_making()``)."""
    path = os.path.join(folder, name + SEGMENT_SUFFIX)
    with _making():  # only the descriptor and its lock: nothing is read or logged under it
        try:
            fd = files.open_file(path)
        except FileNotFoundError:
            return None, None
        except OSError as error:  # NotAFileError too: a link to /dev/zero would be read for ever
            return None, error
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live process holds it
            os.close(fd)
            return None, None
        segment = Segment(folder, name, fd, 0)
        _in_hand(segment)
        return segment, None


# -- making segments ------------------------------------------------------------------------------


class SegmentMaker:
    """Makes this process's segment files in one folder: names, headers, reserved and mapped space.

    ``mapped``: segments are preallocated and mapped, unless each record must be fsynced (then
    written with pwrite), the system cannot reserve a file's space (no ``posix_fallocate``: macOS),
    or mapping failed once (a file system that cannot map files).
    """

    def __init__(self, folder: str, target_block: bytes, segment_bytes: int, fsync: bool) -> None:
        self.folder = folder
        self.target_block = target_block
        #: Where the first record of a segment goes (after its header).
        self.start = len(header_bytes(0, target_block))
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.mapped = not fsync and hasattr(os, "posix_fallocate")
        self.serial = 0
        self.random = os.urandom(4).hex()
        #: After a failure to make a segment, none is tried until then (``time.monotonic``).
        self.no_segment_until = 0.0

    def after_fork(self) -> None:
        """A forked child names its files anew."""
        self.random = os.urandom(4).hex()
        self.serial = 0
        self.no_segment_until = 0.0

    def make(self, serial: int, capacity: int = 0, reserve: bool = True) -> Segment:
        """Make, lock and name a new segment file (under a temporary name until locked, so that no
        other process can take it for a dead writer's); changes nothing a spool holds, so that it
        can run outside the spool's lock. A mapped one (``reserve``, in a mapping spool) is
        preallocated to ``capacity`` bytes (``posix_fallocate``: a full disk or ``RLIMIT_FSIZE``
        shows here, as an ``OSError``, not as a fault while writing into the map). The segment is in
        hand until its spool holds it (``_no_longer_in_hand``)."""
        try:
            with _making():
                segment = self._make_file(serial, capacity, reserve)
                _in_hand(segment)
        except FileNotFoundError:
            if not self._make_folder_again():
                raise
            with _making():
                segment = self._make_file(serial, capacity, reserve)
                _in_hand(segment)
        if segment.view is None and self.mapped and reserve:
            self.mapped = False
            logger.info("seven_segments: the spool %s cannot be mapped; records are written one by one", self.folder)
        if self.fsync:
            os.fsync(segment.fd)
            files.fsync_folder(self.folder)
        return segment

    def _make_file(self, serial: int, capacity: int, reserve: bool) -> Segment:
        name = f"{_HOST}-{os.getpid()}-{self.random}-{serial}"
        temp = "." + name + TEMP_SUFFIX
        # Made in the folder as checked now, not as it was at the start: it may have been deleted and
        # replaced since (by a link, or by a folder others can write to) and would get the token.
        folder = files.open_checked_folder(self.folder)
        try:
            return self._make_file_in(folder, name, temp, capacity, reserve)
        finally:
            os.close(folder)

    def _make_file_in(self, folder: int, name: str, temp: str, capacity: int, reserve: bool) -> Segment:
        # No O_APPEND: records are written at the place reserved for them (on Linux, pwrite on an
        # O_APPEND file ignores the place and appends).
        fd = files.open_file(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, dir_fd=folder)
        view = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = header_bytes(time.time_ns(), self.target_block)
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "no room for a segment header")
            if self.mapped and reserve:
                view = files.map_preallocated(fd, max(capacity or self.segment_bytes, self.start + 1), self.start)
            segment = Segment(self.folder, name, fd, self.start, view, self.segment_bytes)
            os.rename(temp, name + SEGMENT_SUFFIX, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            if view is not None:
                view.close()
            os.close(fd)
            try:
                os.unlink(temp, dir_fd=folder)
            except OSError:
                pass
            raise
        return segment

    def _make_folder_again(self) -> bool:
        """When the folder was deleted: make it again, checked as a new spool's is (one warning
        each time); True when it was. Raises ``OSError`` when it cannot be made."""
        if os.path.lexists(self.folder):
            return False
        try:
            files.prepare_folder(self.folder)
        except SpoolError as error:
            raise OSError(errno.ENOENT, str(error)) from None
        logger.warning(
            "seven_segments: the spool folder %s was deleted (with the commands in it): made again", self.folder
        )
        return True


def deleted(segment: Segment) -> bool:
    """Whether the file of a segment this process writes was deleted (no name left in any folder)."""
    try:
        return os.fstat(segment.fd).st_nlink == 0
    except OSError:  # closed meanwhile: replaced by an appender
        return False

"""A durable spool: commands written to disk before ``track()`` returns, replayed after a crash.

Layout: one folder, private to the user (mode 0o700, files 0o600), shared by many processes. Each
process writes its own *segment* files, ``<host>-<pid>-<random>-<n>.seg``, and holds an OS lock
(``flock``) on each of them for as long as it lives: the lock ends with the process however it ends
(SIGKILL, the OOM killer, ``os._exit``), so a file whose lock can be taken belongs to nobody. No pid
files.

A segment starts with a header (``7SSPOOL`` magic, a format version byte, the moment it was made;
since version 2, the target the spool was made for: a 2-byte length and that many bytes of UTF-8)
followed by records::

    magic (2 bytes) | payload length (uint32 LE) | crc32 of the payload (uint32 LE) | payload

A new segment is preallocated (``posix_fallocate``, so a full disk shows when a segment is made)
and mapped shared into memory; a record is copied into the map, which is the kernel's page cache
of the file: no system call per record, and once copied it is the operating system's, so a process
killed at any moment after ``append`` returned loses nothing. Zeros after the last record are the
unwritten rest; readers stop there (a reader older than mapped segments counts them as one record
cut short, and loses nothing). With ``fsync=True`` (each record then followed by ``fsync``), where
the system cannot reserve a file's space (no ``posix_fallocate``: macOS) or where a file cannot be
mapped, each record is written with one ``pwrite`` instead. Power loss or a kernel crash may lose
what the kernel had not yet written to the disk, unless the spool was made with ``fsync=True``.

A copy into the map can wait, holding the GIL, where ``pwrite`` would wait without it: on the first
write to each page (a page fault, about a microsecond here) and, when the kernel throttles writers
because the disk cannot keep up with the machine's dirty pages, for as long as it throttles.

A segment is sealed when it reaches ``segment_bytes`` (its map closed, the unwritten rest of the
file given back) and the next one is started: usually one ``prepare_next`` made ahead, on the
engine's pump thread, once the current one was half full. Confirmed records
(delivered, or refused for good) are noted in an *ack file* next to their segment
(``<name>.ack``, the offsets of the confirmed records, 8 bytes each, one ``os.write`` per
``confirm`` call); a sealed segment whose records are all confirmed is deleted with its ack file,
so the spool does not grow while the API is up.

``recover()`` takes over the segments of dead writers (``flock(LOCK_EX | LOCK_NB)``; checked to be
still the file of that name, so two processes never replay the same file), and yields the records
that were never confirmed, oldest first. A record cut short by a kill, or damaged on disk (bad
magic, length or checksum), is skipped with one warning per file saying how many were lost.

Payloads are opaque bytes here. In the client they are bulk commands, which hold the company token:
that is why the folder is private to the user. A spool given ``accepts`` (the client's: ``is_command``)
skips a recovered record it refuses, like a damaged one: a record whose checksum holds but whose bytes
are no command (a torn header makes one: an empty payload's CRC-32 is 0) is never replayed, and its
place is settled.

A folder another user owns, that its group or others can write to, or that is a symbolic link, is
refused (``SpoolError``); every file in it is opened without following a link, and one that is not a
regular file is skipped with a warning. A folder deleted while in use is made again (with the same
checks) when the next segment is made; the pump's ``prepare_next`` seals a current segment whose
file was deleted at once.

Each file is replayed only for its own target: ``recover`` takes the files written for the spool's
``target``, and those of version 1 (which do not say theirs) or of a spool made without one; it
leaves the files of other targets to a client made for theirs (or to ``deliver``).
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import logging
import mmap
import os
import re
import signal
import socket
import stat
import struct
import sys
import threading
import time
import weakref
import zlib
from typing import Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

from .protocol import DEFAULT_TARGET, PATH_CUSTOMERS, PATH_EVENTS
from .serialization import escapes_lone_surrogate

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Delivery",
    "FORMAT_VERSION",
    "RECOVER_CHUNK",
    "SEGMENT_BYTES",
    "Record",
    "Spool",
    "SpoolError",
    "SpoolFile",
    "SpoolReport",
    "deliver",
    "inspect",
    "is_command",
    "lock_held_here",
]

logger = logging.getLogger(__name__)

#: The disk a spool may use, per process (its own segments and those it took over).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: A segment is sealed, and a new one started, when the next record would take it past this size.
SEGMENT_BYTES = 4 * 1024 * 1024
#: ``recover`` yields at most this many records at a time (one bulk request).
RECOVER_CHUNK = 1000
#: The format written; files of a higher version are refused. Version 2 added the target to the header.
FORMAT_VERSION = 2
#: A record longer than this is taken for damage (a command is at most 100 KiB).
MAX_RECORD_BYTES = 16 * 1024 * 1024

SEGMENT_SUFFIX = ".seg"
ACK_SUFFIX = ".ack"
TEMP_SUFFIX = ".tmp"
#: A temporary segment file is left alone for this long (its maker locks it right after making it).
TEMP_GRACE_SECONDS = 60.0

_FILE_MAGIC = b"7SSPOOL"
#: magic (7 bytes), version (1 byte), created (ns since the epoch, uint64 LE).
_FILE_HEADER = struct.Struct("<7sBQ")
HEADER_BYTES = _FILE_HEADER.size
#: Since version 2, the header goes on with the target: its length in bytes, then its UTF-8.
_TARGET_LENGTH = struct.Struct("<H")
#: Bytes 0xFF 0xA7 start every record (0xFF never occurs in UTF-8 text, so JSON payloads never
#: contain it: after damage, the next record is found by looking for it).
_RECORD_MAGIC = 0xA7FF
_RECORD_MAGIC_BYTES = struct.pack("<H", _RECORD_MAGIC)
_RECORD_HEADER = struct.Struct("<HII")
RECORD_HEADER_BYTES = _RECORD_HEADER.size
_ACK = struct.Struct("<Q")
#: Why a record was not written when the spool's bound was reached.
_FULL = "full: spool_max_bytes reached"
#: What ``dict.pop`` gives for an offset not (or no longer) unconfirmed.
_ABSENT = object()
#: A segment's ``ack_fd`` when its ack file is not a regular file: confirmations are not noted.
_NO_ACK_FILE = -2

_OPEN_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Every file in the folder is opened without following a link (one planted there could name any
#: file), and without waiting (a FIFO planted there would block the open for ever).
_OPEN_SAFE = _OPEN_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_OPEN_FOLDER = os.O_RDONLY | _OPEN_CLOEXEC | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname() or "host")[:64] or "host"

#: Every spool of this process, so that a forked child drops its parent's files even when nobody
#: calls ``after_fork``.
_SPOOLS: "weakref.WeakSet[Spool]" = weakref.WeakSet()

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
_IN_HAND: "Dict[int, Dict[int, _Segment]]" = {}


def _making() -> "threading.Lock":
    pid = os.getpid()
    lock = _MAKING_BY_PID.get(pid)
    if lock is None:
        lock = _MAKING_BY_PID.setdefault(pid, threading.Lock())
    return lock


def _in_hand(segment: "_Segment") -> None:
    """Note ``segment`` as in hand (``_making()`` is held)."""
    _IN_HAND.setdefault(os.getpid(), {})[id(segment)] = segment


def _no_longer_in_hand(segment: "_Segment") -> None:
    with _making():
        _IN_HAND.get(os.getpid(), {}).pop(id(segment), None)


def _forget_the_parents() -> None:
    """In a forked child: close the descriptors of segments a thread of the parent was making, and
    forget the parent's locks (one may be held, and a later process may get the parent's id)."""
    pid = os.getpid()
    for other in [other for other in _IN_HAND if other != pid]:
        for segment in _IN_HAND.pop(other).values():
            Spool._release(segment, forked=True)
    for other in [other for other in _MAKING_BY_PID if other != pid]:
        _MAKING_BY_PID.pop(other, None)


class SpoolError(ValueError):
    """The spool's folder cannot be used (a file, a link, another user's or open to others' writing,
    not writable, written by a newer version)."""


class NotAFileError(OSError):
    """A name in the spool folder that is not a regular file (a link, a device, a FIFO): never read
    nor written."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EINVAL, "not a regular file (a link, a device or a FIFO); skipped", path)


def _open_file(path: str, flags: int = os.O_RDONLY, mode: int = 0o600, dir_fd: Optional[int] = None) -> int:
    """``os.open`` of a regular file in the spool folder, never through a link (``O_NOFOLLOW``) and
    never waiting; raises ``NotAFileError`` for anything else there (a link, a device, a FIFO)."""
    try:
        fd = os.open(path, flags | _OPEN_SAFE, mode, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):  # a link (EMLINK: BSD); ENXIO: a FIFO
            raise NotAFileError(path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAFileError(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _truncate_same(path: str, fd: int, length: int) -> None:
    """Cut the file that ``fd`` (read-only) holds to ``length``, through ``path`` opened for writing
    without following a link, and only when ``path`` still names that file (``OSError`` if not)."""
    writable = _open_file(path, os.O_WRONLY)
    try:
        held, named = os.fstat(fd), os.fstat(writable)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise OSError(errno.ESTALE, "replaced meanwhile", path)
        os.ftruncate(writable, length)
    finally:
        os.close(writable)


def _read_file(path: str, limit: int = -1) -> bytes:
    """The bytes of a regular file in the spool folder (at most ``limit``), see ``_open_file``."""
    fd = _open_file(path)
    try:
        return os.pread(fd, limit, 0) if limit >= 0 else _read_all(fd)
    finally:
        os.close(fd)


class _Segment:
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


#: One appended (or recovered) record, ``(segment name, offset)``: what ``confirm`` is given back.
#: Opaque to callers. A plain tuple, which costs a fifth of an object with slots to make on every
#: ``track``; of a string and an int, so that the garbage collector stops tracking it (a queue of a
#: million records that pointed at their segment object made each full collection take 50+ ms, a
#: pause for whichever thread of the application triggered it).
Record = Tuple[str, int]


class SpoolFile(NamedTuple):
    """One segment file, as ``inspect`` sees it."""

    name: str
    #: Records not confirmed yet (commands still to deliver).
    commands: int
    bytes: int
    #: True when a live process holds the file's lock (its writer, or a process that took it over).
    alive: bool
    #: Records that are cut short or damaged (for a live writer, possibly one being written).
    damaged: int
    version: int
    #: The target its commands are for ("" when the file does not say: version 1).
    target: str = ""


class SpoolReport(NamedTuple):
    """What a spool folder holds."""

    folder: str
    files: List[SpoolFile]

    @property
    def commands(self) -> int:
        """Unconfirmed records in all files."""
        return sum(entry.commands for entry in self.files)

    @property
    def bytes(self) -> int:
        """Size of all segment files."""
        return sum(entry.bytes for entry in self.files)


def _valid_at(data: bytes, view: memoryview, position: int) -> int:
    """The end of the record at ``position`` when one is there whole and sound, else -1."""
    if len(data) - position < RECORD_HEADER_BYTES:
        return -1
    magic, length, crc = _RECORD_HEADER.unpack_from(data, position)
    length = int(length)
    start = position + RECORD_HEADER_BYTES
    end: int = start + length
    if magic != _RECORD_MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return -1
    if zlib.crc32(view[start:end]) != crc:
        return -1
    return end


def parse_records(data: bytes, start: int = HEADER_BYTES) -> Tuple[List[Tuple[int, int, int]], int]:
    """The sound records of a segment's bytes (``(offset, payload start, payload end)``), and how
    many were lost to damage or a cut (a count of record starts in each damaged stretch, at least 1).

    Zero bytes from some point to the end are the unwritten rest of a preallocated segment: they
    end the records and lose none."""
    view = memoryview(data)
    records: List[Tuple[int, int, int]] = []
    lost = 0
    position = start
    size = len(data)
    while position < size:
        end = _valid_at(data, view, position)
        if end >= 0:
            records.append((position, position + RECORD_HEADER_BYTES, end))
            position = end
            continue
        if data.count(0, position) == size - position:
            break  # the unwritten, preallocated rest
        following = data.find(_RECORD_MAGIC_BYTES, position + 1)
        while following != -1 and _valid_at(data, view, following) < 0:
            following = data.find(_RECORD_MAGIC_BYTES, following + 1)
        if following == -1:
            following = size
        lost += max(1, data.count(_RECORD_MAGIC_BYTES, position, following))
        position = following
    return records, lost


class _Header(NamedTuple):
    """What a segment's header says."""

    version: int
    created: int
    #: The target it was written for ("" when it does not say: version 1, or a spool made without one).
    target: str
    #: Where its first record starts.
    start: int


def _read_header(data: bytes, path: str) -> _Header:
    """The header of a segment's first bytes; raises ``SpoolError`` for a non-segment. A header of a
    newer version is read as far as its fixed part (``start`` 0)."""
    if len(data) < HEADER_BYTES:
        raise SpoolError(f"spool file {path} is shorter than a segment header ({len(data)} bytes)")
    magic, version, created = _FILE_HEADER.unpack_from(data, 0)
    if magic != _FILE_MAGIC:
        raise SpoolError(f"spool file {path} is not a seven_segments spool segment")
    if version < 2:
        return _Header(version, created, "", HEADER_BYTES)
    if version > FORMAT_VERSION:
        return _Header(version, created, "", 0)
    start = HEADER_BYTES + _TARGET_LENGTH.size
    end = start + (_TARGET_LENGTH.unpack_from(data, HEADER_BYTES)[0] if len(data) >= start else 0)
    if len(data) < end or len(data) < start:
        raise SpoolError(f"spool file {path} is shorter than its header ({len(data)} bytes)")
    try:
        target = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise SpoolError(f"spool file {path} has a damaged header (its target is not UTF-8)") from None
    return _Header(version, created, target, end)


def _target_block(target: str) -> bytes:
    """The end of a version 2 header: ``target``'s length and UTF-8 bytes."""
    encoded = target.encode("utf-8")
    if len(encoded) > 0xFFFF:
        raise ValueError(f"a spool's target must be at most 65535 bytes of UTF-8, not {len(encoded)}")
    return _TARGET_LENGTH.pack(len(encoded)) + encoded


def _refuse_constant(name: str) -> object:
    raise ValueError(name)


def is_command(payload: bytes) -> bool:
    """Whether ``payload`` is one ``bulk`` command: a JSON object ``{"name": "crm/events" or
    "crm/customers", "data": {...}}`` in UTF-8 (no NaN or Infinity, which JSON lacks, nor an escaped
    lone surrogate, which is no text). What ``track``
    spools always is; checked when a record is replayed, never when it is written. Decoding it is
    the cheapest check that is sound: a payload that passes cannot make the server refuse the
    ``bulk`` request that holds it as a whole (400), only, at worst, that command."""
    try:
        command = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return (
        type(command) is dict
        and command.get("name") in _COMMAND_NAMES
        and type(command.get("data")) is dict
        and not escapes_lone_surrogate(payload, command)  # a server could not read it
    )


_COMMAND_NAMES = frozenset({PATH_EVENTS, PATH_CUSTOMERS})


def _newer(path: str, version: int) -> SpoolError:
    return SpoolError(
        f"spool file {path} was written in format version {version}, newer than this seven_segments "
        f"understands ({FORMAT_VERSION}): upgrade seven_segments, or use another spool folder"
    )


def _read_acks(path: str) -> Set[int]:
    """The confirmed offsets in an ack file (a cut last entry is ignored); none when it is not a
    regular file (warned)."""
    try:
        data = _read_file(path)
    except FileNotFoundError:
        return set()
    except NotAFileError as error:
        logger.warning("seven_segments: spool file %s is %s", path, error.strerror)
        return set()
    whole = len(data) - len(data) % _ACK.size
    return {offset for (offset,) in _ACK.iter_unpack(data[:whole])}


def _ack_bytes(offsets: List[int]) -> bytes:
    """``offsets`` as ack entries (``_ACK``: uint64, little-endian), in one step."""
    entries = array.array("Q", offsets)
    if sys.byteorder == "big":
        entries.byteswap()
    return entries.tobytes()


def _read_all(fd: int, limit: Optional[int] = None) -> bytes:
    """The bytes of the file (at most ``limit`` and one more, when given)."""
    chunks: List[bytes] = []
    position = 0
    while limit is None or position <= limit:
        chunk = os.pread(fd, 1 << 20, position)
        if not chunk:
            break
        chunks.append(chunk)
        position += len(chunk)
    return b"".join(chunks)


#: No spool writes a larger segment file: a full one, or one made for a single record of the
#: largest size, with the longest header.
MAX_SEGMENT_FILE_BYTES = (
    SEGMENT_BYTES + HEADER_BYTES + _TARGET_LENGTH.size + 0xFFFF + RECORD_HEADER_BYTES + MAX_RECORD_BYTES
)


def _read_segment(fd: int, path: str, limit: int = MAX_SEGMENT_FILE_BYTES) -> Optional[bytes]:
    """The bytes of a segment file; None (warned) for one larger than ``limit``, which is no
    segment: a planted file of gigabytes, read, would take the memory (a ``MemoryError`` stopped
    the replay of every other file)."""
    size = os.fstat(fd).st_size
    if size <= limit:
        data = _read_all(fd, limit)  # at most one byte more, should it grow meanwhile
        if len(data) <= limit:
            return data
        size = len(data)
    logger.warning(
        "seven_segments: spool file %s is larger than any segment (%d bytes, at most %d): not read, left as it is",
        path, size, limit,
    )
    return None


def _segment_names(folder: str) -> List[str]:
    return sorted(entry[: -len(SEGMENT_SUFFIX)] for entry in os.listdir(folder) if entry.endswith(SEGMENT_SUFFIX))


#: Map a new segment's pages at once (Linux): cheaper first writes to each page (they still fault once).
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: ``posix_fallocate`` errors meaning "this file system cannot do that" (zeros are written instead).
_NO_FALLOCATE = frozenset(code for code in (getattr(errno, "EOPNOTSUPP", None), errno.EINVAL, getattr(errno, "ENOSYS", None)) if code)


def _reserve(fd: int, length: int, start: int) -> None:
    """Give the file ``length`` bytes of disk (zeros after its header, which ends at ``start``), or
    raise ``OSError`` (no room)."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, length)
            return
        except OSError as error:
            if error.errno not in _NO_FALLOCATE:
                raise
    position = start
    zeros = bytes(min(1 << 20, length))
    while position < length:
        position += os.pwrite(fd, zeros[: length - position], position)


def _map_preallocated(fd: int, length: int, start: int) -> "Optional[mmap.mmap]":
    """The segment file, preallocated to ``length`` bytes, mapped shared for writing; None (the file
    cut back to its header, which ends at ``start``) where the file system cannot map files. Raises
    ``OSError`` when the disk has no room for it."""
    _reserve(fd, length, start)
    try:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        os.ftruncate(fd, start)
        return None


#: Times an appender finding the lock taken lets the GIL go before it polls the lock.
_SPINS = 50
#: How often an appender polls a lock held for long.
_POLL_SECONDS = 0.0002


#: Gives the GIL up for a moment.
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def _acquire_without_convoy(lock: "threading.RLock") -> None:
    """Take ``lock``, held by another thread, without parking on it while it is busy.

    A thread parked in a blocking acquire stays there until it wins the lock, and while it is
    parked, every release of every other thread wakes it (a system call each): with 4 threads
    appending, a median of 5-7 µs and a p99 of 140+ µs per append (measured), against 1.5 and 6 when
    no thread parks (and a parked thread can lose the race to the lock again and again: calls of
    30-110 ms were seen). So: give up the GIL (``sched_yield``) and try again without blocking; a
    holder that takes long (making a new segment, a few milliseconds) is polled every
    ``_POLL_SECONDS``.
    """
    for _ in range(_SPINS):
        _yield()
        if lock.acquire(False):
            return
    while not lock.acquire(False):
        time.sleep(_POLL_SECONDS)


def _ignore_sigxfsz() -> None:
    """A write past ``RLIMIT_FSIZE`` raises SIGXFSZ, whose default kills the process: ignore it (so
    the write fails with EFBIG instead), unless someone set a handler or we are not on the main thread
    (where ``signal.signal`` cannot be called; then the application must ignore it itself)."""
    signum = getattr(signal, "SIGXFSZ", None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_IGN)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        pass


class Spool:
    """Segment files in one folder, private to the user (0o700), shared by many processes.

    ``append`` is safe from many threads at once; ``confirm`` and ``recover`` are meant for one
    thread (the engine's pump), and may run while others append. Each process writes its own files
    and takes over those of dead processes only (see the module's docstring).

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
        self._folder = os.path.abspath(os.fspath(folder))
        self._max_bytes = max_bytes
        self._target = target
        self._target_block = _target_block(target)
        #: Where the first record of a segment of this spool goes (after its header).
        self._start = HEADER_BYTES + len(self._target_block)
        self._accepts = accepts
        #: The target of each file taken over (a dead writer's), by segment name.
        self._targets: Dict[str, str] = {}
        # A fully confirmed segment still takes its room until it is sealed: keep it a small part of the bound.
        self._segment_bytes = max(self._start + 1, min(segment_bytes, max_bytes // 4))
        self._fsync = bool(fsync)
        #: Segments are preallocated and mapped, unless each record must be fsynced (then written with
        #: pwrite), the system cannot reserve a file's space (no ``posix_fallocate``: macOS), or mapping
        #: failed once (a file system that cannot map files).
        self._mapped = not self._fsync and hasattr(os, "posix_fallocate")
        _prepare_folder(self._folder)
        for name in _segment_names(self._folder):
            path = os.path.join(self._folder, name + SEGMENT_SUFFIX)
            try:
                head = _read_file(path, HEADER_BYTES)
            except OSError:
                continue  # deleted meanwhile, not a file, or not ours to read: recover() says so
            if len(head) == HEADER_BYTES and head[:7] == _FILE_MAGIC and head[7] > FORMAT_VERSION:
                raise _newer(path, head[7])
        _ignore_sigxfsz()
        self._set_lock()
        self._pid = os.getpid()
        self._segments: Dict[str, _Segment] = {}
        self._current: Optional[_Segment] = None
        #: The segment made ahead of need by ``prepare_next`` (held, empty), which the append that
        #: fills the current one takes over.
        self._spare: Optional[_Segment] = None
        self._serial = 0
        self._random = os.urandom(4).hex()
        self._closed = False
        self._kept_at_close = 0
        self._appended = self._confirmed = self._replayed = self._dropped = self._damaged = 0
        self._kept_bytes = 0
        self._failure_logged = False
        self._last_failure = ""
        self._no_segment_until = 0.0  # after a failure to make a segment, none is tried until then
        try:  # a first segment now proves the folder can be written, with a clear error if not
            first = self._new_segment(reserve=False)
        except OSError as error:
            raise SpoolError(f"spool folder {self._folder} cannot be written: {error.strerror or error}") from None
        if self._mapped:  # the first append makes a reserved one: a nearly full disk does not stop the start
            with self._lock:
                self._delete(first)
        else:
            self._current = first
        _SPOOLS.add(self)

    def _set_lock(self) -> None:
        #: Guards the segments and counters. An RLock only so that ``append`` can ask whether this
        #: thread holds it (``_is_owned``, the question ``threading.Condition`` asks too). The lock
        #: and its question are read together, from one tuple (``after_fork`` replaces both).
        lock = threading.RLock()
        self._lock_and_owner: "Tuple[threading.RLock, Callable[[], bool]]" = (lock, getattr(lock, "_is_owned"))
        self._lock = lock

    @property
    def folder(self) -> str:
        """The spool's folder (absolute)."""
        return self._folder

    @property
    def last_failure(self) -> str:
        """Why the last record that could not be written was not ("" when none failed)."""
        return self._last_failure

    @property
    def target(self) -> str:
        """The target written in this spool's segments ("" when made without one)."""
        return self._target

    @property
    def bytes_held(self) -> int:
        """The size of the files this spool holds now (read without its lock: for metrics)."""
        return self._kept_bytes

    def target_of(self, name: str) -> str:
        """The target a segment of this spool (by the name in its records) was written for: this
        spool's own, or the one a dead writer's file says ("" when it says none)."""
        return self._targets.get(name, self._target)

    def __repr__(self) -> str:
        return f"Spool({self._folder!r})"

    # -- writing ---------------------------------------------------------------------------------

    def _new_segment(self, capacity: int = 0, reserve: bool = True) -> _Segment:
        """Make a new segment and hold it (under the lock); see ``_make_segment``."""
        self._serial += 1
        segment = self._make_segment(self._serial, capacity, reserve)
        self._segments[segment.name] = segment
        self._kept_bytes += segment.allocated
        _no_longer_in_hand(segment)
        return segment

    def _make_segment(self, serial: int, capacity: int = 0, reserve: bool = True) -> _Segment:
        """Make, lock and name a new segment file (under a temporary name until locked, so that no
        other process can take it for a dead writer's); changes nothing this spool holds, so that it
        can run outside the lock. A mapped one (``reserve``, in a mapping spool) is preallocated to
        ``capacity`` bytes (``posix_fallocate``: a full disk or ``RLIMIT_FSIZE`` shows here, as an
        ``OSError``, not as a fault while writing into the map). The segment is in ``_IN_HAND`` until
        its spool holds it (``_no_longer_in_hand``)."""
        try:
            with _making():
                segment = self._make_segment_file(serial, capacity, reserve)
                _in_hand(segment)
        except FileNotFoundError:
            if not self._make_folder_again():
                raise
            with _making():
                segment = self._make_segment_file(serial, capacity, reserve)
                _in_hand(segment)
        if segment.view is None and self._mapped and reserve:
            self._mapped = False
            logger.info("seven_segments: the spool %s cannot be mapped; records are written one by one", self._folder)
        if self._fsync:
            os.fsync(segment.fd)
            self._fsync_folder()
        return segment

    def _make_segment_file(self, serial: int, capacity: int, reserve: bool) -> _Segment:
        name = f"{_HOST}-{os.getpid()}-{self._random}-{serial}"
        temp = "." + name + TEMP_SUFFIX
        # Made in the folder as checked now, not as it was at the start: it may have been deleted and
        # replaced since (by a link, or by a folder others can write to) and would get the token.
        folder = _open_checked_folder(self._folder)
        try:
            return self._make_segment_file_in(folder, name, temp, capacity, reserve)
        finally:
            os.close(folder)

    def _make_segment_file_in(self, folder: int, name: str, temp: str, capacity: int, reserve: bool) -> _Segment:
        # No O_APPEND: records are written at the place reserved for them (on Linux, pwrite on an
        # O_APPEND file ignores the place and appends).
        fd = _open_file(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, dir_fd=folder)
        view = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            header = _FILE_HEADER.pack(_FILE_MAGIC, FORMAT_VERSION, time.time_ns()) + self._target_block
            if os.write(fd, header) != len(header):
                raise OSError(errno.ENOSPC, "no room for a segment header")
            if self._mapped and reserve:
                view = _map_preallocated(fd, max(capacity or self._segment_bytes, self._start + 1), self._start)
            segment = _Segment(self._folder, name, fd, self._start, view, self._segment_bytes)
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
        if os.path.lexists(self._folder):
            return False
        try:
            _prepare_folder(self._folder)
        except SpoolError as error:
            raise OSError(errno.ENOENT, str(error)) from None
        logger.warning(
            "seven_segments: the spool folder %s was deleted (with the commands in it): made again", self._folder
        )
        return True

    def prepare_next(self) -> None:
        """Make the segment that follows the current one before it is needed: from the engine's pump
        thread, never from a caller of ``append``. Making a reserved, mapped 4 MiB file takes 1-2 ms
        (most of it with the GIL released); done here, the append that fills the current segment
        only switches to the spare. Does nothing until the current mapped segment is half full, when
        a spare exists already, or when the spool's bound leaves no room for a whole one. Never
        raises: a file that cannot be made now is tried again by the append that needs it.

        A current segment whose file was deleted (with the folder, say) is sealed here, so that the
        records after it go to a new file (in the folder made again), not to one that is gone."""
        current = self._current
        if current is not None and self._deleted(current):
            current = self._let_go_of_deleted(current)
            if current is None and not self._mapped:
                return  # the next append makes the next file
        elif current is None or current.view is None or current.size * 2 < current.capacity:
            return
        if (
            self._spare is not None
            or self._closed
            or self._pid != os.getpid()
            or self._max_bytes - self._kept_bytes < 2 * self._segment_bytes  # room for it and a smaller last one
            or time.monotonic() < self._no_segment_until
        ):
            return
        with self._lock:
            self._serial += 1
            serial = self._serial
        try:
            segment = self._make_segment(serial, self._segment_bytes)
        except OSError as error:
            logger.debug("seven_segments: cannot make the next spool segment ahead (%s)", error)
            return
        with self._lock:
            usable = (
                segment.view is not None
                and self._spare is None
                and not self._closed
                and self._pid == os.getpid()
                and self._kept_bytes + segment.allocated <= self._max_bytes
            )
            if usable:
                self._segments[segment.name] = segment
                self._kept_bytes += segment.allocated
                self._spare = segment
        if not usable:
            for path in (segment.path, segment.ack_path):
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self._release(segment)  # first: a fork in between must find it in hand or closed
        _no_longer_in_hand(segment)

    def _deleted(self, segment: _Segment) -> bool:
        """Whether the file of a segment this process writes was deleted (no name left in any folder)."""
        if self._closed or self._pid != os.getpid():
            return False
        try:
            return os.fstat(segment.fd).st_nlink == 0
        except OSError:  # closed meanwhile: replaced by an appender
            return False

    def _let_go_of_deleted(self, current: _Segment) -> Optional[_Segment]:
        """Seal the current segment, whose file was deleted, and delete a spare made in the same
        folder; returns the current segment after (None when it was sealed)."""
        with self._lock:
            if self._current is current and not current.closed:
                self._seal(current)
            spare = self._spare
            if spare is not None and self._deleted(spare):
                self._spare = None
                self._delete(spare)
            return self._current

    def _fsync_folder(self) -> None:
        try:
            folder_fd = os.open(self._folder, _OPEN_FOLDER)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        except OSError:
            pass

    def append(self, payload: bytes, pid: int = 0) -> Optional[Record]:
        """Write one record; returns it, or None (never raises) when the spool is full, closed, or the
        write failed (a full disk, ``RLIMIT_FSIZE``): such a record is counted as dropped. ``pid`` is
        the current process id when the caller knows it (0: read it here).

        In a mapped segment the record is copied into the map under the lock: no system call, so the
        calling thread keeps the GIL (a system call would hand it to another thread, and getting it
        back costs a switch interval under load). A ``pwrite`` segment's record is written outside
        the lock, at the place reserved for it; a write that fails leaves a gap that readers skip.
        A call made while this thread is inside ``append`` already (from a signal handler or a
        logging handler) is dropped and counted: it cannot wait for itself."""
        if self._pid != (pid or os.getpid()):
            self.after_fork()
        data = _RECORD_HEADER.pack(_RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload
        size = len(data)
        lock, held_here = self._lock_and_owner
        if held_here():  # append called from within append (a signal handler, a logging handler)
            self._dropped += 1
            self._last_failure = "a write from within a write (a signal or logging handler)"
            return None
        try:
            if not lock.acquire(False):
                _acquire_without_convoy(lock)
            segment = self._current
            if self._closed:
                self._dropped += 1
                self._last_failure = "the spool is closed"
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
                # appender spinning (see _acquire_without_convoy) until it got the GIL back.
                view[offset : offset + size] = data
                segment.size = offset + size
                segment.records += 1
                segment.unconfirmed[offset] = None
                self._appended += 1
            elif self._kept_bytes + size > self._max_bytes:
                self._dropped += 1
                self._last_failure = _FULL
                return None
            else:  # a pwrite segment: reserve the place, write outside the lock
                segment.size = segment.allocated = offset + size
                segment.records += 1
                segment.unconfirmed[offset] = None
                self._kept_bytes += size
                self._appended += 1
                segment.writers += 1
                fd = segment.fd
        finally:
            # Whether this thread holds it (an exception from a signal handler may come between
            # acquire() and the next line): the lock is an RLock for that question.
            if held_here():
                lock.release()
        if view is not None:
            return segment.name, offset
        failure: Optional[OSError] = None
        try:
            written = os.pwrite(fd, data, offset)
            if written != size:
                raise OSError(errno.ENOSPC, f"only {written} of {size} bytes written")
            if self._fsync:
                os.fsync(fd)
        except OSError as error:
            failure = error
        finally:  # also for KeyboardInterrupt in a slow fsync: the count of writers must come down
            with self._lock:
                segment.writers -= 1
                if failure is not None:
                    segment.unconfirmed.pop(offset, None)
                    segment.records -= 1
                    self._kept_bytes -= size
                    self._appended -= 1
                    if segment.size == offset + size and not segment.closed:  # the last place reserved: cut what got written
                        try:
                            os.ftruncate(fd, offset)
                            segment.size = segment.allocated = offset
                        except OSError:
                            pass
                    if not segment.closed:
                        self._write_failed(segment, failure)
                if segment.closed:  # released while this record was being written: the last writer closes
                    self._release(segment)
        return None if failure is not None else (segment.name, offset)

    def _next_segment(self, full: Optional[_Segment], size: int) -> Optional[_Segment]:
        """Seal ``full`` (the current segment, which has no room for ``size`` bytes) and start the next
        one, under the lock; None (the record counted as dropped) when the spool's bound leaves no room
        or the file cannot be made (then none is tried again for a second)."""
        if full is not None:
            self._seal(full)
        spare = self._spare
        if spare is not None and self._start + size <= spare.capacity:
            self._spare = None
            self._current = spare
            return spare
        room = self._max_bytes - self._kept_bytes
        capacity = min(max(self._segment_bytes, self._start + size), room)
        if self._mapped and capacity < self._start + size or not self._mapped and room < self._start + size:
            self._dropped += 1
            self._last_failure = _FULL
            return None
        now = time.monotonic()
        if now < self._no_segment_until:
            self._dropped += 1
            return None
        try:
            self._current = self._new_segment(capacity)
        except OSError as error:
            self._no_segment_until = now + 1.0
            self._write_failed(None, error)
            return None
        return self._current

    def _seal(self, segment: _Segment) -> None:
        """No more records go to ``segment`` (under the lock): its map is closed and the unwritten
        rest of its file given back; deleted at once when nothing in it waits."""
        segment.sealed = True
        if self._current is segment:
            self._current = None
        if segment.view is not None:
            segment.view.close()
            segment.view = None
            try:
                os.ftruncate(segment.fd, segment.size)
                self._kept_bytes -= segment.allocated - segment.size
                segment.allocated = segment.size
            except OSError:
                pass  # the rest stays allocated (zeros, which readers skip) until the file is deleted
        if not segment.unconfirmed:
            self._delete(segment)

    def _write_failed(self, segment: Optional[_Segment], error: OSError) -> None:
        """Count the drop (the lock is held) and seal the segment: what part of the record got written
        stays as a gap that readers skip (length and checksum), and the next record goes to a new file."""
        self._dropped += 1
        self._last_failure = error.strerror or str(error)
        if not self._failure_logged:
            self._failure_logged = True
            logger.warning(
                "seven_segments: cannot write to the spool %s (%s); records are not kept there until it can be",
                self._folder, error.strerror or error,
            )
        if segment is not None and segment is self._current:
            self._seal(segment)

    # -- confirming ------------------------------------------------------------------------------

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
        with self._lock:
            for name, offsets in by_segment.items():
                segment = self._segments.get(name)  # None: deleted, a parent's (after a fork), or closed
                if segment is None or segment.closed:
                    continue
                take = segment.unconfirmed.pop
                fresh = [offset for offset in offsets if take(offset, _ABSENT) is not _ABSENT]
                if not fresh:
                    continue
                self._confirmed += len(fresh)
                if segment.sealed and not segment.unconfirmed:
                    self._delete(segment)
                    continue
                if segment.ack_fd == _NO_ACK_FILE:
                    continue
                try:
                    if segment.ack_fd < 0:
                        segment.ack_fd = _open_file(segment.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                    os.write(segment.ack_fd, _ack_bytes(fresh))
                except NotAFileError as error:  # planted: never written through; its records may go twice
                    segment.ack_fd = _NO_ACK_FILE
                    logger.warning("seven_segments: spool file %s is %s", segment.ack_path, error.strerror)
                except OSError as error:
                    logger.debug("seven_segments: cannot note confirmations in %s: %s", segment.ack_path, error)

    def _delete(self, segment: _Segment) -> None:
        """Remove a segment (file first, then its ack file, then the lock), under ``_lock``."""
        for path in (segment.path, segment.ack_path):
            try:
                os.unlink(path)
            except OSError:
                pass
        self._release(segment)
        self._kept_bytes -= segment.allocated
        self._segments.pop(segment.name, None)
        self._targets.pop(segment.name, None)

    @staticmethod
    def _release(segment: _Segment, forked: bool = False) -> None:
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

    # -- recovering ------------------------------------------------------------------------------

    def recover(self, every_target: bool = False) -> Iterator[List[Tuple[Record, bytes]]]:
        """The records never confirmed of the segments whose writer is dead, in chunks of at most
        ``RECOVER_CHUNK``, oldest first: of the files written for this spool's target or naming
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
        candidates: List[Tuple[int, str]] = []
        try:
            entries = os.listdir(self._folder)
        except OSError as error:
            logger.warning("seven_segments: cannot list the spool %s: %s", self._folder, error.strerror or error)
            return
        names = set(entries)
        for entry in entries:
            if entry.endswith(SEGMENT_SUFFIX):
                name = entry[: -len(SEGMENT_SUFFIX)]
                if name in self._segments:
                    continue
                created, target = self._head(os.path.join(self._folder, entry))
                if every_target or target in ("", self._target):
                    candidates.append((created, name))
            elif entry.endswith(ACK_SUFFIX) and entry[: -len(ACK_SUFFIX)] + SEGMENT_SUFFIX not in names:
                self._remove_orphan(entry[: -len(ACK_SUFFIX)])
            elif entry.startswith(".") and entry.endswith(TEMP_SUFFIX):
                self._remove_dead_temp(os.path.join(self._folder, entry))
        candidates.sort()
        chunk: List[Tuple[Record, bytes]] = []
        for _, name in candidates:
            if self._closed:
                break
            taken = self._take(name, every_target)
            if taken is None:
                continue
            segment, payloads = taken
            for offset, payload in payloads:
                chunk.append(((segment.name, offset), payload))
                if len(chunk) >= RECOVER_CHUNK:
                    self._replayed += len(chunk)
                    yield chunk
                    chunk = []
        if chunk:
            self._replayed += len(chunk)
            yield chunk

    def reread(
        self,
        by_name: "Mapping[str, Sequence[int]]",
        chunk_size: int = RECOVER_CHUNK,
        lost: Optional[Callable[[int, str], None]] = None,
    ) -> Iterator[List[Tuple[Record, bytes]]]:
        """The payloads of records of this process (``{segment name: offsets}``, from ``append``,
        ``recover`` or an earlier ``reread``) that are still unconfirmed, read back from their files,
        in chunks of at most ``chunk_size``, in the order given. For commands the engine let go of
        after trying for ``retry_deadline`` (an outage): they stayed on disk, and go again when the
        API answers. A record that is gone (confirmed, its file deleted, the spool closed) is
        skipped; one that is damaged, or in a file that cannot be read, is skipped and counted to
        ``lost(count, path)``."""
        chunk: List[Tuple[Record, bytes]] = []
        for name, offsets in by_name.items():
            with self._lock:
                segment = self._segments.get(name)
                if segment is None or segment.closed or self._closed:
                    continue
                wanted = [offset for offset in offsets if offset in segment.unconfirmed]
                path = segment.path
            if not wanted:
                continue
            try:  # by its path, not its descriptor: a close meanwhile cannot hand us another file's
                data = _read_file(path)
            except OSError as error:
                logger.warning("seven_segments: cannot read back spool file %s: %s", path, error.strerror or error)
                if lost is not None:
                    lost(len(wanted), path)
                continue
            view = memoryview(data)
            damaged = 0
            for offset in wanted:
                end = _valid_at(data, view, offset)
                if end < 0:
                    damaged += 1
                    continue
                chunk.append(((name, offset), data[offset + RECORD_HEADER_BYTES : end]))
                if len(chunk) >= chunk_size:
                    yield chunk
                    chunk = []
            if damaged and lost is not None:
                lost(damaged, path)
        if chunk:
            yield chunk

    @staticmethod
    def _head(path: str) -> Tuple[int, str]:
        """When a segment was made, and the target it was written for ("" when its header says none
        or cannot be read: ``_take`` says why)."""
        try:
            head = _read_file(path, HEADER_BYTES + _TARGET_LENGTH.size + 0xFFFF)
            header = _read_header(head, path)
            return header.created, header.target
        except (OSError, SpoolError):
            return 0, ""

    def _remove_orphan(self, name: str) -> None:
        """An ack file whose segment is gone (its owner died between the two deletions)."""
        if os.path.exists(os.path.join(self._folder, name + SEGMENT_SUFFIX)):
            return
        try:
            os.unlink(os.path.join(self._folder, name + ACK_SUFFIX))
        except OSError:
            pass

    @staticmethod
    def _remove_dead_temp(path: str) -> None:
        """A segment its maker died before naming (it holds no record): removed when unlocked and
        older than a minute (a live maker may not have locked it yet)."""
        try:
            if time.time() - os.lstat(path).st_mtime < TEMP_GRACE_SECONDS:
                return
            fd = _open_file(path)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _take(self, name: str, every_target: bool = False) -> Optional[Tuple[_Segment, List[Tuple[int, bytes]]]]:
        """Lock a dead writer's segment, hold it, and read what it holds unconfirmed; None when it
        is alive, gone, unreadable (warned), or of another target (unless ``every_target``)."""
        path = os.path.join(self._folder, name + SEGMENT_SUFFIX)
        failure: Optional[OSError] = None
        segment: Optional[_Segment] = None
        with _making():  # only the descriptor and its lock: nothing is read or logged under it
            try:
                fd = _open_file(path)
            except FileNotFoundError:
                fd = -1
            except OSError as error:  # NotAFileError too: a link to /dev/zero would be read for ever
                fd, failure = -1, error
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a live process holds it
                    os.close(fd)
                else:
                    segment = _Segment(self._folder, name, fd, 0)
                    _in_hand(segment)
        if failure is not None:
            if isinstance(failure, NotAFileError):
                logger.warning("seven_segments: spool file %s is %s", path, failure.strerror)
            else:
                logger.warning("seven_segments: cannot open spool file %s: %s", path, failure.strerror or failure)
        if segment is None:
            return None
        try:
            payloads = self._read_taken(segment, every_target)
        except BaseException:  # MemoryError on a huge file, say: its descriptor and lock go too
            self._release(segment)
            _no_longer_in_hand(segment)
            raise
        if payloads is None:
            self._release(segment)  # first: a fork in between must find it in hand or closed
            _no_longer_in_hand(segment)
            return None
        with self._lock:
            self._segments[name] = segment
            self._kept_bytes += segment.allocated
            if not payloads:
                self._delete(segment)
        _no_longer_in_hand(segment)
        return segment, payloads

    def _read_taken(self, segment: _Segment, every_target: bool) -> Optional[List[Tuple[int, bytes]]]:
        """The unconfirmed records of a dead writer's segment just locked (``segment.fd``), noted in
        ``segment``; None when it was replaced or deleted meanwhile, cannot be read (warned), or is
        another target's (unless ``every_target``: its header could not be read before)."""
        path, name, fd = segment.path, segment.name, segment.fd
        try:
            try:
                if os.lstat(path).st_ino != os.fstat(fd).st_ino:
                    return None  # replaced meanwhile
            except FileNotFoundError:
                return None  # taken, replayed and deleted by another process meanwhile
            read = _read_segment(fd, path, max(self._segment_bytes, SEGMENT_BYTES) + MAX_SEGMENT_FILE_BYTES - SEGMENT_BYTES)
            if read is None:
                return None
            data = read
            try:
                header = _read_header(data, path)
            except SpoolError as error:
                logger.warning("seven_segments: %s; left as it is", error)
                return None
            if header.version > FORMAT_VERSION:
                logger.warning("seven_segments: %s; left as it is", _newer(path, header.version))
                return None
            if not every_target and header.target not in ("", self._target):
                return None  # another target's: left to a client for it
            records, lost = parse_records(data, header.start)
            acked = _read_acks(os.path.join(self._folder, name + ACK_SUFFIX))
            if lost:
                self._damaged += lost
                logger.warning(
                    "seven_segments: spool file %s: %d record%s cut short or damaged, skipped (lost)",
                    path, lost, "" if lost == 1 else "s",
                )
            size = len(data)
            end = records[-1][2] if records else header.start
            if size > end:  # zeros (the unwritten rest of a writer that died) or a cut record, lost anyway
                try:  # given back, and not counted
                    _truncate_same(path, fd, end)
                    size = end
                except OSError:
                    pass
            segment.size = segment.allocated = size
            segment.sealed = True
            payloads = [(offset, data[start:end]) for offset, start, end in records if offset not in acked]
            accepts = self._accepts
            if accepts is not None:
                commands = [item for item in payloads if accepts(item[1])]
                count = len(payloads) - len(commands)
                payloads = commands  # the others' places are settled: never unconfirmed
                if count:
                    self._damaged += count
                    logger.warning(
                        "seven_segments: spool file %s: %d record%s whole but not a command (damaged), skipped (lost)",
                        path, count, "" if count == 1 else "s",
                    )
            self._targets[name] = header.target
            segment.unconfirmed.update((offset, None) for offset, _ in payloads)
            segment.records = len(payloads)
            return payloads
        except OSError as error:
            logger.warning("seven_segments: cannot read spool file %s: %s", path, error.strerror or error)
            return None

    # -- processes -------------------------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: let go of the parent's files (closing the inherited descriptors, which
        leaves the parent's locks to the parent) and start the child's own segment on its next append.
        Does nothing in the process that made the spool (or that already ran it)."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._set_lock()  # the parent's may have been held by one of its threads
        _forget_the_parents()  # also when the fork skipped the hooks (uwsgi)
        for segment in self._segments.values():
            self._release(segment, forked=True)
        self._segments = {}
        self._targets = {}
        self._current = self._spare = None
        self._random = os.urandom(4).hex()
        self._serial = 0
        self._kept_bytes = 0
        self._appended = self._confirmed = self._replayed = self._dropped = self._damaged = 0
        self._failure_logged = False
        self._last_failure = ""
        self._no_segment_until = 0.0

    def close(self) -> int:
        """Stop writing and let go of every file (their locks); returns how many records remain
        unconfirmed, kept on disk for the next start. Idempotent."""
        if self._pid != os.getpid():
            self.after_fork()
        with self._lock:
            if self._closed:
                return self._kept_at_close
            self._closed = True
            kept = 0
            for segment in list(self._segments.values()):
                if segment.view is not None and segment.unconfirmed:
                    self._seal(segment)  # gives back the unwritten rest of its file
                if not segment.unconfirmed:
                    self._delete(segment)
                else:
                    kept += len(segment.unconfirmed)
                    self._release(segment)
            self._segments = {}
            self._current = self._spare = None
            self._kept_at_close = kept
            return kept

    def stats(self) -> Dict[str, int]:
        """Counters of this process: appended, confirmed, replayed (yielded by ``recover``), dropped
        (full, closed, or failed writes), damaged (records lost to damage in files taken over),
        kept (records unconfirmed now), kept_bytes (size of the files held) and files (held)."""
        with self._lock:
            return {
                "appended": self._appended,
                "confirmed": self._confirmed,
                "replayed": self._replayed,
                "dropped": self._dropped,
                "damaged": self._damaged,
                "kept": self._kept_at_close if self._closed else sum(len(s.unconfirmed) for s in self._segments.values()),
                "kept_bytes": self._kept_bytes,
                "files": len(self._segments),
            }


def _prepare_folder(folder: str) -> None:
    """Create ``folder`` (0o700) if missing; raise ``SpoolError`` naming it when it cannot serve
    (see ``_check_folder``). Takes group's and others' reading away from a folder of this user."""
    made = False
    try:
        fd = os.open(folder, _OPEN_FOLDER)
    except FileNotFoundError:
        try:
            os.makedirs(folder, mode=0o700)
            made = True
        except FileExistsError:
            pass  # another process made it meanwhile: checked below like any other
        except OSError as error:
            raise SpoolError(f"spool folder {folder} cannot be created: {error.strerror or error}") from None
        fd = _open_folder(folder)
    except OSError as error:
        fd = _open_folder(folder, error)
    try:
        mode = _check_folder(folder, os.fstat(fd))
        if made or mode & 0o077:
            try:
                os.fchmod(fd, 0o700 if made else mode & 0o700)  # its files hold the company token
            except OSError:
                pass
    finally:
        os.close(fd)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpoolError(f"spool folder {folder} cannot be written (permission denied)")


def _open_folder(folder: str, error: Optional[OSError] = None) -> int:
    """The spool folder opened (``O_DIRECTORY | O_NOFOLLOW``), or ``SpoolError`` saying why not."""
    if error is None:
        try:
            return os.open(folder, _OPEN_FOLDER)
        except OSError as failure:
            error = failure
    try:
        info: Optional[os.stat_result] = os.lstat(folder)
    except OSError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise SpoolError(
            f"spool folder {folder} is a symbolic link: give the folder it names (a link can be made to name another)"
        )
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise SpoolError(f"spool path {folder} is a file, not a folder")
    if isinstance(error, FileNotFoundError):
        raise SpoolError(f"spool folder {folder} does not exist")
    if isinstance(error, NotADirectoryError):
        raise SpoolError(f"spool folder {folder} cannot be created: a part of the path is a file")
    raise SpoolError(f"spool folder {folder} cannot be used: {error.strerror or error}")


def _open_checked_folder(folder: str) -> int:
    """The spool folder opened (``O_NOFOLLOW``) and checked as ``_check_folder`` does, to make a file
    in it; ``FileNotFoundError`` when it is gone, another ``OSError`` saying why it may not be used."""
    try:
        fd = os.open(folder, _OPEN_FOLDER)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as error:  # ELOOP: a link; ENOTDIR: a file
        raise OSError(error.errno, f"spool folder {folder} is a symbolic link or a file now") from None
    try:
        _check_folder(folder, os.fstat(fd))
    except SpoolError as error:
        os.close(fd)
        raise OSError(errno.EPERM, str(error)) from None
    return fd


def _check_folder(folder: str, info: os.stat_result) -> int:
    """Refuse (``SpoolError``) a spool folder that another user owns, or that its group or others
    can write to (sticky or not, as ``/tmp``): they could read or replace the files, which hold the
    company token and are replayed. Returns the folder's permission bits."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise SpoolError(
            f"spool folder {folder} belongs to another user (uid {info.st_uid}; this process runs as uid"
            f" {os.geteuid()}): use a folder of the user the client runs as"
        )
    if mode & 0o022:
        who = "others" if mode & 0o002 else "its group"
        raise SpoolError(
            f"spool folder {folder} can be written by {who} (mode {mode:o}): its files hold the company token;"
            f" use a folder only its owner can write to (chmod 700 {folder})"
        )
    return mode


def inspect(folder: str) -> SpoolReport:
    """What the spool at ``folder`` holds: each segment's unconfirmed records, size, and whether a
    live process holds it. Reads only (takes no file over); raises ``SpoolError`` when ``folder`` is
    not a spool folder."""
    folder = os.path.abspath(os.fspath(folder))
    fd = _open_folder(folder)
    try:
        _check_folder(folder, os.fstat(fd))
    finally:
        os.close(fd)
    try:
        names = _segment_names(folder)
    except OSError as error:
        raise SpoolError(f"spool folder {folder} cannot be read: {error.strerror or error}") from None
    files: List[SpoolFile] = []
    for name in names:
        path = os.path.join(folder, name + SEGMENT_SUFFIX)
        try:
            fd = _open_file(path)
        except FileNotFoundError:
            continue
        except NotAFileError as error:
            logger.warning("seven_segments: spool file %s is %s", path, error.strerror)
            continue
        except OSError as error:
            raise SpoolError(f"spool file {path} cannot be read: {error.strerror or error}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                # Let go at once, before reading: a client starting meanwhile (taking the files of
                # dead writers over, once) must not take this file for a live writer's.
                fcntl.flock(fd, fcntl.LOCK_UN)
                alive = False
            except OSError:
                alive = True
            read = _read_segment(fd, path)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if read is None:
            files.append(SpoolFile(name + SEGMENT_SUFFIX, 0, size, alive, 0, 0))
            continue
        data = read
        try:
            header = _read_header(data, path)
        except SpoolError:
            files.append(SpoolFile(name + SEGMENT_SUFFIX, 0, len(data), alive, 0, 0))
            continue
        if header.version > FORMAT_VERSION:
            files.append(SpoolFile(name + SEGMENT_SUFFIX, 0, len(data), alive, 0, header.version))
            continue
        records, lost = parse_records(data, header.start)
        acked = _read_acks(os.path.join(folder, name + ACK_SUFFIX))
        pending = sum(1 for offset, _, _ in records if offset not in acked)
        files.append(SpoolFile(name + SEGMENT_SUFFIX, pending, len(data), alive, lost, header.version, header.target))
    return SpoolReport(folder, files)


class Delivery(NamedTuple):
    """What ``deliver`` did."""

    #: Commands the API applied (or had applied already).
    delivered: int
    #: One line per command the API refused for good (confirmed: not sent again), with no secret.
    refused: List[str]
    #: Commands still in the files this run took over (the API was down, or answered "retry").
    kept: int
    #: Why sending stopped (the last request's error), or None.
    failure: Optional[str]
    #: Files of live processes, left to them, and the commands they hold.
    live_files: int
    live_commands: int


def deliver(
    folder: str,
    target: Optional[str] = None,
    *,
    default_target: str = DEFAULT_TARGET,
    timeout: float = 10.0,
    retry_deadline: float = 30.0,
) -> Delivery:
    """Deliver what the spool at ``folder`` holds in the files of dead writers, as ``bulk`` requests
    of at most ``RECOVER_CHUNK`` commands, each retried on passing failures for ``retry_deadline``
    seconds: each file's commands to the target its header names (``default_target`` for a file that
    names none: version 1), or all of them to ``target`` when given. Applied and refused commands are
    confirmed (so removed); a request refused as a whole (400, 413) is split in halves until the
    command at fault is alone, and refused; those the API asked to retry, and all of a target's
    once a request to it fails, are kept. Records that are no command are skipped (``is_command``). Files of live
    processes are left alone. Raises ``SpoolError`` when ``folder`` is not a spool folder."""
    from .errors import InvalidRequest, SevenSegmentsError
    from .protocol import MAX_BULK_BYTES, PATH_BULK
    from .transport import Backoff, Transport, call_with_retries
    from ._buffered.answers import read_results

    before = inspect(folder)  # raises for a missing folder, rather than making one
    live = [entry for entry in before.files if entry.alive]
    spool = Spool(folder, target=target or "", accepts=is_command)
    transports: Dict[str, Transport] = {}
    delivered = 0
    refused: List[str] = []
    failures: Dict[str, str] = {}  # by target: its commands are kept
    tokens: Set[str] = set()

    def transport_for(where: str) -> Transport:
        transport = transports.get(where)
        if transport is None:
            transport = transports[where] = Transport(where, timeout=timeout)
            for token in tokens:
                transport.add_secret(token)
        return transport

    try:
        for chunk in spool.recover(every_target=True):
            commands = []
            for record, data in chunk:
                try:
                    command = json.loads(data)
                    body = command.get("data") if isinstance(command, dict) else None
                    token = body.get("company_id") if isinstance(body, dict) else None
                except ValueError:
                    command, token = None, None
                if isinstance(token, str) and token not in tokens:
                    tokens.add(token)
                    for transport in transports.values():
                        transport.add_secret(token)  # kept out of every message quoted from the server
                commands.append((record, data, command))
            by_target: Dict[str, List[Tuple[Record, bytes, object]]] = {}
            for item in commands:
                by_target.setdefault(target or spool.target_of(item[0][0]) or default_target, []).append(item)
            work = [(where, batch) for where, group in by_target.items() for batch in _batches(group, MAX_BULK_BYTES - 64)]
            while work:
                where, batch = work.pop(0)
                if where in failures:
                    continue  # that target failed: its commands stay in the files
                try:
                    transport = transport_for(where)
                except ValueError as error:  # a file naming a target that is no URL
                    failures[where] = str(error)
                    continue
                request = b'{"commands":[' + b",".join(data for _, data, _ in batch) + b"]}"
                end = time.monotonic() + retry_deadline
                try:
                    answer = call_with_retries(
                        lambda wait: transport.post(PATH_BULK, request, timeout=wait),
                        what=PATH_BULK,
                        deadline=lambda: end,
                        timeout=timeout,
                        backoff=Backoff(initial=0.1, maximum=5.0),
                        sleep=time.sleep,
                    )
                except InvalidRequest as error:
                    if error.status not in (400, 413):  # refused as a whole, with success false
                        failures[where] = transport.scrub(str(error))
                    elif len(batch) > 1:  # too large, or malformed as a whole: halves, until the command at fault is alone
                        half = len(batch) // 2
                        work[:0] = [(where, batch[:half]), (where, batch[half:])]
                    else:
                        refused.append(_refusal(batch[0][2], error.errors or (str(error),), transport.scrub))
                        spool.confirm([batch[0][0]])
                    continue
                except SevenSegmentsError as error:
                    failures[where] = transport.scrub(str(error))  # its str quotes the server's errors
                    continue
                verdict = read_results(answer.get("results"), len(batch))
                if verdict.all_ok:
                    settled = [record for record, _, _ in batch]
                else:
                    settled = [batch[index][0] for index in verdict.ok]
                    for index, reasons in verdict.errors:
                        settled.append(batch[index][0])
                        refused.append(_refusal(batch[index][2], reasons, transport.scrub))
                delivered += len(settled) - (0 if verdict.all_ok else len(verdict.errors))
                spool.confirm(settled)
    finally:
        for transport in transports.values():
            transport.close()
        kept = spool.close()
    failed = "; ".join(failures.values()) if failures else None
    return Delivery(delivered, refused, kept, failed, len(live), sum(entry.commands for entry in live))


def _batches(commands: List[Tuple[Record, bytes, object]], limit: int) -> Iterator[List[Tuple[Record, bytes, object]]]:
    """``commands`` cut into requests of at most ``limit`` bytes."""
    batch: List[Tuple[Record, bytes, object]] = []
    size = 0
    for command in commands:
        if batch and size + len(command[1]) + 1 > limit:
            yield batch
            batch, size = [], 0
        batch.append(command)
        size += len(command[1]) + 1
    if batch:
        yield batch


def _refusal(command: object, reasons: Sequence[str], scrub: Callable[[str], str]) -> str:
    """One line for a refused command: its name and command_id (never its token), and the reasons."""
    name, command_id = "command", None
    if isinstance(command, dict):
        name = str(command.get("name", name))
        body = command.get("data")
        if isinstance(body, dict):
            command_id = body.get("command_id")
    label = f"{name} {command_id}" if isinstance(command_id, str) else name
    because = "; ".join(scrub(reason) for reason in reasons) or "no reason given"
    return f"{label} refused: {because}"


def lock_held_here() -> bool:
    """Whether this thread holds the lock of a spool of this process (asked by the SIGTERM handler,
    which runs on the thread it interrupted: the close it waits for needs that lock)."""
    return any(spool._lock_and_owner[1]() for spool in list(_SPOOLS))


#: How long a fork waits for a segment being made (a hung file system must not hang ``fork()``).
FORK_WAIT_SECONDS = 10.0
_fork_holds_making = False


def _before_fork() -> None:
    global _fork_holds_making
    _fork_holds_making = _making().acquire(timeout=FORK_WAIT_SECONDS)


def _after_fork_in_parent() -> None:
    if _fork_holds_making:
        _making().release()


def _after_fork_in_child() -> None:
    _forget_the_parents()  # the child's own lock is made on first use: a new process id
    for spool in list(_SPOOLS):
        try:
            spool.after_fork()
        except Exception:  # pragma: no cover - never let a fork hook raise
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

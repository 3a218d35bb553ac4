"""Reading a spool back: the files of dead writers taken over (``recover``), and this process's own
records read back after an outage (``reread``).

``recover`` takes over the segments of dead writers (``flock(LOCK_EX | LOCK_NB)``; checked to be
still the file of that name, so two processes never replay the same file), and yields the records
that were never confirmed, oldest first. A record cut short by a kill, or damaged on disk (bad
magic, length or checksum), is skipped with one warning per file saying how many were lost; so is
one that ``accepts`` refuses (a whole record that is no command), whose place is settled.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from typing import Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import files
from .format import (
    ACK_SUFFIX,
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    MAX_SEGMENT_FILE_BYTES,
    RECORD_HEADER_BYTES,
    RECOVER_CHUNK,
    SEGMENT_BYTES,
    SEGMENT_SUFFIX,
    TEMP_SUFFIX,
    Header,
    Record,
    SpoolError,
    newer,
    parse_records,
    read_header,
    valid_at,
)
from .holdings import Holdings
from .segments import Segment, _no_longer_in_hand, lock_dead_writers, release

logger = logging.getLogger(__name__)

#: A temporary segment file is left alone for this long (its maker locks it right after making it).
TEMP_GRACE_SECONDS = 60.0

Chunk = List[Tuple[Record, bytes]]


def _plural(count: int) -> str:
    return "" if count == 1 else "s"


class Recovery:
    """Reads back what a spool's folder holds, for the spool that owns ``held``."""

    def __init__(self, held: Holdings, target: str, accepts: Optional[Callable[[bytes], bool]]) -> None:
        self.held = held
        self.folder = held.maker.folder
        self.target = target
        self.accepts = accepts

    def recover(self, every_target: bool, chunk_size: int = RECOVER_CHUNK) -> Iterator[Chunk]:
        """See ``Spool.recover``."""
        chunk: Chunk = []
        for name in self._candidates(every_target):
            if self.held.closed:
                break
            taken = self._take(name, every_target)
            if taken is None:
                continue
            segment, payloads = taken
            for offset, payload in payloads:
                chunk.append(((segment.name, offset), payload))
                if len(chunk) >= chunk_size:
                    self.held.tally.replayed += len(chunk)
                    yield chunk
                    chunk = []
        if chunk:
            self.held.tally.replayed += len(chunk)
            yield chunk

    def _candidates(self, every_target: bool) -> List[str]:
        """The names of the segments not held here, of this target (or every one), oldest first;
        removes orphan ack files and dead temporary files on the way."""
        try:
            entries = os.listdir(self.folder)
        except OSError as error:
            logger.warning("seven_segments: cannot list the spool %s: %s", self.folder, error.strerror or error)
            return []
        names = set(entries)
        candidates: List[Tuple[int, str]] = []
        for entry in entries:
            if entry.endswith(SEGMENT_SUFFIX):
                name = entry[: -len(SEGMENT_SUFFIX)]
                if name in self.held.segments:
                    continue
                created, target = _head(os.path.join(self.folder, entry))
                if every_target or target in ("", self.target):
                    candidates.append((created, name))
            elif entry.endswith(ACK_SUFFIX) and entry[: -len(ACK_SUFFIX)] + SEGMENT_SUFFIX not in names:
                self._remove_orphan(entry[: -len(ACK_SUFFIX)])
            elif entry.startswith(".") and entry.endswith(TEMP_SUFFIX):
                _remove_dead_temp(os.path.join(self.folder, entry))
        return [name for _, name in sorted(candidates)]

    def reread(
        self, by_name: "Mapping[str, Sequence[int]]", chunk_size: int, lost: Optional[Callable[[int, str], None]]
    ) -> Iterator[Chunk]:
        """See ``Spool.reread``."""
        chunk: Chunk = []
        for name, offsets in by_name.items():
            with self.held.lock:
                segment = self.held.segments.get(name)
                if segment is None or segment.closed or self.held.closed:
                    continue
                wanted = [offset for offset in offsets if offset in segment.unconfirmed]
                path = segment.path
            if not wanted:
                continue
            try:  # by its path, not its descriptor: a close meanwhile cannot hand us another file's
                data = files.read_file(path)
            except OSError as error:
                logger.warning("seven_segments: cannot read back spool file %s: %s", path, error.strerror or error)
                if lost is not None:
                    lost(len(wanted), path)
                continue
            view = memoryview(data)
            damaged = 0
            for offset in wanted:
                end = valid_at(data, view, offset)
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

    def _remove_orphan(self, name: str) -> None:
        """An ack file whose segment is gone (its owner died between the two deletions)."""
        if os.path.exists(os.path.join(self.folder, name + SEGMENT_SUFFIX)):
            return
        try:
            os.unlink(files.ack_path_of(self.folder, name))
        except OSError:
            pass

    def _take(self, name: str, every_target: bool) -> Optional[Tuple[Segment, List[Tuple[int, bytes]]]]:
        """Lock a dead writer's segment, hold it, and read what it holds unconfirmed; None when it
        is alive, gone, unreadable (warned), or of another target (unless ``every_target``)."""
        segment, failure = lock_dead_writers(self.folder, name)
        if failure is not None:
            path = os.path.join(self.folder, name + SEGMENT_SUFFIX)
            if isinstance(failure, files.NotAFileError):
                logger.warning("seven_segments: spool file %s is %s", path, failure.strerror)
            else:
                logger.warning("seven_segments: cannot open spool file %s: %s", path, failure.strerror or failure)
        if segment is None:
            return None
        try:
            payloads = self._read_taken(segment, every_target)
        except BaseException:  # MemoryError on a huge file, say: its descriptor and lock go too
            release(segment)
            _no_longer_in_hand(segment)
            raise
        if payloads is None:
            release(segment)  # first: a fork in between must find it in hand or closed
            _no_longer_in_hand(segment)
            return None
        with self.held.lock:
            self.held.hold(segment)
            if not payloads:
                self.held.delete(segment)
        _no_longer_in_hand(segment)
        return segment, payloads

    def _read_taken(self, segment: Segment, every_target: bool) -> Optional[List[Tuple[int, bytes]]]:
        """The unconfirmed records of a dead writer's segment just locked (``segment.fd``), noted in
        ``segment``; None when it was replaced or deleted meanwhile, cannot be read (warned), or is
        another target's (unless ``every_target``: its header could not be read before)."""
        try:
            read = self._read_locked(segment)
            if read is None:
                return None
            data, header = read
            if not every_target and header.target not in ("", self.target):
                return None  # another target's: left to a client for it
            payloads = self._unconfirmed(segment, data, header)
        except OSError as error:
            logger.warning("seven_segments: cannot read spool file %s: %s", segment.path, error.strerror or error)
            return None
        self.held.targets[segment.name] = header.target
        segment.unconfirmed.update((offset, None) for offset, _ in payloads)
        segment.records = len(payloads)
        return payloads

    def _read_locked(self, segment: Segment) -> Optional[Tuple[bytes, Header]]:
        """The bytes and header of a segment just locked; None when it was replaced or deleted
        meanwhile, is too large, or has a header that cannot be read (warned)."""
        path, fd = segment.path, segment.fd
        try:
            if os.lstat(path).st_ino != os.fstat(fd).st_ino:
                return None  # replaced meanwhile
        except FileNotFoundError:
            return None  # taken, replayed and deleted by another process meanwhile
        limit = max(self.held.maker.segment_bytes, SEGMENT_BYTES) + MAX_SEGMENT_FILE_BYTES - SEGMENT_BYTES
        data = files.read_segment(fd, path, limit)
        if data is None:
            return None
        try:
            header = read_header(data, path)
        except SpoolError as error:
            logger.warning("seven_segments: %s; left as it is", error)
            return None
        if header.version > FORMAT_VERSION:
            logger.warning("seven_segments: %s; left as it is", newer(path, header.version))
            return None
        return data, header

    def _unconfirmed(self, segment: Segment, data: bytes, header: Header) -> List[Tuple[int, bytes]]:
        """The sound, unconfirmed records of a taken-over segment's bytes (counting and warning of
        the damaged ones), its file cut back to its last record and the segment sealed."""
        path = segment.path
        records, lost = parse_records(data, header.start)
        acked = files.read_acks(segment.ack_path)
        if lost:
            self.held.tally.damaged += lost
            logger.warning(
                "seven_segments: spool file %s: %d record%s cut short or damaged, skipped (lost)",
                path, lost, _plural(lost),
            )
        size = len(data)
        end = records[-1][2] if records else header.start
        if size > end:  # zeros (the unwritten rest of a writer that died) or a cut record, lost anyway
            try:  # given back, and not counted
                files.truncate_same(path, segment.fd, end)
                size = end
            except OSError:
                pass
        segment.size = segment.allocated = size
        segment.sealed = True
        payloads = [(offset, data[start:stop]) for offset, start, stop in records if offset not in acked]
        accepts = self.accepts
        if accepts is None:
            return payloads
        commands = [item for item in payloads if accepts(item[1])]
        count = len(payloads) - len(commands)
        if count:  # the others' places are settled: never unconfirmed
            self.held.tally.damaged += count
            logger.warning(
                "seven_segments: spool file %s: %d record%s whole but not a command (damaged), skipped (lost)",
                path, count, _plural(count),
            )
        return commands


def _head(path: str) -> Tuple[int, str]:
    """When a segment was made, and the target it was written for ("" when its header says none
    or cannot be read: ``_take`` says why)."""
    try:
        header = read_header(files.read_file(path, MAX_HEADER_BYTES), path)
        return header.created, header.target
    except (OSError, SpoolError):
        return 0, ""


def _remove_dead_temp(path: str) -> None:
    """A segment its maker died before naming (it holds no record): removed when unlocked and
    older than a minute (a live maker may not have locked it yet)."""
    try:
        if time.time() - os.lstat(path).st_mtime < TEMP_GRACE_SECONDS:
            return
        fd = files.open_file(path)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Files in the spool folder, opened safely: never through a link, never waiting on a FIFO, never
reading a planted file of gigabytes; and the folder itself, checked to be private to the user.

A folder another user owns, that its group or others can write to, or that is a symbolic link, is
refused (``SpoolError``): its files hold the company token and are replayed.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import stat
from typing import List, Optional, Set

from .format import ACK_SUFFIX, MAX_SEGMENT_FILE_BYTES, SEGMENT_SUFFIX, SpoolError, parse_acks

logger = logging.getLogger(__name__)

_OPEN_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Every file in the folder is opened without following a link (one planted there could name any
#: file), and without waiting (a FIFO planted there would block the open for ever).
_OPEN_SAFE = _OPEN_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
OPEN_FOLDER = os.O_RDONLY | _OPEN_CLOEXEC | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)


class NotAFileError(OSError):
    """A name in the spool folder that is not a regular file (a link, a device, a FIFO): never read
    nor written."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EINVAL, "not a regular file (a link, a device or a FIFO); skipped", path)


def open_file(path: str, flags: int = os.O_RDONLY, mode: int = 0o600, dir_fd: Optional[int] = None) -> int:
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


def truncate_same(path: str, fd: int, length: int) -> None:
    """Cut the file that ``fd`` (read-only) holds to ``length``, through ``path`` opened for writing
    without following a link, and only when ``path`` still names that file (``OSError`` if not)."""
    writable = open_file(path, os.O_WRONLY)
    try:
        held, named = os.fstat(fd), os.fstat(writable)
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise OSError(errno.ESTALE, "replaced meanwhile", path)
        os.ftruncate(writable, length)
    finally:
        os.close(writable)


def read_all(fd: int, limit: Optional[int] = None) -> bytes:
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


def read_file(path: str, limit: int = -1) -> bytes:
    """The bytes of a regular file in the spool folder (at most ``limit``), see ``open_file``."""
    fd = open_file(path)
    try:
        return os.pread(fd, limit, 0) if limit >= 0 else read_all(fd)
    finally:
        os.close(fd)


def read_acks(path: str) -> Set[int]:
    """The confirmed offsets in an ack file (a cut last entry is ignored); none when it is not a
    regular file (warned)."""
    try:
        data = read_file(path)
    except FileNotFoundError:
        return set()
    except NotAFileError as error:
        logger.warning("seven_segments: spool file %s is %s", path, error.strerror)
        return set()
    return parse_acks(data)


def read_segment(fd: int, path: str, limit: int = MAX_SEGMENT_FILE_BYTES) -> Optional[bytes]:
    """The bytes of a segment file; None (warned) for one larger than ``limit``, which is no
    segment: a planted file of gigabytes, read, would take the memory (a ``MemoryError`` stopped
    the replay of every other file)."""
    size = os.fstat(fd).st_size
    if size <= limit:
        data = read_all(fd, limit)  # at most one byte more, should it grow meanwhile
        if len(data) <= limit:
            return data
        size = len(data)
    logger.warning(
        "seven_segments: spool file %s is larger than any segment (%d bytes, at most %d): not read, left as it is",
        path, size, limit,
    )
    return None


def segment_names(folder: str) -> List[str]:
    """The names of the segment files in ``folder`` (without their suffix), sorted."""
    return sorted(entry[: -len(SEGMENT_SUFFIX)] for entry in os.listdir(folder) if entry.endswith(SEGMENT_SUFFIX))


def ack_path_of(folder: str, name: str) -> str:
    """The path of segment ``name``'s ack file."""
    return os.path.join(folder, name + ACK_SUFFIX)


#: Map a new segment's pages at once (Linux): cheaper first writes to each page (they still fault once).
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
#: ``posix_fallocate`` errors meaning "this file system cannot do that" (zeros are written instead).
_NO_FALLOCATE = frozenset(
    code for code in (getattr(errno, "EOPNOTSUPP", None), errno.EINVAL, getattr(errno, "ENOSYS", None)) if code
)


def reserve(fd: int, length: int, start: int) -> None:
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


def map_preallocated(fd: int, length: int, start: int) -> "Optional[mmap.mmap]":
    """The segment file, preallocated to ``length`` bytes, mapped shared for writing; None (the file
    cut back to its header, which ends at ``start``) where the file system cannot map files. Raises
    ``OSError`` when the disk has no room for it."""
    reserve(fd, length, start)
    try:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _MAP_POPULATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        os.ftruncate(fd, start)
        return None


# -- the folder --------------------------------------------------------------------------------------


def prepare_folder(folder: str) -> None:
    """Create ``folder`` (0o700) if missing; raise ``SpoolError`` naming it when it cannot serve
    (see ``check_folder``). Takes group's and others' reading away from a folder of this user."""
    made = False
    try:
        fd = os.open(folder, OPEN_FOLDER)
    except FileNotFoundError:
        try:
            os.makedirs(folder, mode=0o700)
            made = True
        except FileExistsError:
            pass  # another process made it meanwhile: checked below like any other
        except OSError as error:
            raise SpoolError(f"spool folder {folder} cannot be created: {error.strerror or error}") from None
        fd = open_folder(folder)
    except OSError as error:
        fd = open_folder(folder, error)
    try:
        mode = check_folder(folder, os.fstat(fd))
        if made or mode & 0o077:
            try:
                os.fchmod(fd, 0o700 if made else mode & 0o700)  # its files hold the company token
            except OSError:
                pass
    finally:
        os.close(fd)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpoolError(f"spool folder {folder} cannot be written (permission denied)")


def open_folder(folder: str, error: Optional[OSError] = None) -> int:
    """The spool folder opened (``O_DIRECTORY | O_NOFOLLOW``), or ``SpoolError`` saying why not."""
    if error is None:
        try:
            return os.open(folder, OPEN_FOLDER)
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


def open_checked_folder(folder: str) -> int:
    """The spool folder opened (``O_NOFOLLOW``) and checked as ``check_folder`` does, to make a file
    in it; ``FileNotFoundError`` when it is gone, another ``OSError`` saying why it may not be used."""
    try:
        fd = os.open(folder, OPEN_FOLDER)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as error:  # ELOOP: a link; ENOTDIR: a file
        raise OSError(error.errno, f"spool folder {folder} is a symbolic link or a file now") from None
    try:
        check_folder(folder, os.fstat(fd))
    except SpoolError as error:
        os.close(fd)
        raise OSError(errno.EPERM, str(error)) from None
    return fd


def check_folder(folder: str, info: os.stat_result) -> int:
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


def fsync_folder(folder: str) -> None:
    """Sync the folder's entries (a new file's name), ignoring errors."""
    try:
        folder_fd = os.open(folder, OPEN_FOLDER)
        try:
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    except OSError:
        pass

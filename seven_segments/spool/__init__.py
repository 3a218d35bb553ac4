"""A durable spool: commands written to disk before ``track()`` returns, replayed after a crash.

Layout: one folder, private to the user (mode 0o700, files 0o600), shared by many processes. Each
process writes its own *segment* files, ``<host>-<pid>-<random>-<n>.seg``, and holds an OS lock
(``flock``) on each of them for as long as it lives: the lock ends with the process however it ends
(SIGKILL, the OOM killer, ``os._exit``), so a file whose lock can be taken belongs to nobody. No pid
files.

A new segment is preallocated (``posix_fallocate``, so a full disk shows when a segment is made)
and mapped shared into memory; a record is copied into the map, which is the kernel's page cache
of the file: no system call per record, and once copied it is the operating system's, so a process
killed at any moment after ``append`` returned loses nothing. With ``fsync=True`` (each record then
followed by ``fsync``), where the system cannot reserve a file's space (no ``posix_fallocate``:
macOS) or where a file cannot be mapped, each record is written with one ``pwrite`` instead. Power
loss or a kernel crash may lose what the kernel had not yet written to the disk, unless the spool
was made with ``fsync=True``.

A copy into the map can wait, holding the GIL, where ``pwrite`` would wait without it: on the first
write to each page (a page fault) and, when the kernel throttles writers because the disk cannot
keep up with the machine's dirty pages, for as long as it throttles.

Payloads are opaque bytes here. In the client they are bulk commands, which hold the company token:
that is why the folder is private to the user. Each file is replayed only for its own target:
``recover`` takes the files written for the spool's ``target``, and those of version 1 (which do not
say theirs) or of a spool made without one; it leaves the files of other targets to a client made
for theirs (or to ``deliver``).

The modules: ``format`` (the bytes of a segment, its records, the ack file; ``is_command``),
``files`` (opening files in the folder safely; the folder's checks), ``segments`` (the files this
process holds and makes; the fork registry), ``holdings`` (what one spool holds, under its lock),
``recovery`` (taking over dead writers' files; reading back), ``processes`` (forks, signals,
contended locks), ``facade`` (``Spool``), ``report`` (``inspect``) and ``delivery`` (``deliver``): the command line.
"""

from __future__ import annotations

from .facade import Spool
from .files import NotAFileError as NotAFileError
from .format import (
    DEFAULT_MAX_BYTES,
    FORMAT_VERSION,
    RECOVER_CHUNK,
    SEGMENT_BYTES,
    Record,
    SpoolError,
    is_command,
)

# Importable from here as from the module this package was (the fork registry: tests reach it).
from .format import ACK_SUFFIX as ACK_SUFFIX
from .format import HEADER_BYTES as HEADER_BYTES
from .format import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from .format import MAX_SEGMENT_FILE_BYTES as MAX_SEGMENT_FILE_BYTES
from .format import RECORD_HEADER_BYTES as RECORD_HEADER_BYTES
from .format import SEGMENT_SUFFIX as SEGMENT_SUFFIX
from .format import TEMP_SUFFIX as TEMP_SUFFIX
from .format import parse_records as parse_records
from .processes import _SPOOLS as _SPOOLS
from .processes import FORK_WAIT_SECONDS as FORK_WAIT_SECONDS
from .processes import lock_held_here
from .recovery import TEMP_GRACE_SECONDS as TEMP_GRACE_SECONDS
from .segments import _IN_HAND as _IN_HAND
from .segments import _MAKING_BY_PID as _MAKING_BY_PID
from .segments import _forget_the_parents as _forget_the_parents
from .segments import _making as _making
from .delivery import Delivery, deliver
from .report import SpoolFile, SpoolReport, inspect

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

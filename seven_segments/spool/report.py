"""What a spool folder holds, read only: ``inspect`` and the lines ``seven-segments spool PATH`` prints."""

from __future__ import annotations

import fcntl
import logging
import os
from typing import List, NamedTuple, Optional, TextIO

from . import files
from .format import FORMAT_VERSION, SEGMENT_SUFFIX, SpoolError, parse_records, read_header

__all__ = ["SpoolFile", "SpoolReport", "inspect", "show"]

logger = logging.getLogger(__name__)


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


def inspect(folder: str) -> SpoolReport:
    """What the spool at ``folder`` holds: each segment's unconfirmed records, size, and whether a
    live process holds it. Reads only (takes no file over); raises ``SpoolError`` when ``folder`` is
    not a spool folder."""
    folder = os.path.abspath(os.fspath(folder))
    fd = files.open_folder(folder)
    try:
        files.check_folder(folder, os.fstat(fd))
    finally:
        os.close(fd)
    try:
        names = files.segment_names(folder)
    except OSError as error:
        raise SpoolError(f"spool folder {folder} cannot be read: {error.strerror or error}") from None
    report = SpoolReport(folder, [])
    for name in names:
        entry = _inspect_file(folder, name)
        if entry is not None:
            report.files.append(entry)
    return report


def _inspect_file(folder: str, name: str) -> Optional[SpoolFile]:
    """One segment file as ``inspect`` sees it; None when it is gone or not a regular file (warned)."""
    path = os.path.join(folder, name + SEGMENT_SUFFIX)
    try:
        fd = files.open_file(path)
    except FileNotFoundError:
        return None
    except files.NotAFileError as error:
        logger.warning("seven_segments: spool file %s is %s", path, error.strerror)
        return None
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
        data = files.read_segment(fd, path)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if data is None:
        return SpoolFile(name + SEGMENT_SUFFIX, 0, size, alive, 0, 0)
    try:
        header = read_header(data, path)
    except SpoolError:
        return SpoolFile(name + SEGMENT_SUFFIX, 0, len(data), alive, 0, 0)
    if header.version > FORMAT_VERSION:
        return SpoolFile(name + SEGMENT_SUFFIX, 0, len(data), alive, 0, header.version)
    records, lost = parse_records(data, header.start)
    acked = files.read_acks(files.ack_path_of(folder, name))
    pending = sum(1 for offset, _, _ in records if offset not in acked)
    return SpoolFile(name + SEGMENT_SUFFIX, pending, len(data), alive, lost, header.version, header.target)


def show(folder: str, out: TextIO) -> None:
    """Write what ``inspect`` finds in ``folder``, one line for the folder and one per file."""
    report = inspect(folder)
    out.write(f"{report.folder}: {len(report.files)} files, {report.commands} commands, {report.bytes} bytes\n")
    for entry in report.files:
        damaged = f", {entry.damaged} damaged" if entry.damaged else ""
        writer = "alive" if entry.alive else "dead"
        target = f", for {entry.target}" if entry.target else ""
        out.write(f"  {entry.name}: {entry.commands} commands, {entry.bytes} bytes, writer {writer}{damaged}{target}\n")

"""The spool's folder and files (seven_segments/spool/files.py): private folders, no link followed, newer formats refused.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import logging
import os
import re
import struct

import pytest

from seven_segments.spool import (
    FORMAT_VERSION,
    HEADER_BYTES,
    Spool,
    SpoolError,
    inspect,
)

from .helpers import LOGGER, payload, number_of, recover_all, segments, stat_mode

pytestmark = pytest.mark.timeout(60)


def test_bad_folders(tmp_path: "os.PathLike[str]") -> None:
    base = os.fspath(tmp_path)
    a_file = os.path.join(base, "a-file")
    with open(a_file, "w") as file:
        file.write("x")
    with pytest.raises(SpoolError, match=f"{a_file} is a file"):
        Spool(a_file)
    under_a_file = os.path.join(a_file, "spool")
    with pytest.raises(SpoolError, match=under_a_file):
        Spool(under_a_file)
    with pytest.raises(ValueError, match="spool_max_bytes"):
        Spool(os.path.join(base, "s"), max_bytes=0)
    with pytest.raises(TypeError, match="folder path"):
        Spool(5)  # type: ignore[arg-type]
    if os.geteuid() != 0:
        locked = os.path.join(base, "read-only")
        os.mkdir(locked, 0o500)
        try:
            with pytest.raises(SpoolError, match=f"{locked} cannot be written"):
                Spool(locked)
            with pytest.raises(SpoolError, match=os.path.join(locked, "inner")):
                Spool(os.path.join(locked, "inner"))
        finally:
            os.chmod(locked, 0o700)
    else:  # root writes anywhere, but not where no folder can be made
        with pytest.raises(SpoolError, match="/proc/1/no-spool-here"):
            Spool("/proc/1/no-spool-here")


def test_newer_format_refused(folder: str) -> None:
    Spool(folder).close()
    newer = os.path.join(folder, "other-1-abcd-1.seg")
    with open(newer, "wb") as file:
        file.write(b"7SSPOOL" + bytes([FORMAT_VERSION + 1]) + bytes(8) + b"future records")
    with pytest.raises(SpoolError, match=rf"{newer} was written in format version {FORMAT_VERSION + 1}"):
        Spool(folder)
    assert [entry.version for entry in inspect(folder).files] == [FORMAT_VERSION + 1]


def test_group_readable_folder_made_private(folder: str) -> None:
    os.makedirs(folder)
    os.chmod(folder, 0o755)
    Spool(folder).close()
    assert stat_mode(folder) == 0o700



NOBODY = 65534


def test_a_folder_of_another_user_or_open_to_others_is_refused(tmp_path: "os.PathLike[str]") -> None:
    """Its files hold the company token and are replayed: a folder another user owns, or can write
    to (group or others, sticky or not), or a link to a folder, is refused, naming the path and why."""
    base = os.fspath(tmp_path)
    refused = {}
    for mode in (0o1777, 0o777, 0o770, 0o720, 0o702):
        path = os.path.join(base, f"mode-{mode:o}")
        os.mkdir(path)
        os.chmod(path, mode)
        refused[path] = rf"{re.escape(path)} can be written by (its group|others) \(mode {mode:o}\)"
    real = os.path.join(base, "real")
    Spool(real).close()
    link = os.path.join(base, "link")
    os.symlink(real, link)
    refused[link] = rf"{re.escape(link)} is a symbolic link"
    if os.geteuid() == 0:
        owned = os.path.join(base, "nobodys")
        os.mkdir(owned, 0o700)
        os.chown(owned, NOBODY, NOBODY)
        refused[owned] = rf"{re.escape(owned)} belongs to another user \(uid {NOBODY};"
    for path, reason in refused.items():
        before = os.lstat(path)
        with pytest.raises(SpoolError, match=reason):
            Spool(path)
        with pytest.raises(SpoolError, match=reason):
            inspect(path)
        after = os.lstat(path)
        assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)  # left as it was
        assert os.path.islink(path) or os.listdir(path) == []  # nothing written there


def test_a_planted_ack_link_is_never_followed(folder: str, tmp_path: "os.PathLike[str]", caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder)
    for number in range(3):
        writer.append(payload(number))
    assert writer.close() == 3
    (name,) = segments(folder)
    victim = os.path.join(os.fspath(tmp_path), "victim")
    original = struct.pack("<Q", HEADER_BYTES)  # read as an ack file, it would confirm the first record
    with open(victim, "wb") as file:
        file.write(original)
    ack = os.path.join(folder, name[: -len(".seg")] + ".ack")
    os.symlink(victim, ack)
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    found = recover_all(reader)
    assert [number_of(data) for _, data in found] == [0, 1, 2]  # the link was not read as acks
    reader.confirm([found[0][0]])
    reader.confirm([found[1][0]])
    with open(victim, "rb") as file:
        assert file.read() == original  # nothing appended through the link
    assert os.path.islink(ack)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(ack in text and "not a regular file" in text for text in warnings), warnings
    assert reader.close() == 1


def test_a_segment_that_is_not_a_regular_file_is_skipped_and_the_others_replayed(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = Spool(folder, segment_bytes=1024)
    for number in range(20):
        writer.append(payload(number))
    assert writer.close() == 20
    zero = os.path.join(folder, "0-zero.seg")  # sorted first; its header would say "made at 0": first
    os.symlink("/dev/zero", zero)
    fifo = os.path.join(folder, "1-fifo.seg")
    os.mkfifo(fifo, 0o600)  # opening it to read would wait for a writer
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(20))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for path in (zero, fifo):
        assert any(path in text and "not a regular file" in text for text in warnings), warnings
    assert inspect(folder).commands == 20  # inspect skips them too
    reader.close()

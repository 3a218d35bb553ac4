"""Reading a spool back (seven_segments/spool/recovery.py): dead writers' files taken over, damage skipped, targets kept apart.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, List

import pytest

from seven_segments.spool import (
    RECORD_HEADER_BYTES,
    Record,
    Spool,
    inspect,
    is_command,
)

from seven_segments.spool.recovery import Recovery

from .helpers import NOT_COMMANDS, LOGGER, payload, number_of, recover_all, segments, _record_bytes, command, recover_all_targets

pytestmark = pytest.mark.timeout(60)


def test_damaged_file_skips_and_warns(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder)
    records = [writer.append(payload(number)) for number in range(100)]
    writer.close()
    (name,) = segments(folder)
    path = os.path.join(folder, name)
    with open(path, "r+b") as file:
        data = bytearray(file.read())
        # record 30: a byte of its payload; record 60: its length field.
        data[records[30][1] + RECORD_HEADER_BYTES + 5] ^= 0xFF  # type: ignore[index]
        data[records[60][1] + 4] ^= 0x40  # type: ignore[index]
        file.seek(0)
        file.write(data)
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder)
    numbers = [number_of(data) for _, data in recover_all(reader)]
    assert numbers == [n for n in range(100) if n not in (30, 60)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and path in warnings[0] and " 2 records" in warnings[0], warnings
    assert reader.stats()["damaged"] == 2
    reader.close()


def test_a_dead_writers_reserved_rest_is_given_back_when_taken_over(folder: str) -> None:
    writer = Spool(folder, segment_bytes=64 * 1024)
    for number in range(10):
        assert writer.append(payload(number)) is not None
    (name,) = segments(folder)
    path = os.path.join(folder, name)
    assert os.path.getsize(path) == 64 * 1024
    writer._held.closed = True  # stand in for a kill: the map and the lock go, the file stays as it is
    for segment in list(writer._held.segments.values()):
        assert segment.view is not None
        segment.view.close()
        os.close(segment.fd)
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(10))
    assert os.path.getsize(path) < 4096  # cut to its records: a crash loop does not fill the bound
    assert reader.stats()["kept_bytes"] == os.path.getsize(path)
    reader.close()


def test_a_dead_writers_file_that_cannot_be_read_is_let_go_of_whatever_the_error(folder: str, monkeypatch: Any) -> None:
    writer = Spool(folder)
    assert writer.append(payload(0)) is not None
    writer._held.closed = True  # stand in for a kill: the map and the lock go, the file stays as it is
    for segment in list(writer._held.segments.values()):
        assert segment.view is not None
        segment.view.close()
        os.close(segment.fd)

    def out_of_memory(self: Any, segment: Any, *rest: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(Recovery, "_read_taken", out_of_memory)
    reader = Spool(folder)
    with pytest.raises(MemoryError):
        recover_all(reader)
    assert [file.alive for file in inspect(folder).files] == [False]  # not locked by the reader
    monkeypatch.undo()
    assert [number_of(data) for _, data in recover_all(reader)] == [0]
    reader.close()


def test_leftovers_cleaned_up(folder: str) -> None:
    """An ack file whose segment is gone, and an old unnamed segment of a dead maker, are removed;
    a fresh temporary file (its maker may be about to lock it) is not."""
    Spool(folder).close()
    orphan = os.path.join(folder, "gone-1-abcd-1.ack")
    old_temp = os.path.join(folder, ".gone-1-abcd-2.tmp")
    new_temp = os.path.join(folder, ".gone-1-abcd-3.tmp")
    for path in (orphan, old_temp, new_temp):
        with open(path, "wb") as file:
            file.write(b"7SSPOOL\x01" + bytes(8))
    os.utime(old_temp, (time.time() - 120, time.time() - 120))
    reader = Spool(folder)
    assert recover_all(reader) == []
    assert not os.path.exists(orphan) and not os.path.exists(old_temp) and os.path.exists(new_temp)
    reader.close()


def test_a_whole_record_that_is_no_command_is_skipped_counted_and_its_place_settled(
    folder: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Replayed, it made its whole bulk request refused (400), which failed the good commands with it
    # for good; alone, an empty one made the client send {"commands": []} for ever (issue 24).
    writer = Spool(folder)
    good: List[Record] = []
    for number in range(1000):
        if number % 100 == 50:
            assert writer.append(NOT_COMMANDS[(number // 100) % len(NOT_COMMANDS)]) is not None
        good.append(writer.append(command(number)))  # type: ignore[arg-type]
    assert writer.close() == 1010
    caplog.set_level(logging.WARNING, LOGGER)
    reader = Spool(folder, accepts=is_command)
    found = recover_all(reader)
    assert [data for _, data in found] == [command(number) for number in range(1000)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "10 records whole but not a command" in warnings[0], warnings
    assert reader.stats()["damaged"] == 10
    reader.confirm([record for record, _ in found])
    assert segments(folder) == []  # nothing else waits in it: deleted
    reader.close()
    alone = Spool(folder)
    alone.append(b"")
    alone.close()
    reader = Spool(folder, accepts=is_command)
    assert recover_all(reader) == [] and segments(folder) == []
    reader.close()


def test_each_file_is_replayed_only_for_the_target_it_was_written_for(folder: str) -> None:
    # A client made on the folder for another target sent these commands there, where they were
    # refused and deleted (issue 24).
    for target, numbers in (("http://a.example", range(0, 3)), ("http://b.example", range(3, 5)), ("", range(5, 6))):
        writer = Spool(folder, target=target)
        for number in numbers:
            writer.append(payload(number))
        writer.close()
    version_1 = os.path.join(folder, "old-1-abcd-1.seg")  # written before targets were: says none
    with open(version_1, "wb") as file:
        file.write(b"7SSPOOL\x01" + bytes(8) + _record_bytes(payload(6)))
    assert sorted(entry.target for entry in inspect(folder).files) == ["", "", "http://a.example", "http://b.example"]
    reader = Spool(folder, target="http://b.example")
    found = recover_all(reader)
    assert sorted(number_of(data) for _, data in found) == [3, 4, 5, 6]  # its own, and those naming none
    files = {entry.target: entry for entry in inspect(folder).files}
    assert files["http://a.example"].commands == 3 and not files["http://a.example"].alive  # not even locked
    reader.confirm([record for record, _ in found])
    reader.close()
    assert inspect(folder).commands == 3
    other = Spool(folder, target="http://a.example")
    assert sorted(number_of(data) for _, data in recover_all(other)) == [0, 1, 2]
    other.close()  # not confirmed: kept
    every = Spool(folder, target="http://c.example")
    found = recover_all_targets(every)
    assert sorted((every.target_of(name), number_of(data)) for (name, _), data in found) == [
        ("http://a.example", 0), ("http://a.example", 1), ("http://a.example", 2),
    ]
    every.close()

"""The ``Spool`` facade (seven_segments/spool/facade.py) in one process: append, confirm, close, segments made ahead.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
from typing import Any, List

import pytest

from seven_segments.spool import (
    HEADER_BYTES,
    Record,
    Spool,
)

from seven_segments.spool.segments import SegmentMaker

from .helpers import payload, number_of, recover_all, segments, folder_bytes, stat_mode, _record_bytes

pytestmark = pytest.mark.timeout(60)


# -- in one process ---------------------------------------------------------------------------------


def test_round_trip_confirm_in_random_order(folder: str, caplog: pytest.LogCaptureFixture) -> None:
    writer = Spool(folder, segment_bytes=4096)
    assert stat_mode(folder) == 0o700
    records = [writer.append(payload(number)) for number in range(500)]
    assert all(record is not None for record in records)
    confirmed = random.Random(7).sample(range(500), 300)
    chunks = [confirmed[start : start + 37] for start in range(0, 300, 37)]
    for chunk in chunks:  # out of order, as requests complete
        writer.confirm([records[number] for number in chunk])  # type: ignore[misc]
    writer.confirm([records[confirmed[0]]])  # type: ignore[list-item]  # twice: no harm
    stats = writer.stats()
    assert (stats["appended"], stats["confirmed"], stats["kept"]) == (500, 300, 200)
    assert writer.close() == 200
    assert writer.close() == 200  # idempotent
    assert writer.append(b"late") is None
    for name in os.listdir(folder):
        assert stat_mode(os.path.join(folder, name)) == 0o600

    reader = Spool(folder)
    found = recover_all(reader)
    numbers = [number_of(data) for _, data in found]
    assert numbers == sorted(set(range(500)) - set(confirmed))  # oldest first, each once
    assert reader.stats()["replayed"] == 200
    assert recover_all(reader) == []  # already taken
    reader.confirm([record for record, _ in found])
    assert reader.close() == 0
    assert segments(folder) == [] and os.listdir(folder) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_no_growth_while_confirmed(folder: str) -> None:
    writer = Spool(folder, segment_bytes=64 * 1024)
    pending: List[Record] = []
    biggest = 0
    for number in range(50_000):
        record = writer.append(payload(number, pad=100))
        assert record is not None
        pending.append(record)
        if len(pending) == 500:
            random.shuffle(pending)
            writer.confirm(pending)
            pending = []
            if number % 5000 == 4999:
                biggest = max(biggest, folder_bytes(folder))
    assert biggest <= 3 * 64 * 1024 + 4096, biggest  # the live segment, at most one sealed, their acks
    stats = writer.stats()
    assert stats["appended"] == stats["confirmed"] == 50_000 and stats["kept"] == 0
    assert stats["files"] == 1 and stats["kept_bytes"] <= 64 * 1024
    assert writer.close() == 0
    assert os.listdir(folder) == []


def test_max_bytes_drops_and_counts(folder: str) -> None:
    writer = Spool(folder, max_bytes=20_000)
    kept = [writer.append(payload(number, pad=200)) for number in range(200)]
    accepted = [record for record in kept if record is not None]
    stats = writer.stats()
    assert 0 < len(accepted) < 200 and stats["dropped"] == 200 - len(accepted)
    assert stats["kept_bytes"] <= 20_000
    writer.confirm(accepted)  # space given back: accepted again
    assert writer.append(payload(1)) is not None
    writer.close()


def test_segments_are_preallocated_and_given_back_when_sealed_or_closed(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192)
    assert segments(folder) == []  # the folder was proved writable; a nearly full disk does not stop the start
    assert writer.append(payload(0)) is not None
    (first,) = segments(folder)
    assert os.path.getsize(os.path.join(folder, first)) == 8192  # reserved when made
    records = [writer.append(payload(number)) for number in range(1, 300)]  # several segments
    assert all(record is not None for record in records)
    names = segments(folder)
    assert len(names) > 2
    sizes = [os.path.getsize(os.path.join(folder, name)) for name in names]
    assert all(size < 8192 for size in sizes[:-1]) and sizes[-1] == 8192  # sealed: cut to what they hold
    assert writer.stats()["kept_bytes"] == sum(sizes)
    assert writer.close() == 300
    assert os.path.getsize(os.path.join(folder, names[-1])) < 8192  # closed: the rest given back too
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(300))
    reader.close()


def test_the_next_segment_is_made_ahead_and_taken_over_by_the_append_that_needs_it(folder: str, monkeypatch: Any) -> None:
    writer = Spool(folder, segment_bytes=8192)
    most = (8192 - HEADER_BYTES) // len(_record_bytes(payload(0)))  # records of one segment, at least
    assert writer.append(payload(0)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 1  # less than half full: nothing is made ahead
    number = 1
    while writer.stats()["files"] == 1:  # the pump calls prepare_next after each take
        assert writer.append(payload(number)) is not None
        number += 1
        writer.prepare_next()
    assert most // 3 < number < most  # made once half full, before it is needed
    assert writer.stats()["kept_bytes"] == 2 * 8192  # the spare is reserved, and counts against the bound
    made: List[Any] = []
    make = SegmentMaker.make
    monkeypatch.setattr(SegmentMaker, "make", lambda self, *args, **kw: made.append(args) or make(self, *args, **kw))
    (first, _) = segments(folder)  # oldest first
    while os.path.getsize(os.path.join(folder, first)) == 8192:  # until the first is full and sealed
        assert writer.append(payload(number)) is not None and number < 2 * most
        number += 1
    for number in range(number, number + 10):  # and on, in the spare
        assert writer.append(payload(number)) is not None
    assert made == []  # the append that found the first segment full only switched to the spare
    assert writer.stats()["files"] == 2
    assert writer.close() == number + 1
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(number + 1))
    reader.close()


def test_no_segment_is_made_ahead_when_the_bound_leaves_no_room_for_it(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192, max_bytes=4 * 8192)
    number = 0
    while writer.stats()["files"] < 3:  # two sealed, the third being written: no room for a fourth and a last
        assert writer.append(payload(number)) is not None
        number += 1
    for number in range(number, number + 60):  # the third more than half full
        assert writer.append(payload(number)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 3
    assert writer.close() == number + 1


def test_a_closed_spool_leaves_no_spare_behind(folder: str) -> None:
    writer = Spool(folder, segment_bytes=8192)
    for number in range(80):  # more than half of the first segment
        assert writer.append(payload(number)) is not None
    writer.prepare_next()
    assert writer.stats()["files"] == 2
    assert writer.close() == 80
    assert len(segments(folder)) == 1  # the one with records; the empty spare is deleted


def test_records_are_not_tracked_by_the_garbage_collector(folder: str) -> None:
    # A queue of records that pointed at objects made every full collection walk them all: a pause
    # of tens of milliseconds, during an outage, for whichever application thread triggered it.
    writer = Spool(folder)
    record = writer.append(payload(0))
    gc.collect()
    assert record is not None and not gc.is_tracked(record)
    writer.close()
    reader = Spool(folder)
    ((recovered, _),) = recover_all(reader)
    gc.collect()
    assert not gc.is_tracked(recovered)
    reader.close()


def test_an_exception_inside_append_leaves_the_lock_free(folder: str) -> None:
    """A KeyboardInterrupt (a signal handler's exception) raised while append holds the lock: the
    lock is released, so other threads' appends and close() do not hang."""
    writer = Spool(folder)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    writer._next_segment = interrupted  # type: ignore[assignment,method-assign]
    with pytest.raises(KeyboardInterrupt):
        writer.append(payload(0))
    del writer._next_segment  # type: ignore[attr-defined]
    results: List[Any] = []
    other = threading.Thread(target=lambda: results.append(writer.append(payload(1))))
    other.start()
    other.join(5)
    assert not other.is_alive() and results[0] is not None
    assert writer.close() == 1


def test_append_from_within_append_is_dropped_and_harms_nothing(folder: str) -> None:
    """A signal handler or logging handler that tracks while this thread is inside append (making a
    segment, say) gets its command dropped and counted; the outer append and the files are intact."""
    writer = Spool(folder, segment_bytes=4096)
    make_segment = writer._next_segment
    nested: List[Any] = []

    def with_a_handler_tracking(*args: Any) -> Any:
        nested.append(writer.append(payload(999)))
        return make_segment(*args)

    writer._next_segment = with_a_handler_tracking  # type: ignore[method-assign]
    first = writer.append(payload(0))
    del writer._next_segment  # type: ignore[attr-defined]
    assert nested == [None] and first is not None
    records = [writer.append(payload(number)) for number in range(1, 100)]
    assert all(record is not None for record in records)
    stats = writer.stats()
    assert (stats["appended"], stats["dropped"]) == (100, 1)
    assert stats["kept_bytes"] == sum(os.path.getsize(os.path.join(folder, name)) for name in segments(folder))
    assert writer.close() == 100
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(100))
    reader.close()


def test_fsync_mode_round_trip(folder: str) -> None:
    writer = Spool(folder, fsync=True, segment_bytes=1024)
    records = [writer.append(payload(number)) for number in range(30)]
    assert all(record is not None for record in records)
    writer.confirm(records[:10])  # type: ignore[arg-type]
    assert writer.close() == 20
    reader = Spool(folder)
    assert [number_of(data) for _, data in recover_all(reader)] == list(range(10, 30))
    reader.close()

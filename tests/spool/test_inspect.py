"""``inspect`` (seven_segments/spool/report.py): what a folder holds, read only.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import os

import pytest

from seven_segments.spool import (
    Spool,
    SpoolError,
    inspect,
)

from .helpers import payload, segments

pytestmark = pytest.mark.timeout(60)


def test_inspect(folder: str) -> None:
    writer = Spool(folder, segment_bytes=2048)
    records = [writer.append(payload(number)) for number in range(40)]
    writer.confirm(records[:10])  # type: ignore[arg-type]
    report = inspect(folder)
    assert report.commands == 30 and all(entry.alive for entry in report.files)
    assert report.bytes == sum(os.path.getsize(os.path.join(folder, name)) for name in segments(folder))
    writer.close()
    report = inspect(folder)
    assert report.commands == 30 and not any(entry.alive for entry in report.files)
    with pytest.raises(SpoolError, match="does not exist"):
        inspect(folder + "-missing")

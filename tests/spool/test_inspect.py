"""``inspect`` (seven_segments/spool/report.py): what a folder holds, read only.

Children are small scripts run with ``PYTHONPATH`` set to this checkout; each is bounded in time.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Dict, Iterator, List, Set, Tuple

import pytest

from seven_segments import spool as spool_module
from seven_segments.spool import (
    FORMAT_VERSION,
    HEADER_BYTES,
    RECORD_HEADER_BYTES,
    Record,
    Spool,
    SpoolError,
    inspect,
    is_command,
    parse_records,
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

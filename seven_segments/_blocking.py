"""How a client without an engine delivers: a blocking client sends each command at once, a disabled
one sends nothing. :class:`BlockingDelivery` answers ``flush``, ``close``, ``stats`` and ``health``
for both, as the buffered engine does for a buffered client.
"""

from __future__ import annotations

import math
from itertools import count
from typing import Any, Callable, Dict, Optional, Protocol

from . import serialization
from .errors import SevenSegmentsError
from .health import Figures
from .serialization import BulkCommandEncoder, Command, JSONObject
from .transport import TransientError

__all__ = ["Call", "Tally", "Delivery", "BlockingDelivery", "encode"]

#: ``_ApiClient._call(path, body, params, on_retry)``: one blocking call, retried on passing failures.
Call = Callable[[str, bytes, None, Callable[[TransientError, float], None]], Dict[str, Any]]


def encode(data: JSONObject) -> bytes:
    """The body of a blocking call: ``data`` holds only checked plain values (see serialization)."""
    return serialization._WRITER.data(data)


class Tally:
    """A counter that threads may bump at once, without a lock: ``next()`` of an ``itertools.count``
    is atomic, and no lock can be inherited held by a ``fork()`` child."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = count(1)

    def add(self, *_: Any) -> None:
        """Count one (any arguments are ignored, so that it can serve as a callback)."""
        next(self._count)

    @property
    def value(self) -> int:
        """How many were counted."""
        return int(repr(self._count)[6:-1]) - 1  # "count(N)": N is the next number it would give


class Delivery(Protocol):
    """Where a checked command goes that is not simply queued: the engine, or :class:`BlockingDelivery`."""

    def submit(self, command: Command) -> None:
        """Deliver (or queue) ``command``."""

    def flush(self, timeout: Optional[float]) -> bool:
        """Wait until what was given settled; True when all of it was delivered."""

    def close(self, timeout: Optional[float]) -> None:
        """Deliver what is left (within ``timeout``) and stop."""

    def stats(self) -> Dict[str, float]:
        """The counts of ``SevenSegments.stats`` (before the client adds its own)."""

    def figures(self) -> Figures:
        """What ``health()`` judges."""


class BlockingDelivery:
    """Each command sent now, in the caller's thread (``call`` retries passing failures and raises
    the rest); counts each sent, retried and failed, and the calls that failed in a row (for ``health()``)."""

    def __init__(
        self, token: str, call: Call, close_transport: Callable[[], None], *, enabled: bool, stall_warning_after: float
    ) -> None:
        self._token = token
        self._call = call
        self._close_transport = close_transport
        self._enabled = enabled
        self._stall_warning_after = stall_warning_after
        self._closed = False
        self._sent, self._retried, self._failed = Tally(), Tally(), Tally()
        self._failed_in_a_row = 0
        self._last_error = ""

    def submit(self, command: Command) -> None:
        """Send ``command`` and return when the server accepted it; raises what the call raised."""
        data = {"company_id": self._token, **BulkCommandEncoder.as_dict(command)["data"]}
        try:
            self._call(command[0], encode(data), None, self._retried.add)
        except Exception as error:
            self._failed.add()
            self._failed_in_a_row += 1
            self._last_error = str(error) if isinstance(error, SevenSegmentsError) else type(error).__name__
            raise
        self._sent.add()
        self._failed_in_a_row = 0

    def flush(self, timeout: Optional[float]) -> bool:
        """Nothing is ever queued: True."""
        return True

    def close(self, timeout: Optional[float]) -> None:
        """Release the connection pool."""
        self._closed = True
        self._close_transport()

    def stats(self) -> Dict[str, float]:
        """The keys of a buffered client's ``stats()``: only sent, retried and failed count here."""
        return {
            "queued": 0, "sent": self._sent.value, "retried": self._retried.value, "failed": self._failed.value,
            "unconfirmed": 0, "dropped": 0, "dropped_queue_full": 0, "dropped_closed": 0,
            "replayed": 0, "not_spooled": 0, "kept_in_spool": 0, "batches": 0, "in_flight": 0, "pending": 0,
            "pending_bytes": 0, "spool_bytes": 0, "oldest_pending_seconds": 0.0,
        }

    def figures(self) -> Figures:
        """Nothing is ever pending; a call that failed raised in its caller, and counts as failing here."""
        return Figures(
            enabled=self._enabled,
            closed=self._closed,
            pending=0,
            oldest_pending_seconds=0.0,
            queue_fill=0.0,
            retrying=0,
            requests_failed_in_a_row=self._failed_in_a_row,
            seconds_since_drop=math.inf,
            last_error=self._last_error,
            stall_warning_after=self._stall_warning_after,
            seconds_since_failure=math.inf,  # a refused call raised in its caller, and counts above
            requests_refused_in_a_row=0,
            last_failure="",
        )

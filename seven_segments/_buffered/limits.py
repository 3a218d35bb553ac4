"""Every limit and default of buffered delivery, in one place.

The client checks what a user passes (``SevenSegments(..., batch_size=...)``) and builds one frozen
:class:`Limits`; the engine reads nothing else. The README's "Configuration" table documents these.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol import MAX_BULK_BYTES, MAX_BULK_COMMANDS

__all__ = [
    "Limits",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_QUEUE_BYTES",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_RETRY_DEADLINE",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "DEFAULT_SPOOL_MAX_BYTES",
    "DEFAULT_STALL_WARNING_AFTER",
    "MAX_BATCH_BYTES",
    "MAX_IN_FLIGHT",
]

#: Commands per ``bulk`` request (the protocol allows at most 1000).
DEFAULT_BATCH_SIZE = MAX_BULK_COMMANDS
#: The longest a queued command waits for its batch, in seconds.
DEFAULT_FLUSH_INTERVAL = 0.5
#: Requests of one client in flight at once. Throughput is about ``max_in_flight * batch_size / RTT``,
#: where the RTT includes the waits of sender threads for the GIL while the application runs (up to
#: the 5 ms switch interval, several times per request). A backlog (a burst, a backfill, the end of
#: an outage) drains at that rate once the producer stops: with a server that keeps up, 32 drained it
#: in about half the time 16 took (``benchmarks/roundtrip_ab.py --server sink --windows 32``). Sender
#: threads start only as requests need them, so a client that sends less keeps fewer.
DEFAULT_MAX_IN_FLIGHT = 32
#: The most a user may ask for (each request in flight is a sender thread and a connection).
MAX_IN_FLIGHT = 32
#: Commands, and about how many bytes, a client holds at most; past them commands are dropped.
DEFAULT_MAX_QUEUE_SIZE = 1_000_000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
#: How long passing failures of a batch are retried, in seconds.
DEFAULT_RETRY_DEADLINE = 300.0
#: How long ``close()`` and interpreter exit may take to deliver, in seconds.
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: The disk a durable spool may use, at most.
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024
#: A warning is logged when a command has waited this long for delivery, in seconds.
DEFAULT_STALL_WARNING_AFTER = 300.0
#: A batch's bulk body stays this far under the protocol's 5 MiB.
MAX_BATCH_BYTES = MAX_BULK_BYTES - 256 * 1024


@dataclass(frozen=True)
class Limits:
    """The tuning of one buffered client (checked by the client before it is built)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_bytes: int = MAX_BATCH_BYTES
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    retry_deadline: float = DEFAULT_RETRY_DEADLINE
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    #: The longest one attempt may take, connecting to the last byte of the answer.
    timeout: float = 10.0
    #: How long a command may wait for delivery before a warning says delivery is stalled.
    stall_warning_after: float = DEFAULT_STALL_WARNING_AFTER

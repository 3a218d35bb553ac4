"""Buffered delivery: a lock-free queue that one background thread drains into ``bulk`` requests.

The caller's side (``submit``) is a few attribute reads, a ``deque.append`` and, once per wake-up of
the worker, an ``Event.set``: no I/O, no JSON, no lock (except for unusually large commands, whose
memory is accounted under a lock). Everything else happens on the worker thread:

1. *take*: commands are popped from the incoming deque, given their ``command_id`` and encoded to
   JSON bytes, so the worker holds each command as little more than its JSON;
2. *send*: the oldest pending commands go out in one ``bulk`` request when a batch is full, when the
   oldest has waited ``flush_interval``, when a ``flush()`` waits on them, or when closing;
3. *settle*: each command ends ``ok`` (sent), ``error`` (failed, reported to ``on_error``) or is put
   back at the front for another try. Whole-request failures are retried through tenacity (see
   ``transport.call_with_retries``) until ``retry_deadline``; 413 splits the batch in halves.

Pending commands stay sorted by arrival (retried ones are older than all the rest and go back to
the front), so "every command queued before this flush has settled" is one comparison with the
front's sequence number.

Process life: the worker thread is a daemon started on the first command. At interpreter exit an
``atexit`` hook (and, in ``multiprocessing`` children, a finalizer) closes every live worker, each
within its ``shutdown_timeout``, and logs one warning with the number of commands lost. In a forked
child (``os.register_at_fork`` and, for uwsgi which skips those hooks, a process-id check on every
call) a worker starts over with a fresh queue, lock, thread and connection pool; what the parent had
queued stays the parent's.

Nothing is lost without being counted: every command accepted by ``submit`` ends as ``sent`` or
``failed`` (reported to ``on_error``), and every refused one as ``dropped`` (reported too). Commands
that race a close (appended after the worker's last look at the queue) are caught by whoever comes
last, the producer or the closer, and failed.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sys
import threading
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .clock import Clock, monotonic
from .errors import InvalidRequest, QueueFull, SevenSegmentsError, ServiceUnavailable
from .protocol import MAX_COMMAND_BYTES, PATH_BULK, PATH_CUSTOMERS, PATH_EVENTS, RESULT_ERROR, RESULT_OK
from .serialization import BulkCommandEncoder, Command
from .transport import Backoff, Transport, call_with_retries

__all__ = ["ErrorCallback", "WorkerSettings", "BufferedWorker", "close_all_at_exit"]

logger = logging.getLogger(__name__)

#: ``on_error(error, commands)``; each command is ``{"name": path, "data": {...}}``.
ErrorCallback = Callable[[SevenSegmentsError, List[Dict[str, Any]]], None]

#: Memory a small command takes while it waits, not yet encoded, in the incoming deque (a tuple
#: and its properties dict: about 300 bytes measured with tracemalloc).
RAW_COMMAND_COST = 320
#: A waiting command is taken to use ``RAW_BASE + 2 * (JSON size of its properties)`` bytes; those
#: that exceed ``RAW_COMMAND_COST`` by more than ``LARGE_EXTRA`` have the excess accounted exactly.
RAW_BASE = 200
LARGE_EXTRA = 256
#: How many dropped commands are kept for ``on_error`` between two reports (the count is exact).
MAX_KEPT_DROPS = 10_000
#: A drop warning is logged at most this often (seconds).
DROP_WARNING_INTERVAL = 10.0
#: How long ``close()`` waits past its deadline for a worker that is finishing an answer.
CLOSE_GRACE = 0.25
#: When delivering on a caller's thread (no worker thread at interpreter exit), waits are this short.
INLINE_POLL = 0.05
#: Exponential backoff of the worker: first retry after about this, at most this long apart.
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 30.0
_IDLE = 1 << 62

#: Bytes of a bulk command that are not its ``data``: ``{"name":"<path>","data":`` and ``}``.
_ENVELOPE = {path: len('{"name":"' + path + '","data":}') for path in (PATH_EVENTS, PATH_CUSTOMERS)}
_BULK_HEAD = b'{"commands":['
_BULK_TAIL = b"]}"

#: One lock per process for noticing a fork without hooks (a lock inherited from the parent could be
#: held by a thread that does not exist in the child; ``dict.setdefault`` is atomic).
_fork_locks: Dict[int, threading.Lock] = {}


def _fork_lock() -> threading.Lock:
    return _fork_locks.setdefault(os.getpid(), threading.Lock())


@dataclass(frozen=True)
class WorkerSettings:
    """The tuning of a buffered client (validated by the client, documented there)."""

    batch_size: int
    max_batch_bytes: int
    flush_interval: float
    max_queue_size: int
    max_queue_bytes: int
    retry_deadline: float
    shutdown_timeout: float
    timeout: float
    on_error: Optional[ErrorCallback]


class _FlushRequest:
    """A ``flush()`` waiting, in the queue, for the commands before it to settle."""

    __slots__ = ("done", "upto", "drops", "delivered_all")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.upto = -1  # the sequence number of the last command queued before it
        self.drops = 0  # commands dropped before it
        self.delivered_all = True


_Entry = Tuple[int, bytes]  # (sequence number, the command's JSON as it goes into a bulk body)
_Seqs = Sequence[int]  # sequence numbers of a batch: a range for fresh commands, a list when retried ones lead


class BufferedWorker:
    """The queue and background sender of one buffered client."""

    def __init__(self, token: str, transport: Transport, settings: WorkerSettings, clock: Clock = monotonic) -> None:
        self._token = token
        self._transport = transport
        self._settings = settings
        self._clock = clock
        self._backoff = Backoff(BACKOFF_INITIAL, BACKOFF_MAX)
        self._encoder = BulkCommandEncoder(token)
        self._reset_state()
        _live_workers.add(self)

    # ----------------------------------------------------------------------------------------
    # State, and starting over in a forked child

    def _reset_state(self) -> None:
        self._lock = threading.Lock()  # start, close, flush bookkeeping, drops: never held during I/O
        self._incoming: Deque[Any] = deque()  # Command tuples and _FlushRequest objects
        self._wakeup = threading.Event()
        self._wake_at = 1  # a producer wakes the worker when len(incoming) reaches this
        self._started = False
        self._thread: Optional[threading.Thread] = None
        self._inline = False  # delivering on a caller's thread (no worker thread could start)
        self._closing = False
        self._stopped = False  # the worker will not look at the queue again
        self._abandoned = False  # the closer gave up on a worker stuck past the deadline
        self._shutdown_at = math.inf
        self._close_timeout = 0.0
        # Encoded commands waiting to be sent, oldest first: ``_retry`` (sent before, sequence numbers
        # kept with them) and then ``_pending`` (never sent; the i-th has number ``_pending_head + i``,
        # which saves a tuple and an int per waiting command).
        self._retry: Deque[_Entry] = deque()
        self._pending: Deque[bytes] = deque()
        self._pending_head = 1
        self._pending_bytes = 0  # of both
        self._large_raw_bytes = 0
        # The batch being sent: seq -> payload of its commands whose outcome is not counted yet. The
        # worker takes entries out (under the lock) as it counts them; a closer that gives up takes
        # what is left, so nothing is counted twice.
        self._in_flight: Dict[int, bytes] = {}
        self._oldest_at = 0.0
        self._seq = 0
        self._flushes: List[_FlushRequest] = []
        self._flushes_queued = 0
        self._reported_upto = 0  # the last flush whose result reached its caller covered up to here
        self._reported_drops = 0
        self._last_failed_seq = 0
        self._retry_since: Dict[int, float] = {}
        self._retry_rounds = 0
        self._drops: List[Command] = []
        self._drops_not_kept = 0
        self._drop_warning_at = -math.inf
        self._drops_unwarned = 0
        self._last_close_error = ""
        self._close_reported = False
        self._final_count_taken = False  # the worker's _abandon or the closer counts what is left, not both
        # Counters. The worker writes these (the closer too, under the lock, once the worker is done) ...
        self._taken = 0
        self._sent = 0
        self._retried = 0
        self._failed = 0
        self._batches = 0
        self._failed_at_close = 0
        # ... and producers this one, under the lock.
        self._dropped = 0
        self._pid = os.getpid()  # last: a producer that sees our pid sees the fresh state

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            with _fork_lock():
                if self._pid != os.getpid():
                    self.after_fork()

    def after_fork(self) -> None:
        """Start over in a forked child: nothing of the parent's queue, thread, locks or sockets."""
        self._reset_state()
        self._transport.renew_after_fork()

    # ----------------------------------------------------------------------------------------
    # The caller's side

    def submit(self, command: Command, size: int = 0) -> None:
        """Queue ``command`` (``size``: the JSON size of its properties) without blocking; drop it
        (counted, reported) when the queue is full or closed."""
        if self._pid != os.getpid():
            self._check_fork()
        incoming = self._incoming
        extra = RAW_BASE + 2 * size - RAW_COMMAND_COST  # its memory beyond RAW_COMMAND_COST
        settings = self._settings
        if (
            self._closing  # closed, e.g. at interpreter exit behind the client's back: counted, not kept
            or len(incoming) + len(self._pending) + len(self._retry) + len(self._in_flight) >= settings.max_queue_size
            or self._pending_bytes + len(incoming) * RAW_COMMAND_COST + self._large_raw_bytes + extra
            > settings.max_queue_bytes
        ):
            self._drop(command)
            return
        if extra > LARGE_EXTRA:
            with self._lock:
                self._large_raw_bytes += extra
            command = command + (extra,)  # type: ignore[assignment]  # taken back by _take_incoming
        incoming.append(command)
        if self._stopped:  # lost a race with close(): the worker will not see it
            self._settle_after_stop()
        elif not self._started:
            self._start()
        elif len(incoming) >= self._wake_at and not self._wakeup.is_set():
            self._wakeup.set()

    def _drop(self, command: Command) -> None:
        with self._lock:
            self._dropped += 1
            if len(self._drops) < MAX_KEPT_DROPS:
                self._drops.append(command)
            else:
                self._drops_not_kept += 1
        if self._stopped:  # no worker will report it: do it here
            self._report_drops()
            self._warn_drops("the client is closed")
        else:
            self._wakeup.set()

    def _start(self) -> None:
        with self._lock:
            if self._started or self._closing:
                return
            self._started = True
            thread = threading.Thread(target=self._run, name="seven-segments-worker", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                # The interpreter is shutting down (Python 3.12+ starts no thread then): flush()
                # and close() will deliver on the caller's thread instead.
                logger.debug("cannot start the worker thread; delivering on the closing thread")
                return
            self._thread = thread
        _close_at_multiprocessing_exit()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every command queued before this call settled; True when all were delivered.

        "All" counts every command since the last flush whose result reached its caller: a flush
        that timed out does not hide a failure that came later.
        """
        self._check_fork()
        if self._closing:
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                remaining = max(0.0, self._shutdown_at - self._clock()) + CLOSE_GRACE
                thread.join(remaining if timeout is None else min(timeout, remaining))
                if thread.is_alive():
                    return False
            with self._lock:
                return (
                    not self._waiting
                    and self._last_failed_seq <= self._reported_upto
                    and self._dropped <= self._reported_drops
                    and self._failed == self._failed_at_close
                )
        if self._thread is not None and self._thread is threading.current_thread():
            logger.warning("seven_segments: flush() from on_error cannot wait for the worker it runs on")
            return False
        request = _FlushRequest()
        with self._lock:
            self._flushes_queued += 1
        self._incoming.append(request)
        if self._stopped:
            self._settle_after_stop()
        self._wakeup.set()
        if not self._started:
            self._start()
        if self._thread is None:
            deadline = math.inf if timeout is None else self._clock() + timeout
            self._run_inline(until=lambda: request.done.is_set() or self._clock() >= deadline)
            done = request.done.is_set()
        else:
            done = request.done.wait(timeout)
        if not done:
            return False
        with self._lock:
            self._reported_upto = max(self._reported_upto, request.upto)
            self._reported_drops = max(self._reported_drops, request.drops)
        return request.delivered_all

    def begin_close(self, timeout: Optional[float] = None) -> None:
        """Stop taking commands and tell the worker to deliver what it has within the timeout."""
        self._check_fork()
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._failed_at_close = self._failed
            self._close_timeout = self._settings.shutdown_timeout if timeout is None else max(0.0, timeout)
            self._shutdown_at = self._clock() + self._close_timeout
        self._wakeup.set()

    def finish_close(self) -> None:
        """Wait (bounded by the close deadline) for the worker to finish; report what was lost."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, self._shutdown_at - self._clock()) + CLOSE_GRACE)
            if thread.is_alive():
                self._abandon_from_closer()
        elif thread is None and not self._stopped:
            self._run_inline(until=lambda: self._stopped)
        if self._stopped or self._abandoned:
            self._settle_after_stop()
        self._transport.close()

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued (within ``timeout``, default ``shutdown_timeout``) and stop."""
        self.begin_close(timeout)
        self.finish_close()

    @property
    def closing(self) -> bool:
        """True once ``close()`` has begun."""
        return self._closing

    def stats(self) -> Dict[str, int]:
        """Counts: queued, sent, retried, failed, dropped, batches, and pending (not yet settled)."""
        self._check_fork()
        waiting = len(self._incoming) - self._flushes_queued
        queued = self._taken + max(0, waiting)
        return {
            "queued": queued,
            "sent": self._sent,
            "retried": self._retried,
            "failed": self._failed,
            "dropped": self._dropped,
            "batches": self._batches,
            "pending": max(0, queued - self._sent - self._failed),
        }

    # ----------------------------------------------------------------------------------------
    # The worker's side

    def _run(self) -> None:
        try:
            self._loop(until=lambda: False)
        finally:
            if not self._stopped:  # died (a BaseException from somewhere): let the next call restart it
                logger.error("seven_segments worker: stopped unexpectedly; it will restart on the next call")
                with self._lock:
                    self._thread = None
                    self._started = False

    def _run_inline(self, until: Callable[[], bool]) -> None:
        """Deliver on the caller's thread (no worker thread at interpreter exit), polling ``until``."""
        self._inline = True
        try:
            self._loop(until)
        finally:
            self._inline = False

    def _loop(self, until: Callable[[], bool]) -> None:
        """Take, send and settle until closed and done, or until ``until()`` says stop."""
        while not until():
            try:
                self._take_incoming()
                self._report_drops()
                if self._abandoned:
                    return
                if self._closing and self._clock() >= self._shutdown_at and (self._waiting or self._incoming):
                    self._abandon()
                    return
                if self._should_send():
                    self._send_batch()
                    self._settle_flushes()  # a flush waits for its own commands, not for later ones
                    continue
                self._settle_flushes()
                if self._closing:
                    self._stop()
                    return
                self._sleep(self._time_to_send())
            except Exception:  # a bug of ours must not kill delivery for good
                logger.exception("seven_segments worker: unexpected error; carrying on")

    def _take_incoming(self) -> None:
        """Give queued commands their id and encode them; place flush requests after them."""
        incoming = self._incoming
        if not incoming or self._abandoned:
            return
        pending = self._pending
        encode = self._encoder.encode
        was_empty = not self._waiting
        while True:
            try:
                item = incoming.popleft()
            except IndexError:
                break
            if type(item) is not tuple:
                self._place_flush(item)
                continue
            if len(item) > 6:  # a large command: give back its accounted memory
                with self._lock:
                    self._large_raw_bytes -= item[6]
            self._seq += 1
            self._taken += 1
            try:
                payload = encode(item)
            except Exception as error:  # checked at the call, so not expected: fail it alone
                self._fail_commands([item], InvalidRequest(f"{item[0]}: the command cannot be encoded: {error}"))
                continue
            size = len(payload) - _ENVELOPE[item[0]]
            if size > MAX_COMMAND_BYTES:
                self._fail_entries(
                    [self._seq],
                    [payload],
                    InvalidRequest(f"{item[0]}: the command takes {size} bytes as JSON, more than {MAX_COMMAND_BYTES}"),
                )
                continue
            if not pending:
                self._pending_head = self._seq
            elif self._pending_head + len(pending) != self._seq:  # a failed one left a gap: keep numbers exact
                self._retry.extend(zip(range(self._pending_head, self._seq), pending))
                pending.clear()
                self._pending_head = self._seq
            pending.append(payload)
            self._pending_bytes += len(payload)
        if was_empty and self._waiting:
            self._oldest_at = self._clock()
        if self._flushes:
            self._settle_flushes()  # one placed behind commands that have all settled already

    @property
    def _waiting(self) -> bool:
        """Encoded commands are waiting to be sent."""
        return bool(self._pending or self._retry)

    def _first_waiting_seq(self) -> float:
        if self._retry:
            return self._retry[0][0]
        return self._pending_head if self._pending else math.inf

    def _place_flush(self, request: _FlushRequest) -> None:
        request.upto = self._seq
        with self._lock:
            self._flushes_queued -= 1
            request.drops = self._dropped
            if self._last_failed_seq > self._reported_upto or self._dropped > self._reported_drops:
                request.delivered_all = False  # failed or dropped since the last flush its caller saw
        self._flushes.append(request)

    def _should_send(self) -> bool:
        if not self._waiting:
            return False
        settings = self._settings
        return (
            self._closing
            or len(self._pending) + len(self._retry) >= settings.batch_size
            or self._pending_bytes >= settings.max_batch_bytes
            or any(request.upto >= self._first_waiting_seq() for request in self._flushes)
            or self._clock() - self._oldest_at >= settings.flush_interval
        )

    def _time_to_send(self) -> Optional[float]:
        if not self._waiting:
            return None
        return max(0.0, self._oldest_at + self._settings.flush_interval - self._clock())

    def _sleep(self, timeout: Optional[float]) -> None:
        """Wait for producers (a batch's worth, or the first command), a flush, a close or the timer."""
        if self._inline:
            timeout = INLINE_POLL if timeout is None else min(timeout, INLINE_POLL)
        waiting = len(self._pending) + len(self._retry)
        self._wake_at = max(1, self._settings.batch_size - waiting) if waiting else 1
        if len(self._incoming) < self._wake_at and not self._drops:
            self._wakeup.wait(timeout)
        self._wakeup.clear()
        self._wake_at = _IDLE  # busy: producers need not wake us

    def _pause(self, seconds: float) -> None:
        """Sleep between retries, still taking (and so bounding) incoming commands; a close ends it
        early when its deadline comes first."""
        end = self._clock() + seconds
        while True:
            try:
                self._take_incoming()
                self._report_drops()
            except Exception:  # never let a bug here fail the batch that is waiting to be retried
                logger.exception("seven_segments worker: unexpected error while waiting to retry")
            remaining = min(end, self._shutdown_at) - self._clock()
            if remaining <= 0 or self._abandoned:
                return
            self._wake_at = self._settings.batch_size
            if len(self._incoming) < self._wake_at and not self._drops:
                self._wakeup.wait(min(remaining, INLINE_POLL) if self._inline else remaining)
            self._wakeup.clear()
            self._wake_at = _IDLE

    def _send_batch(self) -> None:
        settings = self._settings
        pending, retry = self._pending, self._retry
        limit = settings.batch_size
        seqs: _Seqs
        if retry:  # commands sent before go first: they are the oldest
            again = [retry.popleft() for _ in range(min(limit, len(retry)))]
            fresh_count = min(limit - len(again), len(pending))
            seqs = [seq for seq, _ in again] + list(range(self._pending_head, self._pending_head + fresh_count))
            payloads = [payload for _, payload in again]
        else:
            fresh_count = min(limit, len(pending))
            seqs = range(self._pending_head, self._pending_head + fresh_count)
            payloads = []
        popleft = pending.popleft
        payloads += [popleft() for _ in range(fresh_count)]
        self._pending_head += fresh_count
        size = sum([len(payload) for payload in payloads]) + len(payloads)
        if size > settings.max_batch_bytes and len(payloads) > 1:  # rare: large commands
            keep = len(payloads)
            while size > settings.max_batch_bytes and keep > 1:
                keep -= 1
                size -= len(payloads[keep]) + 1
            retry.extendleft(reversed(list(zip(seqs[keep:], payloads[keep:]))))
            seqs, payloads = seqs[:keep], payloads[:keep]
        self._pending_bytes -= size - len(payloads)
        started = self._clock()
        with self._lock:
            self._in_flight = dict(zip(seqs, payloads))
        try:
            again = self._deliver(seqs, payloads, started)
        except Exception as error:  # a bug of ours: the batch is reported, never silently lost
            logger.exception("seven_segments worker: unexpected error while sending")
            self._fail_entries(seqs, payloads, SevenSegmentsError(f"internal error while sending: {type(error).__name__}"))
            again = []
        with self._lock:
            if self._abandoned:  # the closer counted what was still in flight, `again` included
                return
            self._in_flight = {}
            if again:
                retry.extendleft(reversed(again))
        if again:
            self._pending_bytes += sum(len(payload) for _, payload in again)
            self._retried += len(again)
            # Back off when a batch made no progress at all; otherwise keep the queue moving.
            self._retry_rounds = self._retry_rounds + 1 if len(again) == len(payloads) else 1
            self._settle_flushes()
            self._pause(self._backoff.for_attempt(self._retry_rounds))
        else:
            self._retry_rounds = 0
        if self._waiting:
            self._oldest_at = min(started, self._clock())

    def _deliver(self, seqs: _Seqs, payloads: List[bytes], started: float) -> List[_Entry]:
        """Send one bulk request (retrying whole-request failures); return the entries to send again."""
        batch = payloads
        body = _BULK_HEAD + b",".join(payloads) + _BULK_TAIL
        settings = self._settings

        def count_retry(error: Exception, delay: float) -> None:
            self._retried += len(batch)

        try:
            answer = call_with_retries(
                lambda timeout: self._transport.post(PATH_BULK, body, timeout=timeout),
                what=PATH_BULK,
                deadline=lambda: min(started + settings.retry_deadline, self._shutdown_at),
                timeout=settings.timeout,
                backoff=self._backoff,
                sleep=self._pause,
                clock=self._clock,
                on_retry=count_retry,
                cut_attempts_at_deadline=True,
            )
        except InvalidRequest as error:
            if error.status == 413 and len(batch) > 1 and not self._abandoned:
                half = len(batch) // 2
                front = self._deliver(seqs[:half], payloads[:half], started)
                return front + self._deliver(seqs[half:], payloads[half:], started)
            self._fail_entries(seqs, payloads, error)
            return []
        except SevenSegmentsError as error:
            self._fail_entries(seqs, payloads, error)
            return []
        if self._abandoned:
            return []
        self._batches += 1
        results = answer.get("results")
        if not isinstance(results, list):
            results = []
        if len(results) == len(batch) and [
            result.get("status") if type(result) is dict else None for result in results
        ].count(RESULT_OK) == len(batch):
            if not self._claim(seqs):  # the usual answer: every command ok
                return []
            self._sent += len(batch)
            if self._retry_since:
                for seq in seqs:
                    self._retry_since.pop(seq, None)
            return []
        retry: List[_Entry] = []
        now = self._clock()
        for index, entry in enumerate(zip(seqs, payloads)):
            result = results[index] if index < len(results) else None
            status = result.get("status") if isinstance(result, dict) else None
            if status == RESULT_OK:
                if not self._claim((entry[0],)):
                    return []
                self._sent += 1
                if self._retry_since:
                    self._retry_since.pop(entry[0], None)
            elif status == RESULT_ERROR:
                errors = result.get("errors") if isinstance(result, dict) else None
                self._fail_entries(
                    [entry[0]],
                    [entry[1]],
                    InvalidRequest(
                        f"{PATH_BULK}: the command was refused",
                        status=200,
                        errors=[self._transport.scrub(str(e)) for e in errors] if isinstance(errors, list) else (),
                    ),
                )
            else:  # "retry", or a missing or unknown result: send it again
                first = self._retry_since.setdefault(entry[0], now)
                if now - first >= settings.retry_deadline or now >= self._shutdown_at:
                    self._fail_entries(
                        [entry[0]],
                        [entry[1]],
                        ServiceUnavailable(f"{PATH_BULK}: the server kept answering 'retry' for the command"),
                    )
                else:
                    retry.append(entry)
        return retry

    # ----------------------------------------------------------------------------------------
    # Settling, reporting

    def _settle_flushes(self) -> None:
        if not self._flushes:
            return
        first_unsettled = self._first_waiting_seq()
        in_flight = self._in_flight
        if in_flight:  # being sent: not settled either
            first_unsettled = min(first_unsettled, min(in_flight))
        waiting = []
        for request in self._flushes:
            if request.upto < first_unsettled:
                request.done.set()
            else:
                waiting.append(request)
        self._flushes = waiting

    def _claim(self, seqs: _Seqs) -> bool:
        """Take in-flight commands out for counting; False when a closer that gave up counted them."""
        with self._lock:
            if self._abandoned:
                return False
            in_flight = self._in_flight
            if in_flight:
                if len(seqs) == len(in_flight):
                    in_flight.clear()
                else:
                    for seq in seqs:
                        in_flight.pop(seq, None)
            return True

    def _fail_entries(self, seqs: _Seqs, payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Count encoded commands as failed for good and report them (before any flush waiting on
        them returns)."""
        if payloads and self._claim(seqs):
            self._count_failures(seqs, error)
            self._call_on_error(error, lambda: [json.loads(payload) for payload in payloads])

    def _fail_commands(self, commands: Sequence[Command], error: SevenSegmentsError) -> None:
        """The same for commands taken but never encoded (their sequence number is the current one)."""
        self._count_failures([self._seq], error)
        self._call_on_error(error, lambda: [BulkCommandEncoder.as_dict(command) for command in commands])

    def _count_failures(self, seqs: _Seqs, error: SevenSegmentsError) -> None:
        self._failed += len(seqs)
        first, last = min(seqs), max(seqs)
        with self._lock:
            self._last_failed_seq = max(self._last_failed_seq, last)
        for request in self._flushes:
            if request.upto >= first:
                request.delivered_all = False
        if self._retry_since:
            for seq in seqs:
                self._retry_since.pop(seq, None)
        if self._closing:
            self._last_close_error = str(error)  # one warning at the end of the close says it all
        else:
            logger.warning("seven_segments: %d commands could not be delivered: %s", len(seqs), error)

    def _call_on_error(self, error: SevenSegmentsError, commands: Callable[[], List[Dict[str, Any]]]) -> None:
        callback = self._settings.on_error
        if callback is None:
            return
        try:
            callback(error, commands())
        except BaseException:  # even SystemExit: the worker must live on
            logger.exception("seven_segments: the on_error callback raised")

    def _report_drops(self) -> None:
        if not self._drops and not self._drops_not_kept:
            return
        with self._lock:
            drops, self._drops = self._drops, []
            not_kept, self._drops_not_kept = self._drops_not_kept, 0
        count = len(drops) + not_kept
        message = f"the queue is full ({self._settings.max_queue_size} commands or {self._settings.max_queue_bytes} bytes)"
        if self._closing:
            message = "the client is closed"
        if not_kept:
            message += f"; {not_kept} more dropped commands were counted but not kept"
        error = QueueFull(f"{count} commands dropped: {message}")
        self._drops_unwarned += count
        now = self._clock()
        if now - self._drop_warning_at >= DROP_WARNING_INTERVAL:
            self._warn_drops(message)
            self._drop_warning_at = now
        self._call_on_error(error, lambda: [BulkCommandEncoder.as_dict(command) for command in drops])

    def _warn_drops(self, reason: str) -> None:
        if self._drops_unwarned:
            logger.warning("seven_segments: dropped %d commands: %s", self._drops_unwarned, reason)
            self._drops_unwarned = 0

    def _take_final_count(self) -> bool:
        with self._lock:
            taken, self._final_count_taken = self._final_count_taken, True
            return not taken

    def _abandon(self) -> None:
        """The close deadline passed: fail what is left, on the worker's thread."""
        if not self._take_final_count():
            return  # the closer gave up on us and counted it
        self._take_incoming()
        seqs, payloads = self._take_waiting()
        self._fail_entries(
            seqs, payloads, ServiceUnavailable(f"not delivered within the close deadline ({self._close_timeout:g} s)")
        )
        self._settle_flushes()
        self._stop()

    def _take_waiting(self) -> Tuple[List[int], List[bytes]]:
        """Empty both waiting queues: their sequence numbers and payloads, oldest first."""
        seqs = [seq for seq, _ in self._retry] + list(range(self._pending_head, self._pending_head + len(self._pending)))
        payloads = [payload for _, payload in self._retry] + list(self._pending)
        self._retry.clear()
        self._pending.clear()
        self._pending_bytes = 0
        return seqs, payloads

    def _stop(self) -> None:
        """The worker's last act: from now on, whoever appends to the queue settles it."""
        self._stopped = True
        self._settle_after_stop()
        self._report_drops()
        self._warn_drops("the client is closed")
        if not self._abandoned:
            self._report_close_losses()

    def _abandon_from_closer(self) -> None:
        """The worker is still busy past the deadline: count what it holds as lost, from the
        closer's thread (the worker, when it returns, counts nothing more)."""
        if not self._take_final_count():
            return  # the worker is counting it itself, in _abandon
        with self._lock:
            self._abandoned = True
            self._stopped = True
            left = list(self._in_flight.values())
            self._in_flight = {}
            late = self._drain_incoming_locked()  # queued before the close, never taken: lost alike
        left += self._take_waiting()[1]
        self._failed += len(left) + len(late)
        error = ServiceUnavailable(
            f"not confirmed within the close deadline ({self._close_timeout:g} s); the last request may have been applied"
        )
        self._last_close_error = str(error)
        if left or late:
            self._call_on_error(
                error,
                lambda: [json.loads(payload) for payload in left]
                + [BulkCommandEncoder.as_dict(command) for command in late],
            )
        self._settle_after_stop()
        self._report_close_losses()

    def _drain_incoming_locked(self) -> List[Command]:
        """Empty the incoming queue once the worker is done with it (the lock is held): its commands
        (counted as taken) and, moved to the waiting list, its flush requests."""
        commands: List[Command] = []
        while True:
            try:
                item = self._incoming.popleft()
            except IndexError:
                break
            if type(item) is tuple:
                commands.append(item)
            else:
                self._flushes_queued -= 1
                self._flushes.append(item)
        self._taken += len(commands)
        return commands

    def _settle_after_stop(self) -> None:
        """Fail the commands, and answer the flushes, that reached the queue after the worker's last look."""
        with self._lock:
            commands = self._drain_incoming_locked()
            self._failed += len(commands)
            flushes, self._flushes = self._flushes, []
        lost = bool(commands) or self._failed > self._failed_at_close
        for request in flushes:
            request.delivered_all = request.delivered_all and not lost
            request.done.set()
        if commands:
            error = ServiceUnavailable(f"{len(commands)} commands arrived after the client was closed")
            logger.warning("seven_segments: %s", error)
            self._call_on_error(error, lambda: [BulkCommandEncoder.as_dict(command) for command in commands])

    def _report_close_losses(self) -> None:
        with self._lock:
            if self._close_reported:
                return
            self._close_reported = True
        lost = self._failed - self._failed_at_close
        if lost:
            logger.warning("seven_segments: %d commands were lost at close: %s", lost, self._last_close_error)


# --------------------------------------------------------------------------------------------
# Every live worker: closed at interpreter exit, started over in a forked child.

_live_workers: "weakref.WeakSet[BufferedWorker]" = weakref.WeakSet()


def close_all_at_exit() -> None:
    """Close every live buffered worker, all at once, each within its ``shutdown_timeout``."""
    workers = [worker for worker in list(_live_workers) if worker._started or worker._incoming]
    for worker in workers:
        worker.begin_close()
    for worker in workers:
        try:
            worker.finish_close()
        except Exception:
            logger.exception("seven_segments: closing a client at exit failed")


_multiprocessing_exit_pid = 0


def _close_at_multiprocessing_exit() -> None:
    """A ``multiprocessing`` child ends with ``os._exit()``, skipping ``atexit``: close there too.

    Registered (once per process) when a worker starts, after the child cleared the finalizers it
    inherited; ``close_all_at_exit`` is idempotent, so running it from both hooks is harmless.
    """
    global _multiprocessing_exit_pid
    pid = os.getpid()
    util = sys.modules.get("multiprocessing.util")
    if util is None or _multiprocessing_exit_pid == pid:
        return
    _multiprocessing_exit_pid = pid
    util.Finalize(None, close_all_at_exit, exitpriority=100)


def _after_fork_in_child() -> None:
    for worker in list(_live_workers):
        worker.after_fork()


atexit.register(close_all_at_exit)
if hasattr(os, "register_at_fork"):
    # Looked up at fork time, so that a test can stand in for a server that skips the hooks (uwsgi).
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child())

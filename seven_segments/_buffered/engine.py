"""The engine of one buffered client: its core (all mutable state), the pump thread, and the facade.

The caller's side (``submit``) makes the command the bytes it will have inside a ``bulk`` body
(its properties were written as JSON by the same pass that checked them), then a few attribute
reads, a ``deque.append`` and, now and then, an ``Event.set``: no I/O, no lock (except for drops).
Nothing is encoded again after the call: the queue, batches, retries and the spool carry those
bytes. Everything else runs on the pump thread (``pump.py``) and on sender threads (``sender.py``).

Threads of one client: one pump thread while it has work (``thread.py``; it ends after ``PUMP_IDLE_SECONDS`` with
nothing to do, and the next call starts it again), and up to ``max_in_flight`` sender threads, each
ending after ``sender.IDLE_SECONDS`` idle; all are daemons. A closed or garbage-collected client
keeps none.

A fork replaces, never repairs: in a forked child, every engine gets a fresh :class:`Core` at its
first use (a process-id check on every call, which also covers uwsgi, whose forks may skip
``os.register_at_fork`` hooks); what the parent had queued stays the parent's. Made at first use
rather than in an at-fork hook, the new core's locks and events are gevent's when the child patches
after the fork (gunicorn ``-k gevent --preload``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol, Tuple

from ..clock import Clock, monotonic
from ..health import Figures
from ..process_id import current_pid
from ..serialization import BulkCommandEncoder, Command
from ..transport import TransientError, Transport
from ..watchdog import WATCHDOG
from .batching import Batch
from .lifecycle import Lifecycle, Phase, arm_exit_hooks, fork_lock, started, stopped
from .limits import Limits
from .pump import Pump
from ..types import ErrorCallback
from .reporting import Reporter
from .sender import Outcome, SenderPool, attempt_batch
from .settlement import CLOSED, COMMAND_COST, FULL, FlushTicket, Settlement
from .store import SpoolStore, Store
from .thread import PumpThread

if TYPE_CHECKING:
    from ..spool import Spool

__all__ = ["BufferedEngine", "Core"]

logger = logging.getLogger("seven_segments")

#: The size of a typical command, to bound how many dropped ones are kept for ``on_error``.
TYPICAL_COMMAND_BYTES = 320
#: How long ``close()`` waits past its deadline for a pump that is finishing (reporting, answering).
CLOSE_GRACE = 0.25
#: How long, past the close deadline, ``on_error`` may take to receive what a close gave up on.
REPORT_GRACE = 5.0
#: Dropped commands kept for ``on_error`` until the pump reports them: this share of the queue's bytes.
DROP_KEEP_SHARE = 4
#: The shortest attempt made on a flushing thread whose flush has (almost) no time left (seconds).
MIN_INLINE_ATTEMPT = 0.05

_getpid = current_pid
_RUNNING = Phase.RUNNING
_IDLE = Phase.IDLE
_STOPPED = Phase.STOPPED


class Submit(Protocol):
    """``submit(command, pid=0)``, as :attr:`BufferedEngine.submit` takes it."""

    def __call__(self, command: Command, pid: int = 0) -> None:
        """Queue ``command``."""


class Core:
    """All mutable state of one buffered client in one process."""

    def __init__(
        self,
        token: str,
        transport: Transport,
        limits: Limits,
        on_error: Optional[ErrorCallback],
        clock: Clock,
        spool: "Optional[Spool]",
        elsewhere: Callable[[Command], None],
    ) -> None:
        self.pid = os.getpid()
        #: Where a command submitted in another process (a forked child) goes: its own core.
        self._elsewhere = elsewhere
        self._max_queue_size = limits.max_queue_size  # read by every call: one attribute, not two
        self._max_queue_bytes = limits.max_queue_bytes
        self._encode = BulkCommandEncoder(token).encode  # callers encode on their threads: one, shared
        self.transport = transport
        #: Queued commands (one kind per store: bytes, or ``Spooled``) and FlushTickets, in call order.
        self.incoming: Deque[Any] = deque()
        self.lifecycle = Lifecycle()
        keep = 0 if on_error is None else max(1000, limits.max_queue_bytes // DROP_KEEP_SHARE // TYPICAL_COMMAND_BYTES)
        self.settlement = Settlement(limits, Reporter(on_error, clock), self.lifecycle, clock, keep_drops=keep)
        #: Commands callers queued and their bytes, written by callers (one lock-free ``+=`` each: a switch
        #: inside one, possible on 3.8/3.9 or without a GIL, loosens the bounds by a command and loses none).
        self.arrived = 0
        self.arrived_bytes = 0
        self.store: Store = (
            Store(self.settlement)
            if spool is None
            else SpoolStore(self.settlement, spool, limits, token, transport.add_secret)
        )
        self.senders = SenderPool("seven-segments-sender", max_threads=limits.max_in_flight)
        self.pump = Pump(
            limits=limits,
            incoming=self.incoming,
            lifecycle=self.lifecycle,
            settlement=self.settlement,
            launch=self._launch,
            clock=clock,
            scrub=transport.scrub,
            store=self.store,
        )
        self.pump_thread = PumpThread(
            self.pump, self.lifecycle, clock, lambda: started(self), self._stop, transport.scrub
        )
        self.pump.wake = self.pump_thread.wakeup.set

    @property
    def clock(self) -> Clock:
        """The engine's clock (monotonic seconds)."""
        return self.pump.clock

    # The caller's side ------------------------------------------------------------------------

    def submit(self, command: Command, pid: int = 0) -> None:
        """Make ``command`` (checked) its bytes and queue them without blocking, or drop it.

        ``pid``: the process id the caller just read (0: read it here); a forked child's command goes to
        the child's core. A command costs its JSON's bytes and ``COMMAND_COST`` against
        ``max_queue_bytes``, exactly, whether the pump holds it or it still waits in ``incoming``."""
        if (pid or _getpid()) != self.pid:
            self._elsewhere(command)
            return
        payload = self._encode(command)
        incoming = self.incoming
        budget = self.settlement.budget
        lifecycle = self.lifecycle
        phase = lifecycle.phase
        if phase is not _RUNNING and phase is not _IDLE:
            self._drop(payload, CLOSED)
            return
        taken_bytes = budget.taken_bytes  # before held_bytes (see Budget)
        waiting = self.arrived - budget.taken  # what the pump has not taken yet
        held = budget.held
        size = len(payload)
        if (
            waiting + held >= self._max_queue_size
            or budget.held_bytes + (held + waiting + 1) * COMMAND_COST + self.arrived_bytes - taken_bytes + size
            > self._max_queue_bytes
        ):
            self._drop(payload, FULL)
            return
        admit = self.store.admit
        # With a spool, written down first (the facade checked: this is the core's process).
        item = payload if admit is None else admit(payload, self.pid)
        self.arrived_bytes += size  # before the append: the pump never takes what is not counted yet
        self.arrived += 1
        incoming.append(item)
        phase = lifecycle.phase
        if phase is _RUNNING:
            pump_thread = self.pump_thread
            if waiting + 1 >= pump_thread.wake_at and not pump_thread.wakeup.is_set():
                pump_thread.wakeup.set()
        elif phase is _IDLE:
            self.pump_thread.start()
        elif phase is _STOPPED:  # lost a race with close(): the pump will not see it
            self.fail_late()
        else:
            self.pump_thread.wakeup.set()

    def _drop(self, payload: bytes, reason: str) -> None:
        first, overflow = self.settlement.dropped(payload, reason)
        if overflow is not None:  # drops outpace the pump: this caller reports them, so that none is lost
            chunks = self.settlement.report_dropped(reason, overflow, 0)
            self.settlement.reporter.drain(drop_chunks=chunks, failures=False)
        if self.lifecycle.phase is _STOPPED:  # no pump will report it: do it here
            self.fail_late()
        elif first:
            self.pump_thread.wakeup.set()

    def flush(self, timeout: Optional[float]) -> bool:
        """Wait until every command queued before this call settled; True when all were delivered."""
        lifecycle = self.lifecycle
        if not lifecycle.admitting:
            return self._result_after_close(timeout)
        pump_thread = self.pump_thread
        if pump_thread.current:
            logger.warning("seven_segments: flush() from on_error cannot wait for the worker it runs on")
            return False
        ticket = FlushTicket()
        self.settlement.flushes.queued(ticket)
        self.incoming.append(ticket)
        pump_thread.wakeup.set()
        phase = lifecycle.phase
        if phase is _IDLE:
            pump_thread.start()
        elif phase is _STOPPED:
            self.fail_late()
        if pump_thread.thread is None and not ticket.done.is_set():  # no pump thread could start: deliver here
            deadline = math.inf if timeout is None else self.clock() + timeout
            pump_thread.inline_until = deadline
            try:
                pump_thread.run_inline(until=lambda: ticket.done.is_set() or self.clock() >= deadline)
            finally:
                pump_thread.inline_until = math.inf
            if timeout is not None:
                timeout = max(0.0, deadline - self.clock())
        if not ticket.done.wait(timeout):
            return False
        self.settlement.flushes.seen(ticket)
        return ticket.delivered_all

    def _result_after_close(self, timeout: Optional[float]) -> bool:
        remaining = max(0.0, self.pump.closing.deadline - self.clock()) + CLOSE_GRACE
        if not self.lifecycle.stopped.wait(remaining if timeout is None else min(timeout, remaining)):
            return False
        return self.settlement.flushes.all_delivered_after_close()

    def stats(self) -> Dict[str, float]:
        """Counts (``Counts.snapshot``), memory (as ``max_queue_bytes`` counts it) and spool bytes held, oldest age."""
        stats: Dict[str, float] = dict(self.settlement.snapshot(self.arrived))
        pump = self.pump
        stats["pending_bytes"] = self.settlement.budget.queued_bytes(*self._waiting())
        stats["spool_bytes"] = self.store.bytes_held
        stats["oldest_pending_seconds"] = pump.watch.oldest_pending(self.clock())
        return stats

    def figures(self) -> Figures:
        """What ``health()`` judges (see ``seven_segments.health``)."""
        pump, budget, limits = self.pump, self.settlement.budget, self.pump.limits
        now = self.clock()
        waiting, waiting_bytes = self._waiting()
        fill = max(
            (budget.held + waiting) / limits.max_queue_size,
            budget.queued_bytes(waiting, waiting_bytes) / limits.max_queue_bytes,
        )
        return Figures(
            enabled=True,
            closed=not self.lifecycle.admitting,
            pending=pump.watch.waiting(),
            oldest_pending_seconds=pump.watch.oldest_pending(now),
            queue_fill=min(1.0, fill),
            retrying=sum(map(len, list(pump.line.retries))),
            requests_failed_in_a_row=self.settlement.progress.failed_in_a_row,
            seconds_since_drop=now - self.settlement.progress.dropped_at,
            last_error=self.settlement.progress.last_error,
            seconds_since_failure=now - self.settlement.progress.failed_at,
            requests_refused_in_a_row=self.settlement.progress.refused_in_a_row,
            last_failure=self.settlement.progress.last_failure,
            stall_warning_after=limits.stall_warning_after,
        )

    def _waiting(self) -> Tuple[int, int]:
        """The commands in ``incoming`` and their bytes (the pump's side read first: see ``Budget``)."""
        budget = self.settlement.budget
        taken, taken_bytes = budget.taken, budget.taken_bytes
        return max(0, self.arrived - taken), max(0, self.arrived_bytes - taken_bytes)

    # Life ---------------------------------------------------------------------------------------

    def begin_close(self, timeout: Optional[float] = None) -> None:
        """Stop taking commands and let the pump deliver what it holds, within ``timeout``."""
        lifecycle = self.lifecycle
        pump = self.pump
        with lifecycle.lock:
            if not lifecycle.admitting:
                return
            pump.begin_close(pump.limits.shutdown_timeout if timeout is None else max(0.0, timeout))
            had_pump = lifecycle.phase is _RUNNING
            lifecycle.move_locked(Phase.DRAINING)
        WATCHDOG.shorten(self, pump.closing.deadline)  # requests in flight end by the deadline too
        self.pump_thread.wakeup.set()
        if had_pump:
            return
        if pump.empty and not self.incoming and not self.store.has_kept:
            self._stop()
            return
        with lifecycle.lock:
            if self.pump_thread.thread is None:
                self.pump_thread.start_locked()  # else finish_close delivers on its own thread

    def finish_close(self) -> None:
        """Wait (bounded by the close deadline) for the pump to finish; give up on it if it does not.

        Past the deadline the pump may still be passing what it gave up on to ``on_error``: it gets at
        most ``REPORT_GRACE`` seconds more; what is left then is counted in a warning. The closer never
        calls ``on_error`` while the pump thread lives, so a slow one cannot hold the close.
        """
        lifecycle = self.lifecycle
        thread = self.pump_thread.thread
        if thread is not None and thread is threading.current_thread():
            return  # close() from on_error: the pump finishes the close itself
        deadline = self.pump.closing.deadline + CLOSE_GRACE
        if thread is not None and thread.is_alive():
            lifecycle.stopped.wait(max(0.0, deadline - self.clock()))
        elif lifecycle.phase is Phase.DRAINING:
            self.pump_thread.run_inline(until=lambda: lifecycle.stopped.is_set() or self.clock() >= deadline)
        report_until = self.clock() + REPORT_GRACE
        pump_thread = self.pump_thread.thread
        while not lifecycle.stopped.is_set() and pump_thread is not None and pump_thread.is_alive():
            if self.clock() >= report_until:
                break
            lifecycle.stopped.wait(0.01)  # never calls on_error itself: a slow one must not hold the close
        if lifecycle.stopped.is_set():
            if pump_thread is not None and pump_thread is not threading.current_thread():
                pump_thread.join(CLOSE_GRACE)  # its last words: late commands, releasing the connections
        else:
            self._abandon_from_closer()
        pump_thread = self.pump_thread.thread
        alive = pump_thread is not None and pump_thread.is_alive()
        self.settlement.close_report.report(until=report_until, pump_alive=alive, grace=REPORT_GRACE)

    def _stop(self) -> None:
        """The pump's last act: from now on, whoever appends to the queue settles it."""
        self.pump.report_drops()
        self.settlement.reporter.drain()
        self.pump.close_summary()  # before STOPPED: a closer waiting for it sees the summary logged
        self.lifecycle.move(_STOPPED)
        self.fail_late()
        self._release()

    def _abandon_from_closer(self) -> None:
        """The pump is still busy past the deadline (a slow on_error, or an attempt that would not end):
        the closer runs the pump's own close path (``Pump.give_up``), without calling ``on_error``. The
        pump, when it comes back, finds the engine STOPPED."""
        if not self.lifecycle.move(_STOPPED):
            return
        pump = self.pump
        if not pump.empty or self.incoming:
            logger.warning(
                "seven_segments: the worker was still busy past the close deadline (%g s; a slow on_error, or an"
                " attempt that would not end): the closer settles what it held",
                pump.closing.timeout,
            )
        pump.give_up()
        pump.close_summary()  # the pump's summary: it may never come back to say it
        self._release()

    def fail_late(self) -> None:
        """Fail commands (and answer flushes) that reached the queue after the pump's last look."""
        with self.lifecycle.late:
            self.pump.fail_late()

    def _release(self) -> None:
        self.senders.close()
        self.transport.close()
        self.store.close()
        stopped(self)

    # Sending --------------------------------------------------------------------------------------

    def _launch(self, number: int, batch: Batch, timeout: float, done: Callable[[Outcome], None]) -> None:
        transport = self.transport

        def attempt(timeout: float = timeout) -> None:
            # Whatever ends the attempt (even an exception raised into its thread), an outcome comes
            # back: a request the pump never hears of again would hold its commands for good.
            outcome: Outcome = (number, None, TransientError("the sending thread was interrupted"))
            try:
                outcome = attempt_batch(transport, self, number, batch, timeout)
            finally:
                done(outcome)

        if not self.senders.run(attempt):
            # No sender thread can start (interpreter exit, a uwsgi master): the attempt runs here,
            # within what is left of the flush that runs the pump on this thread.
            attempt(max(MIN_INLINE_ATTEMPT, min(timeout, self.pump_thread.inline_until - self.clock())))


class BufferedEngine:
    """The engine a buffered client talks to: ``submit``, ``flush``, ``close``, ``stats``."""

    def __init__(
        self,
        token: str,
        transport: Transport,
        limits: Limits,
        on_error: Optional[ErrorCallback] = None,
        clock: Clock = monotonic,
        spool: "Optional[Spool]" = None,
    ) -> None:
        self._token = token
        self._spool = spool
        self._transport = transport
        self._limits = limits
        self._on_error = on_error
        self._clock = clock
        self._holder: List[Core] = [self._new_core()]
        self._core = self._holder[0]
        #: ``submit(command, pid=0)``: queue ``command`` (checked) as its bytes, or drop it (see
        #: ``Core.submit``): the current core's own method, no call in between on the caller's path.
        self.submit: Submit = self._core.submit
        arm_exit_hooks()  # on the constructing thread: SIGTERM's handler needs the main thread
        # Dropped without close(): deliver what it holds (bounded by shutdown_timeout), keep nothing.
        finalizer = weakref.finalize(self, _close_dropped, self._holder)
        finalizer.atexit = False  # at exit, lifecycle.close_all_at_exit closes every core
        if spool is not None:
            self._core.pump_thread.start()  # deliver what processes that died left in the spool, now

    def _new_core(self) -> Core:
        engine = weakref.ref(self)  # a core never keeps its engine alive (see _close_dropped)

        def elsewhere(command: Command) -> None:
            alive = engine()
            if alive is not None:
                core = alive._current()
                core.submit(command, core.pid)  # its own pid: never handed on again

        return Core(self._token, self._transport, self._limits, self._on_error, self._clock, self._spool, elsewhere)

    def _current(self) -> Core:
        core = self._core
        if core.pid != os.getpid():
            with fork_lock():
                if self._core.pid != os.getpid():
                    self.after_fork()
            core = self._core
        return core

    def after_fork(self) -> None:
        """Start over in a forked child: nothing of the parent's queue, threads, locks or sockets."""
        self._transport.renew_after_fork()
        self._core = self._holder[0] = self._new_core()
        self.submit = self._core.submit

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued before this call settled (or ``timeout``); True when all was delivered."""
        return self._current().flush(timeout)

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued (within ``timeout``, default ``shutdown_timeout``) and stop."""
        core = self._current()
        core.begin_close(timeout)
        core.finish_close()

    @property
    def closing(self) -> bool:
        """True once ``close()`` has begun."""
        return not self._current().lifecycle.admitting

    def stats(self) -> Dict[str, float]:
        """Counts since the client was made, and how long the oldest command not delivered has waited."""
        return self._current().stats()

    def figures(self) -> Figures:
        """What ``health()`` judges."""
        return self._current().figures()


def _close_dropped(holder: List[Core]) -> None:
    core = holder[0]
    if core.pid == os.getpid():
        core.begin_close()  # never blocks: the pump (if any) finishes the close on its own thread

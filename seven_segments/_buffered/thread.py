"""The pump's thread: started by the first call, ended after a long idle while, started again if it dies.

The loop is OpenTelemetry's ``BatchProcessor.worker`` in shape: take a step (``Pump.step`` says how long
the pump may sleep, or that the close is done), then wait on one event with that timeout. Callers set
the event when a batch's worth is queued (``wake_at``), a flush or a close comes, or an answer arrives.
Where no thread can start (interpreter exit, a uwsgi master), a flushing or closing caller runs the same
loop on its own thread (``run_inline``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any, Callable, Deque, Optional

from ..clock import Clock
from ..process_hooks import keep_signals_off_this_thread, threads_hang_forks_here
from .lifecycle import Lifecycle, Phase
from .pump import Pump
from .settlement import FlushTicket
from .store import Reading

__all__ = ["PumpThread", "PUMP_IDLE_SECONDS", "INLINE_POLL"]

logger = logging.getLogger("seven_segments")

#: The pump thread ends after this long with nothing to do (the next call starts it again).
PUMP_IDLE_SECONDS = 10.0
#: When delivering on a caller's thread (no thread can start at interpreter exit), waits are this short.
INLINE_POLL = 0.05
#: A pump thread that dies within this long (seconds) of the last restart is started by the next call.
RESTART_PAUSE = 1.0
_BUSY = 1 << 62

_RUNNING = Phase.RUNNING
_IDLE = Phase.IDLE
_STOPPED = Phase.STOPPED

_uwsgi_master_warned_pid = 0


def _warn_once_about_the_uwsgi_master(incoming: "Deque[Any]") -> None:
    """Once per process, when ``incoming`` holds a command (not only a flush ticket)."""
    global _uwsgi_master_warned_pid
    if _uwsgi_master_warned_pid == os.getpid() or all(type(item) is FlushTicket for item in incoming):
        return
    _uwsgi_master_warned_pid = os.getpid()
    logger.warning(
        "seven_segments: a command was queued in the uwsgi master, where no background thread can run "
        "(uwsgi forks its workers without the interpreter's fork hooks) and which runs no atexit: it is "
        "sent only by client.flush() or client.close() called in the master. Call flush() after tracking "
        "at import, or start uwsgi with --py-call-uwsgi-fork-hooks"
    )


class PumpThread:
    """The thread that runs one engine's pump (or the caller's thread standing in for it)."""

    def __init__(
        self,
        pump: Pump,
        lifecycle: Lifecycle,
        clock: Clock,
        on_start: Callable[[], None],
        on_stop: Callable[[], None],
        scrub: Callable[[str], str],
    ) -> None:
        self._pump = pump
        self._lifecycle = lifecycle
        self._clock = clock
        self._on_start = on_start  # the engine wants closing at exit
        self._on_stop = on_stop  # the close is done: the engine's last act
        self._scrub = scrub
        self.wakeup = threading.Event()
        self.wake_at = 1  # a producer wakes the pump when len(incoming) reaches this
        #: The thread that owns the pump now (the pump thread, or a caller running it inline).
        self.thread: Optional[threading.Thread] = None
        #: While a flush runs the pump on its own thread: when that flush ends (attempts made on
        #: that thread end by then too).
        self.inline_until = math.inf
        self._restarted_at = -math.inf  # when a pump thread that died was last started again

    @property
    def current(self) -> bool:
        """The calling thread owns the pump (``on_error`` runs on it)."""
        return self.thread is threading.current_thread()

    def start(self) -> None:
        """Start a pump thread if there is none (IDLE -> RUNNING)."""
        progress = self._pump.settlement.progress
        if progress.drained_at == math.inf:  # idle with nothing queued until the call that starts us
            progress.drained_at = self._clock()
        lifecycle = self._lifecycle
        with lifecycle.lock:
            if lifecycle.phase is not _IDLE or self.thread is not None or not lifecycle.move_locked(_RUNNING):
                return
            in_a_uwsgi_master = threads_hang_forks_here()
            if in_a_uwsgi_master or not self.start_locked():
                # A uwsgi master (see process_hooks.threads_hang_forks_here), or the interpreter is
                # shutting down (Python 3.12+ starts no thread then): flush() and close() deliver
                # on the caller's thread instead.
                lifecycle.phase = _IDLE
                logger.debug("no worker thread here; delivering on the flushing or closing thread")
        if in_a_uwsgi_master:
            _warn_once_about_the_uwsgi_master(self._pump.incoming)
        self._on_start()

    def start_locked(self) -> bool:
        """Start the pump thread (the lifecycle lock is held): the one owner of the pump from now on.
        False when none started: in a uwsgi master (whatever the caller, a close too: a thread there
        hangs the workers it forks), or at interpreter exit; a flush or close delivers on its thread."""
        if threads_hang_forks_here():
            return False
        thread = threading.Thread(target=self._run, name="seven-segments-worker", daemon=True)
        self.thread = thread
        try:
            thread.start()
        except RuntimeError:
            self.thread = None
            return False
        return True

    def _run(self) -> None:
        keep_signals_off_this_thread()
        cause: Optional[BaseException] = None
        try:
            self._loop()
        except BaseException as error:  # SystemExit from a callback, an exception raised into the thread
            cause = error
        finally:
            lifecycle = self._lifecycle
            died = False
            with lifecycle.lock:
                if self.thread is threading.current_thread():
                    self.thread = None
                    if lifecycle.phase is _RUNNING:  # died
                        lifecycle.phase = _IDLE
                        died = True
            if died:
                self._restart_after(cause)

    def _restart_after(self, cause: Optional[BaseException]) -> None:
        """The pump thread died: start another now (one line says so), unless one died a moment ago
        (then the next call starts it: a loop of deaths must not spin)."""
        what = "" if cause is None else f" ({type(cause).__name__}: {self._scrub(str(cause))})"
        now = self._clock()
        if now - self._restarted_at < RESTART_PAUSE:
            logger.error("seven_segments worker: stopped unexpectedly%s; it starts again on the next call", what)
            return
        self._restarted_at = now
        self.start()
        started = self.thread is not None
        logger.error(
            "seven_segments worker: stopped unexpectedly%s; %s",
            what,
            "started again" if started else "it starts again on the next call",
        )

    def run_inline(self, until: Callable[[], bool]) -> None:
        """Deliver on the caller's thread (no thread can start at interpreter exit), polling ``until``,
        if no other thread owns the pump; then give the pump back."""
        lifecycle = self._lifecycle
        with lifecycle.lock:
            if self.thread is not None or lifecycle.phase is _STOPPED:
                return  # another thread owns the pump (it appeared meanwhile): wait for it instead
            self.thread = threading.current_thread()
            if lifecycle.phase is _IDLE:
                lifecycle.move_locked(_RUNNING)
        try:
            self._loop(until=until, poll=INLINE_POLL)
        finally:
            self.wake_at = 1
            with lifecycle.lock:
                if self.thread is threading.current_thread():
                    self.thread = None
                    if lifecycle.phase is _RUNNING:
                        lifecycle.phase = _IDLE

    def _loop(self, until: Optional[Callable[[], bool]] = None, poll: float = math.inf) -> None:
        """Step, then sleep as long as the step allows (or until woken); until the close is done."""
        pump, lifecycle = self._pump, self._lifecycle
        idle_since: Optional[float] = None
        while until is None or not until():
            if lifecycle.phase is _STOPPED:
                return  # a closer gave up on us and settled everything
            try:
                delay = pump.step()
            except Exception:  # a bug of ours must not kill delivery for good
                logger.exception("seven_segments worker: unexpected error; carrying on")
                delay = INLINE_POLL
            if delay < 0:
                self._on_stop()
                return
            if delay == math.inf and pump.empty and not pump.settlement.flushes.tickets and until is None:
                now = self._clock()
                idle_since = now if idle_since is None else idle_since
                if now - idle_since >= PUMP_IDLE_SECONDS and self._go_idle():
                    return
                delay = PUMP_IDLE_SECONDS
            else:
                idle_since = None
            self._sleep(min(delay, poll))

    def _sleep(self, delay: float) -> None:
        """Wait for producers (a batch's worth, or the first command), an answer, a flush, a close or a timer."""
        pump = self._pump
        waiting = len(pump.line.fresh)
        if not pump.window.room(len(pump.settlement.in_flight), self._clock()):
            self.wake_at = _BUSY  # nothing could go now: an answer or the gate's timer wakes us, not callers
        elif pump.store.reading is Reading.DEAD_WRITERS:
            # Nothing is taken from the queue until the dead writers' files are read, and reading
            # waits for room: an answer wakes us (or a flush, a close), not what callers queue.
            self.wake_at = _BUSY
        else:
            self.wake_at = max(1, pump.limits.batch_size - waiting) if waiting else 1
        if len(pump.incoming) < self.wake_at and not pump.outcomes.arrived:
            self.wakeup.wait(None if delay == math.inf else delay)
        self.wakeup.clear()
        self.wake_at = _BUSY  # busy: producers need not wake us

    def _go_idle(self) -> bool:
        """RUNNING -> IDLE after a long while with nothing to do; False when work came meanwhile."""
        lifecycle = self._lifecycle
        with lifecycle.lock:
            if lifecycle.phase is not _RUNNING:
                return False
            lifecycle.move_locked(_IDLE)
            self.thread = None
        settlement = self._pump.settlement
        settlement.progress.drained_at = math.inf  # the next command queued starts a pump (see start)
        if not self._pump.incoming and not settlement.drops.waiting:
            return True
        with lifecycle.lock:  # a producer appended as we left: carry on, unless a new pump started
            if lifecycle.phase is _IDLE and lifecycle.move_locked(_RUNNING):
                self.thread = threading.current_thread()
                return False
        return True

"""``await flush()`` of the asyncio client, any number at once, on one waiting thread per client.

``SevenSegments.flush`` blocks until what was queued before it settled; the event loop must not. A
thread per awaiting flush would do, but 300 concurrent flushes would cost 300 threads. So flushes
that are waiting together share rounds: one thread calls the blocking flush for every flush
requested before the round began, hands its answer to each of them, and starts another round for
those that came meanwhile (their commands were queued after the round's mark, so the round cannot
answer for them). A flush that waited ``timeout`` seconds answers ``False`` on its own timer, on
the loop, whatever the round still waits for; a cancelled one stops waiting. The thread ends when
no flush waits.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from typing import Callable, List, Optional

from .clock import monotonic
from .process_hooks import keep_signals_off_this_thread, threads_hang_forks_here

__all__ = ["FlushWaiter"]


class _Waiting:
    """One awaiting ``flush()``: its loop, its future, and when it stops waiting."""

    __slots__ = ("loop", "future", "deadline", "gone")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: "asyncio.Future[bool]", deadline: float) -> None:
        self.loop = loop
        self.future = future
        self.deadline = deadline
        #: Set on the loop when it no longer waits (timed out or cancelled); read by the round's thread.
        self.gone = False

    def settle(self, result: Optional[bool], error: Optional[BaseException]) -> None:
        """Answer it (on its loop), unless it stopped waiting."""
        self.gone = True
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(bool(result))

    def answer(self, result: Optional[bool], error: Optional[BaseException]) -> None:
        """Answer it from the round's thread."""
        try:
            self.loop.call_soon_threadsafe(self.settle, result, error)
        except RuntimeError:  # its loop is closed: nobody waits any more
            pass


class FlushWaiter:
    """The flushes of one client waiting on the server: ``await waiter.flush(timeout)``."""

    def __init__(self, flush: Callable[[Optional[float]], bool], name: str) -> None:
        self._flush = flush
        self._name = name
        self._new_process()

    def _new_process(self) -> None:
        """Start empty: made, or in a forked child (the parent's round thread does not exist there)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        #: Flushes waiting for the next round, and whether a thread runs rounds (both under the lock).
        self._next: List[_Waiting] = []
        self._serving = False

    async def flush(self, timeout: Optional[float]) -> bool:
        """Wait until what was queued before this call settled (at most ``timeout`` s); as ``flush``."""
        loop = asyncio.get_running_loop()
        if threads_hang_forks_here():  # a uwsgi master: no thread of ours there (see process_hooks)
            return self._flush(timeout)
        if self._pid != os.getpid():
            self._new_process()
        future: "asyncio.Future[bool]" = loop.create_future()
        waiting = _Waiting(loop, future, math.inf if timeout is None else monotonic() + timeout)
        with self._lock:
            self._next.append(waiting)
            start, self._serving = not self._serving, True
        if start:
            self._start()
        timer = None if timeout is None else loop.call_later(timeout, waiting.settle, False, None)
        try:
            return await future
        finally:
            waiting.gone = True
            if timer is not None:
                timer.cancel()

    def _start(self) -> None:
        try:
            threading.Thread(target=self._serve, name=self._name, daemon=True).start()
        except RuntimeError:  # interpreter shutdown: no thread can start; serve the rounds here
            self._serve()

    def _serve(self) -> None:
        keep_signals_off_this_thread()
        while True:
            with self._lock:
                round_, self._next = self._next, []
                if not round_:
                    self._serving = False
                    return
            waiting = [each for each in round_ if not each.gone]
            if not waiting:
                continue
            latest = max(each.deadline for each in waiting)
            timeout = None if latest == math.inf else max(0.0, latest - monotonic())
            result: Optional[bool] = None
            error: Optional[BaseException] = None
            try:
                result = self._flush(timeout)
            except BaseException as failure:  # handed to the awaiting flushes
                error = failure
            for each in waiting:
                each.answer(result, error)

"""One HTTP attempt ends by its deadline, however slowly the server answers.

``requests`` applies ``timeout`` to each socket operation, so a server that trickles its answer (one
byte a second) keeps an attempt alive for as long as it likes. Here every attempt is registered
with one watchdog thread per process, with the moment it must end; the sockets the attempt uses are
attached to it as urllib3 makes or reuses them (see :class:`WatchedHTTPConnection`); when the moment
passes, the watchdog shuts those sockets down, the blocked read returns, and the attempt fails as a
timeout. A close or exit deadline can bring the moment forward for every attempt of one owner.

The watchdog thread is a daemon, started with the first attempt of a process (again in a forked
child) and ended after ``IDLE_SECONDS`` without attempts. Where no thread can be started (the
interpreter is shutting down), attempts keep the per-operation timeout only.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .clock import Clock, monotonic

__all__ = ["Attempt", "Watchdog", "WATCHDOG", "WatchedHTTPConnectionPool", "WatchedHTTPSConnectionPool"]

logger = logging.getLogger(__name__)

#: The watchdog thread ends after this long with no attempt to watch.
IDLE_SECONDS = 30.0


class Attempt:
    """One HTTP attempt: the moment it must end, the sockets it used, and whether it was cut."""

    __slots__ = ("deadline", "owner", "sockets", "expired", "finished")

    def __init__(self, deadline: float, owner: Any) -> None:
        self.deadline = deadline
        self.owner = owner
        self.sockets: List[socket.socket] = []
        self.expired = False
        self.finished = False

    def adopt(self, sock: Optional[socket.socket]) -> None:
        """Attach a socket this attempt reads or writes; shut it at once if the attempt is over."""
        if sock is None or any(known is sock for known in self.sockets):
            return
        self.sockets.append(sock)
        if self.expired:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket.shutdown: the TLS object stays with the reading thread.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class Watchdog:
    """Shuts the sockets of attempts that outlive their deadline (one per process)."""

    def __init__(self, clock: Clock = monotonic) -> None:
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._heap: List[Tuple[float, int, Attempt]] = []
        self._by_owner: Dict[int, Set[Attempt]] = {}
        self._serial = 0
        self._thread: Optional[threading.Thread] = None
        self._local = threading.local()

    # The side of the thread making the attempt -------------------------------------------------

    def begin(self, deadline: float, owner: Any = None) -> Attempt:
        """Watch a new attempt of the calling thread, to end by ``deadline`` (on this clock)."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's thread and lock are not ours
        attempt = Attempt(deadline, owner)
        with self._lock:
            self._serial += 1
            heapq.heappush(self._heap, (deadline, self._serial, attempt))
            if owner is not None:
                self._by_owner.setdefault(id(owner), set()).add(attempt)
            if self._thread is None:
                self._start()
            elif self._heap[0][2] is attempt:
                self._changed.notify()
        self._local.attempt = attempt
        return attempt

    def end(self, attempt: Attempt) -> None:
        """The attempt is over (answered or failed): stop watching it."""
        self._local.attempt = None
        with self._lock:
            attempt.finished = True
            attempt.sockets = []
            if attempt.owner is not None:
                owned = self._by_owner.get(id(attempt.owner))
                if owned is not None:
                    owned.discard(attempt)
                    if not owned:
                        del self._by_owner[id(attempt.owner)]

    def current(self) -> Optional[Attempt]:
        """The attempt the calling thread is making, if any."""
        return getattr(self._local, "attempt", None)

    # The side of a closer ----------------------------------------------------------------------

    def shorten(self, owner: Any, deadline: float) -> None:
        """Bring the deadline of every attempt of ``owner`` forward to ``deadline`` (never later)."""
        with self._lock:
            for attempt in self._by_owner.get(id(owner), ()):
                if deadline < attempt.deadline:
                    attempt.deadline = deadline
                    self._serial += 1
                    heapq.heappush(self._heap, (deadline, self._serial, attempt))
            self._changed.notify()

    # The watchdog thread ------------------------------------------------------------------------

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="seven-segments-watchdog", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown: attempts keep their per-operation timeout
            return
        self._thread = thread

    def _run(self) -> None:
        with self._lock:
            while True:
                now = self._clock()
                heap = self._heap
                while heap and (heap[0][2].finished or heap[0][2].deadline < heap[0][0]):
                    heapq.heappop(heap)  # answered in time, or re-queued with an earlier deadline
                if not heap:
                    if not self._changed.wait(IDLE_SECONDS) and not self._heap:
                        self._thread = None
                        return
                    continue
                deadline, _, attempt = heap[0]
                if deadline > now:
                    self._changed.wait(deadline - now)
                    continue
                heapq.heappop(heap)
                attempt.expired = True
                for sock in attempt.sockets:
                    _shut(sock)


#: The process's watchdog.
WATCHDOG = Watchdog()


def _adopt(sock: Optional[socket.socket]) -> None:
    attempt = WATCHDOG.current()
    if attempt is not None:
        attempt.adopt(sock)


class WatchedHTTPConnection(HTTPConnection):
    """urllib3's connection, whose socket joins the attempt the calling thread is making."""

    def connect(self) -> None:
        super().connect()
        _adopt(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _adopt(self.sock)  # a pooled connection, reused
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        _adopt(self.sock)
        return super().getresponse()


class WatchedHTTPSConnection(HTTPSConnection):
    """The same for HTTPS."""

    def connect(self) -> None:
        super().connect()
        _adopt(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _adopt(self.sock)
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        _adopt(self.sock)
        return super().getresponse()


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    """A pool of :class:`WatchedHTTPConnection`."""

    ConnectionCls = WatchedHTTPConnection


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool of :class:`WatchedHTTPSConnection`."""

    ConnectionCls = WatchedHTTPSConnection

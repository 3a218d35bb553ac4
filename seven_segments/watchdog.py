"""One HTTP attempt ends by its deadline, however slowly the server answers.

``requests`` applies ``timeout`` to each socket operation, so a server that trickles its answer (one
byte a second) keeps an attempt alive for as long as it likes. Here every attempt is registered
with one watchdog thread per process, with the moment it must end; the sockets the attempt uses are
attached to it as urllib3 makes or reuses them (see :class:`WatchedHTTPConnection`); when the moment
passes, the watchdog shuts those sockets down, the blocked read returns, and the attempt fails as a
timeout. A close or exit deadline can bring the moment forward for every attempt of one owner.

The watchdog thread is a daemon, started with the first attempt of a process (again in a forked
child) and ended after ``IDLE_SECONDS`` without attempts. Where no thread can be started (the
interpreter is shutting down, on Python 3.12+), an attempt made on the main thread is ended by a
``SIGALRM`` timer instead, unless the application uses that signal; other attempts keep the
per-operation timeout only. A connection put back in the pool leaves the attempt that used it, so
that a late deadline never shuts a socket another attempt has taken since.
"""

from __future__ import annotations

import heapq
import logging
import os
import signal
import socket
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .clock import Clock, monotonic
from .process_hooks import keep_signals_off_this_thread, threads_hang_forks_here

__all__ = ["Attempt", "Watchdog", "WATCHDOG", "adopt", "WatchedHTTPConnectionPool", "WatchedHTTPSConnectionPool"]

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
            if self._thread is not None and not self._thread.is_alive():  # it died of an exception
                self._thread = None
                logger.error("seven_segments watchdog: its thread stopped unexpectedly; started again")
            if self._thread is None:
                self._start()
            elif self._heap[0][2] is attempt:
                self._changed.notify()
            unwatched = self._thread is None
        self._local.attempt = attempt
        if unwatched:
            self._arm_alarm(attempt)
        return attempt

    def end(self, attempt: Attempt) -> None:
        """The attempt is over (answered or failed): stop watching it."""
        if self._pid != os.getpid():
            self._reset()  # a forked child: the parent's lock may be held by a thread the child lacks
            return
        self._local.attempt = None
        self._cancel_alarm(attempt)
        with self._lock:
            attempt.finished = True
            attempt.sockets = []
            if attempt.owner is not None:
                owned = self._by_owner.get(id(attempt.owner))
                if owned is not None:
                    owned.discard(attempt)
                    if not owned:
                        del self._by_owner[id(attempt.owner)]

    def detach(self, sock: Optional[socket.socket]) -> None:
        """``sock`` goes back to the connection pool: the calling thread's attempt no longer owns it."""
        attempt = getattr(self._local, "attempt", None)
        if attempt is None or sock is None:
            return
        with self._lock:
            attempt.sockets = [known for known in attempt.sockets if known is not sock]

    def current(self) -> Optional[Attempt]:
        """The attempt the calling thread is making, if any."""
        return getattr(self._local, "attempt", None)

    # The side of a closer ----------------------------------------------------------------------

    def shorten(self, owner: Any, deadline: float) -> None:
        """Bring the deadline of every attempt of ``owner`` forward to ``deadline`` (never later)."""
        if self._pid != os.getpid():
            self._reset()
            return
        with self._lock:
            for attempt in self._by_owner.get(id(owner), ()):
                if deadline < attempt.deadline:
                    attempt.deadline = deadline
                    self._serial += 1
                    heapq.heappush(self._heap, (deadline, self._serial, attempt))
            self._changed.notify()

    # The watchdog thread ------------------------------------------------------------------------

    def _start(self) -> None:
        if threads_hang_forks_here():  # a uwsgi master: a timer signal instead (see process_hooks)
            return
        thread = threading.Thread(target=self._run, name="seven-segments-watchdog", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown (3.12+ starts no thread): a timer signal instead
            return
        self._thread = thread

    # Where no thread can start (interpreter exit), the main thread's attempts are ended by SIGALRM.

    def _arm_alarm(self, attempt: Attempt) -> None:
        """Called (lock not held) for an attempt begun with no watchdog thread: end it by a timer signal."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
            return  # attempts keep their per-operation timeout only
        try:
            if signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL or signal.getitimer(signal.ITIMER_REAL)[0]:
                return  # the application's own alarm: never touched

            def expire(signum: int, frame: Any) -> None:
                attempt.expired = True
                for sock in list(attempt.sockets):
                    _shut(sock)

            signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, max(0.001, attempt.deadline - self._clock()))
        except (ValueError, OSError):
            return
        self._local.alarm = attempt

    def _cancel_alarm(self, attempt: Attempt) -> None:
        if getattr(self._local, "alarm", None) is not attempt:
            return
        self._local.alarm = None
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        except (ValueError, OSError):
            pass

    def _run(self) -> None:
        keep_signals_off_this_thread()
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

# A forked child starts with a fresh watchdog at its first use (every entry point checks the process
# id): made then, not in an at-fork hook, its locks are gevent's when the child patches after the fork.


def adopt(sock: Optional[socket.socket]) -> None:
    """``sock`` joins the attempt the calling thread is making, if any."""
    attempt = WATCHDOG.current()
    if attempt is not None:
        attempt.adopt(sock)



class WatchedHTTPConnection(HTTPConnection):
    """urllib3's connection, whose socket joins the attempt the calling thread is making."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        adopt(sock)  # before any TLS handshake or proxy tunnel, which read from it too
        return sock

    def connect(self) -> None:
        super().connect()
        adopt(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        adopt(self.sock)  # a pooled connection, reused
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        adopt(self.sock)
        return super().getresponse()


class WatchedHTTPSConnection(HTTPSConnection):
    """The same for HTTPS."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        adopt(sock)
        return sock

    def connect(self) -> None:
        super().connect()
        adopt(self.sock)

    def request(self, *args: Any, **kwargs: Any) -> None:
        adopt(self.sock)
        super().request(*args, **kwargs)

    def getresponse(self) -> Any:
        adopt(self.sock)
        return super().getresponse()


def _detach(conn: Any) -> None:
    WATCHDOG.detach(getattr(conn, "sock", None))


class WatchedHTTPConnectionPool(HTTPConnectionPool):
    """A pool of :class:`WatchedHTTPConnection`; a connection put back leaves the attempt that used it."""

    ConnectionCls = WatchedHTTPConnection

    def _put_conn(self, conn: Any) -> None:
        _detach(conn)
        super()._put_conn(conn)


class WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    """A pool of :class:`WatchedHTTPSConnection`; a connection put back leaves the attempt that used it."""

    ConnectionCls = WatchedHTTPSConnection

    def _put_conn(self, conn: Any) -> None:
        _detach(conn)
        super()._put_conn(conn)

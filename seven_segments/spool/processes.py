"""The spool and the process around it: threads contending for a spool's lock, signals, forks.

Every spool of this process is registered here (``register``), so that a forked child drops its
parent's files even when nobody calls ``after_fork``, and so that the SIGTERM handler can ask
whether the thread it interrupted holds a spool's lock (``lock_held_here``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import weakref
from typing import Any

from .segments import _forget_the_parents, _making

#: Every spool of this process (``Spool`` objects: ``after_fork()`` and ``held_here()``).
_SPOOLS: "weakref.WeakSet[Any]" = weakref.WeakSet()

#: Times an appender finding the lock taken lets the GIL go before it polls the lock.
_SPINS = 50
#: How often an appender polls a lock held for long.
_POLL_SECONDS = 0.0002

#: Gives the GIL up for a moment.
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def register(spool: Any) -> None:
    """Note a spool of this process (kept weakly)."""
    _SPOOLS.add(spool)


def acquire_without_convoy(lock: "threading.RLock") -> None:
    """Take ``lock``, held by another thread, without parking on it while it is busy.

    A thread parked in a blocking acquire stays there until it wins the lock, and while it is
    parked, every release of every other thread wakes it (a system call each), and it can lose the
    race to the lock again and again. So: give up the GIL (``sched_yield``) and try again without
    blocking; a holder that takes long (making a new segment, a few milliseconds) is polled every
    ``_POLL_SECONDS``.
    """
    for _ in range(_SPINS):
        _yield()
        if lock.acquire(False):
            return
    while not lock.acquire(False):
        time.sleep(_POLL_SECONDS)


def ignore_sigxfsz() -> None:
    """A write past ``RLIMIT_FSIZE`` raises SIGXFSZ, whose default kills the process: ignore it (so
    the write fails with EFBIG instead), unless someone set a handler or we are not on the main thread
    (where ``signal.signal`` cannot be called; then the application must ignore it itself)."""
    signum = getattr(signal, "SIGXFSZ", None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_IGN)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        pass


def lock_held_here() -> bool:
    """Whether this thread holds the lock of a spool of this process (asked by the SIGTERM handler,
    which runs on the thread it interrupted: the close it waits for needs that lock)."""
    return any(spool.held_here() for spool in list(_SPOOLS))


#: How long a fork waits for a segment being made (a hung file system must not hang ``fork()``).
FORK_WAIT_SECONDS = 10.0
_fork_holds_making = False


def _before_fork() -> None:
    global _fork_holds_making
    _fork_holds_making = _making().acquire(timeout=FORK_WAIT_SECONDS)


def _after_fork_in_parent() -> None:
    if _fork_holds_making:
        _making().release()


def _after_fork_in_child() -> None:
    _forget_the_parents()  # the child's own lock is made on first use: a new process id
    for spool in list(_SPOOLS):
        try:
            spool.after_fork()
        except Exception:  # pragma: no cover - never let a fork hook raise
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

"""Every live engine of the process: closed at interpreter exit, started over in a forked child.

- ``atexit`` closes every engine with work, all at once, each within its ``shutdown_timeout``.
- ``process_hooks.arm`` (called whenever an engine starts a pump) covers the exits that skip
  ``atexit``: ``multiprocessing`` and billiard (Celery) children, and SIGTERM's default disposition.
- In a forked child every engine swaps in a fresh core at its first use (a process-id check on every
  call, which also covers servers that fork without running ``os.register_at_fork`` hooks, such as
  uwsgi).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Dict, Set

from .. import process_hooks

if TYPE_CHECKING:
    from .engine import BufferedEngine, Core

__all__ = ["arm_exit_hooks", "close_all_at_exit", "engines", "started", "stopped", "fork_lock"]

logger = logging.getLogger("seven_segments")

#: Every engine (weakly): for the fork hook.
engines: "weakref.WeakSet[BufferedEngine]" = weakref.WeakSet()
#: Cores that have started and not stopped (strongly: a dropped client's core finishes its close).
_live: "Set[Core]" = set()
_live_lock = threading.Lock()
#: One lock per process for noticing a fork without hooks (a lock inherited from the parent could be
#: held by a thread that does not exist in the child; ``dict.setdefault`` is atomic).
_fork_locks: Dict[int, threading.Lock] = {}


def fork_lock() -> threading.Lock:
    """This process's lock for swapping cores after a fork."""
    return _fork_locks.setdefault(os.getpid(), threading.Lock())


def started(core: "Core") -> None:
    """``core`` has (or wants) a pump: close it at exit."""
    with _live_lock:
        _live.add(core)
    arm_exit_hooks()


def stopped(core: "Core") -> None:
    """``core`` is done: forget it."""
    with _live_lock:
        _live.discard(core)


def close_all_at_exit() -> None:
    """Close every live engine, all at once, each within its ``shutdown_timeout``. Idempotent."""
    pid = os.getpid()
    with _live_lock:
        cores = [core for core in _live if core.pid == pid]
    for core in cores:
        core.begin_close()
    for core in cores:
        try:
            core.finish_close()
        except Exception:
            logger.exception("seven_segments: closing a client at exit failed")


def arm_exit_hooks() -> None:
    """Make sure the exits that skip ``atexit`` close the engines too (cheap; idempotent)."""
    process_hooks.arm(close_all_at_exit)


def _after_fork_in_child() -> None:
    """The parent's cores are the parent's. Each engine makes its fresh core at its first use in the
    child (the process-id check), not here: made then, its locks and events are gevent's when the child
    patches after the fork (gunicorn ``-k gevent --preload``)."""
    global _live_lock
    _live_lock = threading.Lock()
    _live.clear()


atexit.register(close_all_at_exit)
if hasattr(os, "register_at_fork"):
    # Looked up at fork time, so that a test can stand in for a server that skips the hooks (uwsgi).
    os.register_at_fork(after_in_child=lambda: _after_fork_in_child())

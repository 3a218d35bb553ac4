"""The life of an engine: one phase value and the moves allowed between phases; and every live engine
of the process, closed at interpreter exit and started over in a forked child.

- ``atexit`` closes every engine with work, all at once, each within its ``shutdown_timeout``.
- ``process_hooks.arm`` (called whenever an engine starts a pump) covers the exits that skip
  ``atexit``: ``multiprocessing`` and billiard (Celery) children, and SIGTERM's default disposition.
- In a forked child every engine swaps in a fresh core at its first use (a process-id check on every
  call, which also covers servers that fork without running ``os.register_at_fork`` hooks, such as
  uwsgi).
"""

from __future__ import annotations

import atexit
import enum
import logging
import os
import threading
from typing import Dict, FrozenSet, Protocol, Set


from .. import process_hooks

__all__ = [
    "Phase",
    "MOVES",
    "Lifecycle",
    "Closable",
    "arm_exit_hooks",
    "close_all_at_exit",
    "fork_lock",
    "started",
    "stopped",
]

logger = logging.getLogger("seven_segments")


class Phase(enum.Enum):
    """Where an engine is in its life."""

    IDLE = "idle"  # no pump thread: new, fresh after fork, idle for a while, or the pump died
    RUNNING = "running"  # admitting commands; a pump thread delivers them
    DRAINING = "draining"  # close() began: refusing commands, delivering until the close deadline
    STOPPED = "stopped"  # everything settled or given up; late arrivals are failed on arrival


#: The moves an engine may make. RUNNING -> IDLE is the pump ending when it had nothing to do.
MOVES: Dict[Phase, FrozenSet[Phase]] = {
    Phase.IDLE: frozenset({Phase.RUNNING, Phase.DRAINING}),
    Phase.RUNNING: frozenset({Phase.IDLE, Phase.DRAINING}),
    Phase.DRAINING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}


class Lifecycle:
    """The phase, read without a lock by callers, changed only through :meth:`move`."""

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.lock = threading.Lock()
        #: Set once the engine is STOPPED.
        self.stopped = threading.Event()
        #: Held while settling what reached the queue after the stop (callers and the pump's last act).
        self.late = threading.Lock()

    def move(self, to: Phase) -> bool:
        """Move to ``to`` if allowed from the current phase; False (and no change) otherwise."""
        with self.lock:
            return self.move_locked(to)

    def move_locked(self, to: Phase) -> bool:
        """:meth:`move` for a caller that holds ``lock``."""
        if to not in MOVES[self.phase]:
            return False
        self.phase = to
        if to is Phase.STOPPED:
            self.stopped.set()
        return True

    @property
    def admitting(self) -> bool:
        """True while commands are taken (before a close began)."""
        return self.phase is Phase.IDLE or self.phase is Phase.RUNNING


# Every live engine of the process ---------------------------------------------------------------


class Closable(Protocol):
    """What the process's exit needs of an engine's core."""

    pid: int

    def begin_close(self) -> None:
        """Stop taking commands; deliver within the close deadline."""

    def finish_close(self) -> None:
        """Wait for the close to end."""


#: Cores that have started and not stopped (strongly: a dropped client's core finishes its close).
_live: "Set[Closable]" = set()
_live_lock = threading.Lock()
#: One lock per process for noticing a fork without hooks (a lock inherited from the parent could be
#: held by a thread that does not exist in the child; ``dict.setdefault`` is atomic).
_fork_locks: Dict[int, threading.Lock] = {}


def fork_lock() -> threading.Lock:
    """This process's lock for swapping cores after a fork."""
    return _fork_locks.setdefault(os.getpid(), threading.Lock())


def started(core: Closable) -> None:
    """``core`` has (or wants) a pump: close it at exit."""
    with _live_lock:
        _live.add(core)
    arm_exit_hooks()


def stopped(core: Closable) -> None:
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

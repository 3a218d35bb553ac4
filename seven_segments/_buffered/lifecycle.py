"""The life of a buffered client's engine: one phase value and the moves allowed between phases."""

from __future__ import annotations

import enum
import threading
from typing import Dict, FrozenSet

__all__ = ["Phase", "MOVES", "Lifecycle"]


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

"""Buffered delivery: a lock-free queue drained by a pump thread into ``bulk`` requests in flight.

The stages, each with one job:

- ``limits.py``: every limit and default, in one place;
- ``lifecycle.py``: the phases of an engine (IDLE, RUNNING, DRAINING, STOPPED) and their moves;
- ``engine.py``: the caller's side (``submit``: the command's bytes, a ``deque.append``), the pump
  thread, close and fork;
- ``pump.py``: every decision: take (and number), batch, dispatch within the window, apply answers,
  answer flushes, give up at the close deadline;
- ``batching.py``: when a batch is due and how it is cut; ``window.py``: how many requests may be in
  flight; ``retry.py``: the retry policy; ``answers.py``: what a ``bulk`` answer means;
- ``sender.py``: one attempt per batch on a sender thread; ``settlement.py``: the one writer of counts,
  the budget, flush verdicts, ``on_error`` chunks and loss warnings (through ``reporting.py``: chunks
  and rate-limited warnings); ``registry.py``: exit and fork.
- ``progress.py``: how long the oldest command has waited and how the last requests ended (for
  ``stats()`` and ``health()``); ``stall.py``: when to warn that delivery stalled, and resumed.
"""

from .engine import BufferedEngine
from .limits import Limits
from .registry import close_all_at_exit

__all__ = ["BufferedEngine", "Limits", "close_all_at_exit"]

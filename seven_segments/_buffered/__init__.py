"""Buffered delivery: a lock-free queue drained by a pump thread into ``bulk`` requests in flight.

The stages, each with one job (``docs/engine.md`` says who owns what, and the words for the life of a
command):

- ``limits.py``: every limit and default, in one place;
- ``lifecycle.py``: the phases of an engine (IDLE, RUNNING, DRAINING, STOPPED) and their moves; every
  live engine of the process, closed at exit and started over after a fork;
- ``engine.py``: ``BufferedEngine`` (the facade) and ``Core`` (the engine in one process): the caller's
  side (``submit``: the command's bytes, a ``deque.append``), flush, close, stats;
- ``thread.py``: the pump's thread and its loop; ``pump.py``: every decision: take (and number), read
  back, dispatch within the window, answer flushes, give up at the close deadline;
- ``line.py``: commands held and not in flight; ``outcomes.py``: what senders handed back, applied;
  ``store.py``: where held commands lie (memory, or a spool too);
- ``settlement.py``: the one writer of counts, the budget, flush verdicts, ``on_error`` chunks and loss
  warnings (through ``reporting.py``: chunks and rate-limited warnings);
- ``batching.py``: when a batch is due and how it is cut; ``window.py``: how many requests may be in
  flight; ``retry.py``: the pump's questions to the retry policy (``retrying.py``); ``answers.py``: what a ``bulk`` answer means;
- ``sender.py``: one attempt per batch on a sender thread;
- ``watch.py``, ``progress.py``, ``stall.py``: how long the oldest command has waited and how the last
  requests ended (for ``stats()`` and ``health()``), and when to warn that delivery stalled, and resumed.
"""

from .engine import BufferedEngine
from .limits import Limits
from .lifecycle import close_all_at_exit

__all__ = ["BufferedEngine", "Limits", "close_all_at_exit"]

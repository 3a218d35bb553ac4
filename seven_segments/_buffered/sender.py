"""Requests in flight: one attempt per batch, each on a sender thread of the engine's pool.

Senders only do I/O and hand back an outcome (``(request number, verdict, error)``): they decide
nothing and count nothing. A pool starts a thread when a request needs one and none is idle (so at
most ``max_in_flight`` per client, as the pump never has more requests in flight), and a thread ends
after ``IDLE_SECONDS`` without work, or when the engine stops. Where no thread can be started (the
interpreter is shutting down), ``run`` says so and the pump makes the attempt itself.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Deque, Optional, Sequence, Tuple, Union

from ..errors import SevenSegmentsError
from ..process_hooks import keep_signals_off_this_thread, threads_hang_forks_here
from ..protocol import PATH_BULK
from ..transport import Transport, TransientError
from .answers import Verdict, answer_reader, read_results
from .batching import Batch

__all__ = ["Outcome", "SenderPool", "attempt_batch", "bulk_body", "IDLE_SECONDS"]

logger = logging.getLogger(__name__)

#: A sender thread with nothing to do for this long ends.
IDLE_SECONDS = 5.0

#: What one attempt gives back: the request number, and a verdict (answered) or an error.
Outcome = Tuple[int, Optional[Verdict], Optional[Union[TransientError, SevenSegmentsError]]]

_BULK_HEAD = b'{"commands":['
_BULK_TAIL = b"]}"


def bulk_body(payloads: Sequence[bytes]) -> bytes:
    """The ``bulk`` body of encoded commands, written by one join: the head and the tail are added
    to the first and the last command (small copies), never to the whole body."""
    parts = list(payloads)
    if len(parts) < 2:
        return _BULK_HEAD + b"".join(parts) + _BULK_TAIL
    parts[0] = _BULK_HEAD + parts[0]
    parts[-1] += _BULK_TAIL
    return b",".join(parts)


def attempt_batch(transport: Transport, owner: Any, number: int, batch: Batch, timeout: float) -> Outcome:
    """Send ``batch`` once as a ``bulk`` request (ending within ``timeout``) and read the answer."""
    body = bulk_body(batch.payloads)
    try:
        answer = transport.post(PATH_BULK, body, timeout=timeout, owner=owner, decode=answer_reader(len(batch)))
    except (TransientError, SevenSegmentsError) as error:
        return number, None, error
    except Exception as error:  # a bug of ours: the batch is reported, never silently lost
        logger.exception("seven_segments: unexpected error while sending")
        return number, None, SevenSegmentsError(f"internal error while sending: {type(error).__name__}")
    return number, read_results(answer.get("results"), len(batch)), None


class SenderPool:
    """The sender threads of one engine."""

    def __init__(self, name: str, idle_seconds: Optional[float] = None, max_threads: int = 32) -> None:
        self._name = name
        self._max_threads = max_threads
        self._idle_seconds = idle_seconds  # None: IDLE_SECONDS, read when a thread waits
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._jobs: Deque[Callable[[], None]] = deque()
        self._threads = 0
        self._idle = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Sender threads alive now."""
        return self._threads

    def run(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on a sender thread; False when no thread could take it (run it yourself)."""
        with self._lock:
            if self._closed or threads_hang_forks_here():
                return False
            self._jobs.append(job)
            if self._idle >= len(self._jobs) or self._threads >= self._max_threads:
                self._ready.notify()  # an idle thread takes it, or a busy one when it is done
                return True
            self._threads += 1
        thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # interpreter shutdown (3.12+ starts no thread then)
            with self._lock:
                self._threads -= 1
                try:
                    self._jobs.remove(job)
                except ValueError:
                    return True  # an idle thread took it meanwhile
            return False
        return True

    def close(self) -> None:
        """End every thread once its job is done (idle ones at once)."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()

    def _serve(self) -> None:
        keep_signals_off_this_thread()
        with self._lock:
            try:
                while True:
                    if self._jobs:
                        job = self._jobs.popleft()
                        self._lock.release()
                        try:
                            job()
                        except BaseException:  # pragma: no cover - attempt_batch catches everything
                            logger.exception("seven_segments: a sender job raised")
                        finally:
                            self._lock.acquire()
                        continue
                    if self._closed:
                        return
                    self._idle += 1
                    woken = self._ready.wait(IDLE_SECONDS if self._idle_seconds is None else self._idle_seconds)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        return
            finally:
                self._threads -= 1

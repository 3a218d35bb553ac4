"""The line: commands held and not in flight, numbered in the order they were taken.

``fresh`` holds commands never sent (the i-th is numbered ``head + i``); ``retries`` holds batches
to send again, by age (their first sequence number), each with its "not before" time. Only the
pump's thread touches the line; ``stats()`` and ``health()`` read it without a lock.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from itertools import islice
from typing import Deque, List, Optional

from .batching import Batch, fit_to_bytes, fresh_batch_due
from .limits import Limits

__all__ = ["Line"]


class Line:
    """Commands waiting to be sent: never sent (``fresh``), or to send again (``retries``)."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.fresh: Deque[bytes] = deque()
        #: The sequence number of ``fresh[0]``, and the last number given.
        self.head = 1
        self.seq = 0
        self.fresh_bytes = 0
        self.oldest_at = 0.0  # when the oldest fresh command was taken
        self.retries: List[Batch] = []

    def __bool__(self) -> bool:
        return bool(self.fresh) or bool(self.retries)

    def extend(self, payloads: List[bytes], size: int) -> None:
        """Number ``payloads`` (``size`` bytes in all) after the last command taken, as fresh commands."""
        if not self.fresh:
            self.head = self.seq + 1
        self.fresh.extend(payloads)
        self.fresh_bytes += size
        self.seq += len(payloads)

    def number_alone(self, now: float) -> int:
        """Number one command that is not held (it fails at once): the fresh commands before it become
        batches of their own, so that the numbers of fresh commands stay contiguous."""
        while self.fresh:
            self.insort(self.cut_fresh(min(len(self.fresh), self._limits.batch_size), now))
        self.seq += 1
        return self.seq

    def insort(self, batch: Batch) -> None:
        """Put ``batch`` back in line, by age (its first sequence number)."""
        firsts = [queued.first_seq for queued in self.retries]
        self.retries.insert(bisect.bisect(firsts, batch.first_seq), batch)

    def next_batch(self, now: float, draining: bool, flush_upto: int) -> Optional[Batch]:
        """The batch to send now, if any: a retry that is due (the oldest first), else fresh commands
        when a batch of them is due (``flush_upto``: the last command a flush waits for, -1 if none)."""
        for index, batch in enumerate(self.retries):
            if batch.not_before <= now:
                del self.retries[index]
                return batch
        limits = self._limits
        fresh = self.fresh
        if not fresh or not fresh_batch_due(
            count=len(fresh),
            size=self.fresh_bytes,
            oldest_at=self.oldest_at,
            now=now,
            batch_size=limits.batch_size,
            max_batch_bytes=limits.max_batch_bytes,
            flush_interval=limits.flush_interval,
            flush_waiting=flush_upto >= self.head,
            draining=draining,
        ):
            return None
        count = min(len(fresh), limits.batch_size)
        if self.fresh_bytes > limits.max_batch_bytes and sum(map(len, islice(fresh, count))) + count + 14 > limits.max_batch_bytes:
            count = fit_to_bytes([len(payload) for payload in islice(fresh, count)], limits.max_batch_bytes)
        return self.cut_fresh(count, now)

    def cut_fresh(self, count: int, now: float) -> Batch:
        """The first ``count`` fresh commands, as a batch first sent ``now``."""
        fresh = self.fresh
        if count == len(fresh):
            payloads = list(fresh)
            fresh.clear()
        else:  # popped by C code, not by a Python loop
            payloads = list(islice(iter(fresh.popleft, None), count))
        batch = Batch(range(self.head, self.head + count), payloads, now)
        self.head += count
        self.fresh_bytes -= sum(map(len, payloads))
        if fresh:
            self.oldest_at = now  # they were taken later than the batch's; near enough, and never later
        return batch

    def take_all(self) -> List[Batch]:
        """Everything in line, as batches (taken out: a close gives up on them)."""
        batches, self.retries = self.retries, []
        if self.fresh:
            batches.append(Batch(range(self.head, self.head + len(self.fresh)), list(self.fresh), 0.0))
        self.fresh.clear()
        self.fresh_bytes = 0
        return batches

    def first(self) -> float:
        """The oldest sequence number in line (infinity when none is)."""
        first = float(self.head) if self.fresh else math.inf
        if self.retries:
            first = min(first, self.retries[0].first_seq)
        return first

    def next_moment(self, gate: float) -> float:
        """When a batch may be due, at the earliest (infinity: nothing waits), not before ``gate``."""
        moments = []
        if self.fresh:
            moments.append(max(gate, self.oldest_at + self._limits.flush_interval))
        if self.retries:
            moments.append(max(gate, min(batch.not_before for batch in self.retries)))
        return min(moments, default=math.inf)

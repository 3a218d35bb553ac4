"""When the next batch may go, and the batch itself: pure decisions over plain values."""

from __future__ import annotations

from typing import List, Sequence

__all__ = ["Batch", "fresh_batch_due", "fit_to_bytes"]


class Batch:
    """Commands sent together in one ``bulk`` request, and their history.

    ``seqs`` are the commands' sequence numbers, ascending (a ``range`` for fresh commands);
    ``payloads`` their JSON as it goes into the body. ``since`` is when the batch, or the batch it
    was split from, was first sent (its retry deadline counts from there); ``attempts`` how many
    times in a row it failed as a whole; ``not_before`` the earliest moment it may be sent again;
    ``split`` whether it is a part of a batch refused as a whole (400, 413), cut in halves.
    """

    __slots__ = ("seqs", "payloads", "since", "attempts", "not_before", "split")

    def __init__(
        self,
        seqs: Sequence[int],
        payloads: List[bytes],
        since: float,
        attempts: int = 0,
        not_before: float = 0.0,
        split: bool = False,
    ) -> None:
        self.seqs = seqs
        self.payloads = payloads
        self.since = since
        self.attempts = attempts
        self.not_before = not_before
        self.split = split

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def first_seq(self) -> int:
        """The oldest command's sequence number."""
        return self.seqs[0]

    def subset(self, indexes: Sequence[int], attempts: int, not_before: float) -> "Batch":
        """The commands at ``indexes`` as a batch of their own (same ``since``)."""
        return Batch(
            [self.seqs[i] for i in indexes], [self.payloads[i] for i in indexes], self.since, attempts, not_before
        )

    def halves(self) -> List["Batch"]:
        """The batch cut in two (for a 400 or 413 answer), each to be sent at once."""
        half = len(self.payloads) // 2
        return [
            Batch(self.seqs[:half], self.payloads[:half], self.since, split=True),
            Batch(self.seqs[half:], self.payloads[half:], self.since, split=True),
        ]

    def body_bytes(self) -> int:
        """The size of the ``bulk`` body this batch makes."""
        return sum(map(len, self.payloads)) + len(self.payloads) + 14


def fresh_batch_due(
    *,
    count: int,
    size: int,
    oldest_at: float,
    now: float,
    batch_size: int,
    max_batch_bytes: int,
    flush_interval: float,
    flush_waiting: bool,
    draining: bool,
) -> bool:
    """Whether the commands never sent so far should go out now.

    They go when a batch is full (by count or bytes), when the oldest has waited ``flush_interval``,
    when a ``flush()`` waits on them, or when the client is closing.
    """
    if count == 0:
        return False
    return (
        draining
        or flush_waiting
        or count >= batch_size
        or size >= max_batch_bytes
        or now - oldest_at >= flush_interval
    )


def fit_to_bytes(sizes: Sequence[int], max_batch_bytes: int) -> int:
    """How many of the leading commands (of these JSON sizes) fit in one body; at least one."""
    total = 14
    for index, size in enumerate(sizes):
        total += size + 1
        if total > max_batch_bytes and index > 0:
            return index
    return len(sizes)

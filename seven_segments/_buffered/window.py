"""How many requests may be in flight now: a window that closes on trouble and opens on success."""

from __future__ import annotations

from typing import Optional

__all__ = ["Window"]


class Window:
    """The in-flight window of one client, with the gate that a ``Retry-After`` closes.

    The window starts at ``maximum``. A passing failure (connection error, timeout, 429, 5xx)
    shrinks it to one request; each success widens it by one, back up to ``maximum``; a
    ``Retry-After`` holds every request until it passes. So an outage never multiplies the load
    on the API: while it lasts, one request is tried at a time, at the pace of the backoff.
    """

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = maximum
        self.gate_until = 0.0

    def room(self, in_flight: int, now: float) -> bool:
        """Whether one more request may start now."""
        return in_flight < self.limit and now >= self.gate_until

    def opens_at(self, now: float) -> Optional[float]:
        """When the gate opens, if it is closed now."""
        return self.gate_until if now < self.gate_until else None

    def on_success(self) -> None:
        """A request was answered: widen the window by one."""
        if self.limit < self.maximum:
            self.limit += 1

    def on_transient(self, now: float, retry_after: Optional[float]) -> None:
        """A request failed in passing: one request at a time, none before ``Retry-After``."""
        self.limit = 1
        if retry_after is not None:
            self.gate_until = max(self.gate_until, now + retry_after)

"""``client.health()``: whether delivery works, in one word, one sentence and the figures behind them.

The rules, first match wins (``assess``):

1. a disabled client (``enabled=False``) is ``"ok"``: it sends nothing, by design;
2. a closed client is ``"failing"``: it takes no more commands;
3. ``"failing"`` when the oldest command not delivered has waited more than ``stall_warning_after``
   seconds (delivery is stalled), when the last ``FAILING_REQUESTS`` requests in a row got no
   answer (for a blocking client: the last ``FAILING_REQUESTS`` calls raised), or when the API
   refused every command of the last ``FAILING_REQUESTS`` requests (a token it does not know);
4. ``"degraded"`` when commands were dropped, or failed for good, in the last ``RECENT_DROP_SECONDS``
   seconds, when the queue is more than half full (by commands or bytes), or when the last request
   failed or commands wait to be sent again (retrying);
5. ``"ok"`` otherwise.

A readiness endpoint can return ``health.as_dict()`` as JSON, with status 503 unless ``health.ok``
(see the README). Nothing in it is secret: errors are quoted as the client logs them, tokens masked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Literal, NamedTuple, Optional, Tuple

#: What ``Health.status`` may be.
Status = Literal["ok", "degraded", "failing"]

__all__ = ["Health", "Status", "Figures", "assess", "FAILING_REQUESTS", "RECENT_DROP_SECONDS", "FULL_SHARE"]

#: Requests in a row without an answer (or blocking calls in a row that raised) that make "failing".
FAILING_REQUESTS = 3
#: Commands dropped this recently (seconds) make "degraded".
RECENT_DROP_SECONDS = 60.0
#: A queue fuller than this share of its bounds makes "degraded".
FULL_SHARE = 0.5


class Figures(NamedTuple):
    """What ``assess`` judges (gathered by the client)."""

    enabled: bool
    closed: bool
    pending: int
    oldest_pending_seconds: float
    queue_fill: float
    retrying: int
    requests_failed_in_a_row: int
    seconds_since_drop: float
    last_error: str
    stall_warning_after: float
    seconds_since_failure: float = math.inf
    requests_refused_in_a_row: int = 0
    last_failure: str = ""


@dataclass(frozen=True)
class Health:
    """The health of one client: ``status`` (``"ok"``, ``"degraded"`` or ``"failing"``), a ``reason``
    sentence, and the figures behind them (see the module's docstring for the rules)."""

    #: "ok", "degraded" or "failing".
    status: Status
    #: One sentence saying why.
    reason: str
    #: Commands not delivered yet (queued, retrying, in flight, or waiting in the spool after an outage).
    pending: int
    #: How long the oldest of them has waited (0 when none).
    oldest_pending_seconds: float
    #: The share of the queue's bounds in use (commands or bytes, whichever is fuller), from 0 to 1.
    queue_fill: float
    #: Commands waiting to be sent again after a failed attempt.
    retrying: int
    #: Requests in a row that got no answer (blocking client: calls in a row that raised).
    requests_failed_in_a_row: int
    #: Seconds since commands were last dropped (``None``: never).
    seconds_since_drop: Optional[float]
    #: The last error of a request, as the client logs it ("" when none failed).
    last_error: str
    #: The bound past which delivery counts as stalled.
    stall_warning_after: float
    #: Seconds since commands last failed for good: refused, or not delivered in time (``None``: never).
    seconds_since_failure: Optional[float] = None

    @property
    def ok(self) -> bool:
        """True unless ``status`` is ``"failing"`` (a degraded client still delivers)."""
        return self.status != "failing"

    def as_dict(self) -> Dict[str, Any]:
        """The value as a plain dict of JSON types, for a readiness endpoint."""
        return dataclasses.asdict(self)


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _judge(figures: Figures) -> Tuple[Status, str]:
    if not figures.enabled:
        return "ok", "disabled (enabled=False): nothing is sent"
    if figures.closed:
        return "failing", "the client is closed: it takes no more commands"
    last = f"; last error: {figures.last_error}" if figures.last_error else ""
    if figures.oldest_pending_seconds > figures.stall_warning_after:
        return "failing", (
            f"delivery is stalled: {figures.pending} commands wait, the oldest for"
            f" {_age(figures.oldest_pending_seconds)} (stall_warning_after={figures.stall_warning_after:g} s){last}"
        )
    if figures.requests_failed_in_a_row >= FAILING_REQUESTS:
        return "failing", f"the last {figures.requests_failed_in_a_row} requests failed{last}"
    if figures.requests_refused_in_a_row >= FAILING_REQUESTS:
        return "failing", (
            f"the API refused every command of the last {figures.requests_refused_in_a_row} requests: {figures.last_failure}"
        )
    if figures.seconds_since_drop < RECENT_DROP_SECONDS:
        return "degraded", f"commands were dropped {_age(figures.seconds_since_drop)} ago (the queue was full)"
    if figures.seconds_since_failure < RECENT_DROP_SECONDS:
        return "degraded", f"commands failed for good {_age(figures.seconds_since_failure)} ago: {figures.last_failure}"
    if figures.queue_fill > FULL_SHARE:
        return "degraded", f"the queue is {figures.queue_fill:.0%} full"
    if figures.requests_failed_in_a_row or figures.retrying:
        failed = figures.requests_failed_in_a_row
        what = "a request failed" if not failed else "the last request failed" if failed == 1 else f"the last {failed} requests failed"
        if not figures.retrying:  # their commands were let go of (retry_deadline): none is retried
            return "degraded", f"{what}; nothing waits to be sent again{last}"
        return "degraded", f"retrying: {what}; {figures.retrying} commands wait to be sent again{last}"
    if figures.pending:
        return "ok", f"delivering: {figures.pending} commands pending, the oldest for {_age(figures.oldest_pending_seconds)}"
    return "ok", "nothing pending"


def assess(figures: Figures) -> Health:
    """The :class:`Health` that ``figures`` make, by the rules of the module's docstring."""
    status, reason = _judge(figures)
    since_drop, since_failure = figures.seconds_since_drop, figures.seconds_since_failure
    return Health(
        status=status,
        reason=reason,
        pending=figures.pending,
        oldest_pending_seconds=round(figures.oldest_pending_seconds, 3),
        queue_fill=round(figures.queue_fill, 4),
        retrying=figures.retrying,
        requests_failed_in_a_row=figures.requests_failed_in_a_row,
        seconds_since_drop=None if math.isinf(since_drop) else round(since_drop, 3),
        last_error=figures.last_error,
        stall_warning_after=figures.stall_warning_after,
        seconds_since_failure=None if math.isinf(since_failure) else round(since_failure, 3),
    )

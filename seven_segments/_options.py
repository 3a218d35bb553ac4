"""The client's settings, checked in one place: numbers, secrets, callbacks and the buffered limits.

Every check raises ``TypeError``/``ValueError`` naming the setting and the bad value, except for
secrets (tokens, passwords), which are never echoed.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from .protocol import MAX_BULK_COMMANDS
from .types import BeforeSend, ErrorCallback
from ._buffered.limits import MAX_BATCH_BYTES, MAX_IN_FLIGHT, Limits

__all__ = ["MAX_SECONDS", "number", "flag", "utf8_problem", "secret", "check_callbacks", "buffered_limits", "check_spool"]


#: The longest a time setting may be: a thread's wait cannot be much longer (``threading.TIMEOUT_MAX``,
#: about 292 years), and a longer one means "for ever", which the settings say otherwise.
MAX_SECONDS = 365 * 24 * 3600.0


def number(
    name: str, value: Any, *, minimum: float, allow_equal: bool = True, integer: bool = False, seconds: bool = False
) -> Any:
    """Check one numeric setting (``seconds``: a time, at most ``MAX_SECONDS``); raises
    ``ValueError``/``TypeError`` naming it and the bad value."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
    bound = f">= {minimum}" if allow_equal else f"> {minimum}"
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int too large for a float: not quoted (it may have thousands of digits)
        raise ValueError(f"{name} must be a finite number {bound}, not an integer of {int(value).bit_length()} bits") from None
    if not finite or value < minimum or (value == minimum and not allow_equal):
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")
    if seconds and value > MAX_SECONDS:
        raise ValueError(f"{name} must be at most {MAX_SECONDS:.0f} s (a year), not {value!r}")
    return value


def flag(name: str, value: Any) -> bool:
    """Check a True/False setting: anything else (``"false"``, 0, None) is refused naming it, not taken
    by its truth."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {type(value).__name__} {value!r}")
    return value


def utf8_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be sent as UTF-8 (a lone surrogate, and where), without quoting it; else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # its .object is the whole value: never let it travel
        return f"character {error.start + 1} is a lone surrogate, which is not text and cannot be sent as UTF-8"
    return None


def secret(name: str, value: Any) -> str:
    """Check a token or password without ever echoing it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    problem = utf8_problem(value)
    if problem is not None:
        raise ValueError(f"{name} is not valid: {problem}")  # outside the except: no chain to the value
    return value


def check_callbacks(on_error: Optional[ErrorCallback], before_send: Optional[BeforeSend], enabled: Any) -> None:
    """Check ``on_error``, ``before_send`` and ``enabled`` (in both modes: a bad setting is a mistake
    even where it has no effect yet)."""
    if on_error is not None and not callable(on_error):
        raise TypeError(f"on_error must be callable, not {type(on_error).__name__}")
    if before_send is not None and not callable(before_send):
        raise TypeError(f"before_send must be callable, not {type(before_send).__name__}")
    flag("enabled", enabled)


def buffered_limits(
    *,
    retry_deadline: float,
    timeout: float,
    batch_size: Any,
    flush_interval: Any,
    max_queue_size: Any,
    max_queue_bytes: Any,
    max_in_flight: Any,
    shutdown_timeout: Any,
    stall_warning_after: Any,
) -> Limits:
    """The buffered settings, checked (in both modes), as the engine's :class:`Limits`.

    ``retry_deadline`` and ``timeout`` were checked already (they serve blocking calls too).
    """
    batch_size = number("batch_size", batch_size, minimum=1, integer=True)
    if batch_size > MAX_BULK_COMMANDS:
        raise ValueError(f"batch_size must be at most {MAX_BULK_COMMANDS} (the protocol's limit), not {batch_size}")
    max_in_flight = number("max_in_flight", max_in_flight, minimum=1, integer=True)
    if max_in_flight > MAX_IN_FLIGHT:
        raise ValueError(f"max_in_flight must be at most {MAX_IN_FLIGHT}, not {max_in_flight}")
    return Limits(
        batch_size=batch_size,
        max_batch_bytes=MAX_BATCH_BYTES,
        flush_interval=number("flush_interval", flush_interval, minimum=0, allow_equal=False, seconds=True),
        max_queue_size=number("max_queue_size", max_queue_size, minimum=1, integer=True),
        max_queue_bytes=number("max_queue_bytes", max_queue_bytes, minimum=1024, integer=True),
        max_in_flight=max_in_flight,
        retry_deadline=retry_deadline,
        shutdown_timeout=number("shutdown_timeout", shutdown_timeout, minimum=0, seconds=True),
        timeout=timeout,
        stall_warning_after=number("stall_warning_after", stall_warning_after, minimum=0, allow_equal=False, seconds=True),
    )


def check_spool(spool: Optional[str], spool_max_bytes: Any, buffered: bool) -> int:
    """Check the spool's settings (the folder itself is checked when the spool opens); returns ``spool_max_bytes``."""
    spool_max_bytes = number("spool_max_bytes", spool_max_bytes, minimum=1024, integer=True)
    if isinstance(spool, (str, bytes)) and not spool:  # would be the current directory
        raise ValueError("spool must name a folder, not an empty string (None: no spool)")
    if spool is not None and not buffered:
        raise ValueError("spool= needs buffered=True: a blocking client sends each command before it returns")
    return int(spool_max_bytes)

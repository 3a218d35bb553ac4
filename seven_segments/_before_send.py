"""The ``before_send`` hook, run on the caller's thread, and what the client counts there.

:class:`BeforeSendHook` hands each command to the user's hook as a plain dict, checks what comes back
exactly as a caller's input is checked, and reports (to ``on_error``, counted as failed) a command the
hook raised on or spoiled; :class:`CallerCounts` holds the counts of the caller's side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Tuple

from .errors import SevenSegmentsError
from .protocol import PATH_EVENTS
from .serialization import (
    BulkCommandEncoder,
    Command,
    LargeCustomerIds,
    capture_properties,
    check_command_id,
    check_event_type,
    customer_ids,
    timestamp_seconds,
)
from .types import BeforeSend, CommandDict, ErrorCallback
from ._blocking import Tally

__all__ = ["CallerCounts", "BeforeSendHook", "command_dict", "checked_command"]

logger = logging.getLogger(__name__)


class CallerCounts:
    """Counted on the caller's thread (the engine counts what it queues): what ``before_send``
    filtered out or failed on, and what a disabled client discarded."""

    __slots__ = ("filtered", "hook_failed", "discarded", "_failures_flushed")

    def __init__(self) -> None:
        self.filtered, self.hook_failed, self.discarded = Tally(), Tally(), Tally()
        self._failures_flushed = 0  # before_send failures that a flush() already answered for

    def flush_clean(self) -> bool:
        """True when ``before_send`` failed on no command since the last call."""
        failures = self.hook_failed.value
        clean = failures == self._failures_flushed
        self._failures_flushed = failures
        return clean

    def add_to(self, stats: Dict[str, float]) -> Dict[str, float]:
        """``stats`` with these counts added (failures of the hook count as failed)."""
        stats["failed"] = stats.get("failed", 0) + self.hook_failed.value
        stats["filtered"] = stats.get("filtered", 0) + self.filtered.value
        stats["discarded"] = self.discarded.value
        return stats


def _plain_copy(value: Any) -> Any:
    """A copy of captured JSON values (dicts and lists copied all the way down)."""
    if type(value) is dict:
        return {key: _plain_copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_plain_copy(item) for item in value]
    return value


def command_dict(command: Command) -> CommandDict:
    """The command as ``before_send`` sees it: a plain dict of copies (see ``CommandDict``)."""
    path, ids, kind, properties, timestamp, command_id = command[:6]
    if path == PATH_EVENTS:
        return {"name": path, "customer_ids": dict(ids), "type": kind, "properties": _plain_copy(properties),
                "timestamp": timestamp, "command_id": command_id}
    return {"name": path, "ids": dict(ids), "properties": _plain_copy(properties), "timestamp": timestamp,
            "command_id": command_id}


def checked_command(command: Command, sent: Any) -> Tuple[Command, int]:
    """What ``before_send`` returned for ``command``, checked exactly as a caller's input is.

    It must be a dict with the keys it was given (``name`` unchanged); raises ``TypeError`` or
    ``ValueError`` naming the bad key or value.
    """
    if not isinstance(sent, Mapping):
        raise TypeError(f"it must return a dict or None, not {type(sent).__name__}")
    path = command[0]
    ids_key = "customer_ids" if path == PATH_EVENTS else "ids"
    keys = {"name", ids_key, "properties", "timestamp", "command_id"} | ({"type"} if path == PATH_EVENTS else set())
    if set(sent) != keys:
        missing, unknown = sorted(keys - set(sent)), sorted(map(repr, set(sent) - keys))
        raise ValueError(
            "its keys must be " + ", ".join(sorted(keys))
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    if sent["name"] != path:
        raise ValueError(f"name must stay {path!r}, not {sent['name']!r}")
    ids = customer_ids(sent[ids_key], ids_key)
    kind = check_event_type(sent["type"]) if path == PATH_EVENTS else None
    properties, size = capture_properties(sent["properties"])
    if sent["timestamp"] is None:
        raise TypeError("timestamp must be seconds since the epoch or an aware datetime, not None")
    return (path, ids, kind, properties, timestamp_seconds(sent["timestamp"]), check_command_id(sent["command_id"])), size


class BeforeSendHook:
    """The user's ``before_send``, run on the caller's thread; its mistakes drop the command, which
    goes to ``on_error`` (at once, on that thread) and counts as failed: they never raise to the caller.

    ``check_size(command, size)`` is the client's check of a command the server might find too large
    (``properties_room``: properties counted at most this large fit with small customer ids).
    """

    def __init__(
        self,
        hook: BeforeSend,
        on_error: Optional[ErrorCallback],
        counts: CallerCounts,
        properties_room: int,
        check_size: Callable[[Command, int], None],
    ) -> None:
        self._hook = hook
        self._on_error = on_error
        self._counts = counts
        self._properties_room = properties_room
        self._check_size = check_size

    def run(self, command: Command) -> Optional[Tuple[Command, int]]:
        """``command`` as ``before_send`` makes it, checked; ``None`` when it is not to be sent."""
        try:
            sent = self._hook(command_dict(command))
        except Exception as error:  # the hook's mistake: the command is dropped and reported, not sent
            self._report_failure(command, f"before_send raised {type(error).__name__}: {error}")
            return None
        if sent is None:
            self._counts.filtered.add()
            return None
        try:
            checked, size = checked_command(command, sent)
            if size > self._properties_room or type(checked[1]) is LargeCustomerIds:
                self._check_size(checked, size)
            return checked, size
        except (TypeError, ValueError) as error:
            self._report_failure(command, f"before_send returned an invalid command: {error}")
            return None

    def _report_failure(self, command: Command, reason: str) -> None:
        """Count a command that ``before_send`` failed on and pass it, as the caller made it, to ``on_error``."""
        self._counts.hook_failed.add()
        error = SevenSegmentsError(f"{command[0]}: {reason}; the command was dropped, not sent")
        callback = self._on_error
        if callback is None:
            logger.warning("seven_segments: %s", error)
            return
        try:
            callback(error, [BulkCommandEncoder.as_dict(command)])
        except Exception:
            logger.exception("seven_segments: the on_error callback raised")

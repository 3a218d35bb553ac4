"""The public clients: ``SevenSegments`` (tracking) and ``AuthenticatedSevenSegments`` (export)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from itertools import count
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

from .clock import monotonic
from .context import CustomerChoice
from .errors import ClientClosedError, SevenSegmentsError
from .health import Figures, Health, assess
from .protocol import (
    ANALYSIS_TYPES,
    DEFAULT_TARGET,
    MAX_BULK_BYTES,
    MAX_BULK_COMMANDS,
    PATH_ANALYTICS_PREFIX,
    PATH_CUSTOMERS,
    PATH_EVENTS,
    PATH_HTML,
)
from . import serialization
from .serialization import (
    BulkCommandEncoder,
    Command,
    CustomerIds,
    JSONObject,
    LargeCustomerIds,
    Timestamp,
    capture_properties,
    capture_properties_written,
    check_command_id,
    check_command_size,
    check_event_type,
    customer_ids,
    new_command_id,
    properties_room,
    timestamp_seconds,
)
from .network import CertSetting, ProxiesSetting, VerifySetting
from .transport import Backoff, Transport, TransientError, call_with_retries
from .types import AnalysisType, BeforeSend, CommandDict, Customer, ErrorCallback
from ._buffered import BufferedEngine, Limits
from ._buffered.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_STALL_WARNING_AFTER,
    MAX_BATCH_BYTES,
    MAX_IN_FLIGHT,
)

__all__ = ["SevenSegments", "AuthenticatedSevenSegments"]

logger = logging.getLogger(__name__)

_Self = TypeVar("_Self", bound="_ApiClient")
_getpid = os.getpid
#: ``new_command_id``'s bound method: cheaper to call than the instance (0.23 against 0.33 µs here).
_new_command_id = new_command_id.__call__
_NO_EVENT_TYPE = object()

#: Defaults (see the README's "Configuration" table).
DEFAULT_TIMEOUT = 10.0
DEFAULT_BLOCKING_RETRY_DEADLINE = 5.0
DEFAULT_BUFFERED_RETRY_DEADLINE = 300.0
#: Backoff of blocking calls: short, since a caller is waiting.
BLOCKING_BACKOFF = Backoff(initial=0.05, maximum=1.0)


def _number(name: str, value: Any, *, minimum: float, allow_equal: bool = True, integer: bool = False) -> Any:
    """Check one numeric setting; raises ``ValueError``/``TypeError`` naming it and the bad value."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < minimum or (value == minimum and not allow_equal):
        bound = f">= {minimum}" if allow_equal else f"> {minimum}"
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")
    return value


def _utf8_problem(value: str) -> Optional[str]:
    """Why ``value`` cannot be sent as UTF-8 (a lone surrogate, and where), without quoting it; else None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # its .object is the whole value: never let it travel
        return f"character {error.start + 1} is a lone surrogate, which is not text and cannot be sent as UTF-8"
    return None


def _secret(name: str, value: Any) -> str:
    """Check a token or password without ever echoing it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    problem = _utf8_problem(value)
    if problem is not None:
        raise ValueError(f"{name} is not valid: {problem}")  # outside the except: no chain to the value
    return value


class _ApiClient:
    """What both clients share: a transport, blocking calls with retries, closing."""

    def __init__(
        self,
        target: str,
        timeout: float,
        retry_deadline: float,
        secrets: Tuple[str, ...],
        gzip: bool,
        auth: Any,
        call_deadline: Optional[float] = None,
        network: Optional[Dict[str, Any]] = None,
    ) -> None:
        self._timeout = _number("timeout", timeout, minimum=0, allow_equal=False)
        self._retry_deadline = _number("retry_deadline", retry_deadline, minimum=0)
        #: How long a call that the caller waits for (blocking track/update, get_html, export) retries.
        self._call_deadline = self._retry_deadline if call_deadline is None else call_deadline
        # network: the keywords proxies, verify and cert, checked (and the environment read) by Transport.
        self._transport = Transport(
            target, timeout=self._timeout, gzip=gzip, secrets=secrets, auth=auth, **(network or {})
        )
        self._closed = False
        self._sleep: Callable[[float], None] = time.sleep

    @property
    def target(self) -> str:
        """The API's base URL."""
        return self._transport.target

    def _call(
        self,
        path: str,
        body: bytes,
        params: Optional[Dict[str, str]] = None,
        on_retry: Optional[Callable[[TransientError, float], None]] = None,
    ) -> Dict[str, Any]:
        """One blocking call: retried on passing failures for the call deadline, raises otherwise.

        Each attempt may take the full ``timeout``; the deadline decides whether to try again, so a
        call takes at most about ``retry_deadline + timeout``.
        """
        if self._closed:
            raise ClientClosedError(f"{type(self).__name__} is closed")
        end = monotonic() + self._call_deadline
        return call_with_retries(
            lambda timeout: self._transport.post(path, body, timeout=timeout, params=params),
            what=path,
            deadline=lambda: end,
            timeout=self._timeout,
            backoff=BLOCKING_BACKOFF,
            sleep=self._sleep,
            on_retry=on_retry,
        )

    def close(self, timeout: Optional[float] = None) -> None:
        """Release the connection pool. Idempotent."""
        self._closed = True
        self._transport.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        self.close()


def _encode(data: JSONObject) -> bytes:
    """The body of a blocking call: ``data`` holds only checked plain values (see serialization)."""
    return serialization._WRITER.data(data)


class _Tally:
    """A counter that threads may bump at once, without a lock: ``next()`` of an ``itertools.count``
    is atomic, and no lock can be inherited held by a ``fork()`` child."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = count(1)

    def add(self, *_: Any) -> None:
        """Count one (any arguments are ignored, so that it can serve as a callback)."""
        next(self._count)

    @property
    def value(self) -> int:
        """How many were counted."""
        return int(repr(self._count)[6:-1]) - 1  # "count(N)": N is the next number it would give


def _plain_copy(value: Any) -> Any:
    """A copy of captured JSON values (dicts and lists copied all the way down)."""
    if type(value) is dict:
        return {key: _plain_copy(item) for key, item in value.items()}
    if type(value) is list:
        return [_plain_copy(item) for item in value]
    return value


def _command_dict(command: Command) -> CommandDict:
    """The command as ``before_send`` sees it: a plain dict of copies (see ``CommandDict``)."""
    path, ids, kind, properties, timestamp, command_id = command[:6]
    if path == PATH_EVENTS:
        return {"name": path, "customer_ids": dict(ids), "type": kind, "properties": _plain_copy(properties),
                "timestamp": timestamp, "command_id": command_id}
    return {"name": path, "ids": dict(ids), "properties": _plain_copy(properties), "timestamp": timestamp,
            "command_id": command_id}


def _checked_command(command: Command, sent: Any) -> Tuple[Command, int]:
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


class SevenSegments(_ApiClient, CustomerChoice):
    """Client of the 7SEGMENTS tracking API.

    ``SevenSegments(token, customer=None)`` as in the seed; ``customer`` is a string id (meaning
    ``{"registered": id}``) or a dict of id types to ids. Keywords:

    - ``target``: base URL of the API (default ``https://api.7segments.com``).
    - ``buffered``: ``False`` (default) sends each ``track``/``update`` as one request and returns when
      the server accepted it; ``True`` queues them and returns at once, a background thread sending
      ``bulk`` requests (see ``flush``, ``close``, ``stats``).
    - ``timeout`` (10 s): the longest wait for one answer. ``retry_deadline``: how long passing failures
      are retried (5 s blocking, 300 s buffered).
    - Buffered only: ``batch_size`` (1000 commands, at most 1000), ``flush_interval`` (0.5 s: the oldest
      queued command waits at most this long), ``max_queue_size`` (1,000,000 commands) and
      ``max_queue_bytes`` (64 MiB) bound the queue (past them commands are dropped, counted and passed
      to ``on_error``), ``shutdown_timeout`` (5 s: how long exit or ``close()`` may take to deliver),
      ``max_in_flight`` (16: requests in flight at once; the window shrinks to one on a passing failure
      and grows back on success), ``spool`` (a folder: every command is written there before ``track``
      returns, so that a process killed at any moment loses nothing; the next client on the folder
      for the same ``target`` delivers what was left), ``spool_max_bytes`` (256 MiB: past it, or on a full
      disk, commands are sent from memory only, counted as ``not_spooled``) and ``spool_fsync`` (False:
      with True, each command is also flushed to the disk, which survives a power loss at the cost of a
      disk flush per call),
      ``on_error(error, commands)`` (called on the worker thread for commands that could not be
      delivered), ``gzip`` (True: compress request bodies of 1 KiB or more).
    - The network (both modes): ``proxies`` (a dict of scheme to proxy URL, as ``requests`` takes it;
      default: the ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` environment variables), ``verify`` (the
      path of a CA bundle, a file or a folder; default: ``REQUESTS_CA_BUNDLE`` or certifi's;
      ``False`` is refused) and ``cert`` (a client certificate for mutual TLS: a PEM file with its
      key, or a ``(certificate, key)`` pair). See ``seven_segments.network``.
    - ``before_send(command)`` (both modes): called with each tracking command as a plain dict
      (``CommandDict``: ``name``, ``customer_ids`` or ``ids``, ``type``, ``properties``, ``timestamp``,
      ``command_id``) on the CALLER's thread, inside ``track``/``update``, before it is queued or sent
      (so a slow hook slows only the call that runs it); it returns the command to send (changed or
      not, checked again exactly as a caller's input) or ``None`` to drop it (counted as
      ``filtered``). A hook that raises or returns something invalid drops that command (never sent as
      it was): ``on_error`` is called with it at once, on the caller's thread, and it counts as
      ``failed``; ``track``/``update`` do not raise for the hook's mistakes.
    - ``enabled`` (True): with ``False`` every call is checked as usual (bad input still raises) but
      nothing is queued, sent or kept, no thread is started: ``track``/``update`` count the command as
      ``discarded``, ``get_html`` returns ``''``, ``flush`` returns True. For development and CI.
    - ``stall_warning_after`` (300 s, buffered): when a command has waited this long for delivery, a
      warning says how many wait, for how long, and the last error (then at most one a minute while it
      lasts, and one line when delivery resumes); ``health()`` says ``"failing"`` meanwhile.

    One client may be shared by all threads; pass ``customer=`` per call, or run the request inside
    ``customer_context(customer)``, rather than ``identify`` when threads serve different customers.
    """

    def __init__(
        self,
        token: str,
        customer: Optional[Customer] = None,
        *,
        target: str = DEFAULT_TARGET,
        buffered: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry_deadline: Optional[float] = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        spool: Optional[str] = None,
        spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
        spool_fsync: bool = False,
        on_error: Optional[ErrorCallback] = None,
        gzip: bool = True,
        before_send: Optional[BeforeSend] = None,
        enabled: bool = True,
        proxies: ProxiesSetting = None,
        verify: VerifySetting = True,
        cert: CertSetting = None,
        stall_warning_after: float = DEFAULT_STALL_WARNING_AFTER,
    ) -> None:
        self._token = _secret("token", token)
        if retry_deadline is None:
            retry_deadline = DEFAULT_BUFFERED_RETRY_DEADLINE if buffered else DEFAULT_BLOCKING_RETRY_DEADLINE
        # A buffered client's retry_deadline is the worker's; get_html still answers within seconds.
        call_deadline = DEFAULT_BLOCKING_RETRY_DEADLINE if buffered else None
        super().__init__(
            target, timeout, retry_deadline, (token,), bool(gzip), None, call_deadline,
            network={"proxies": proxies, "verify": verify, "cert": cert},
        )
        self._init_customer(None if customer is None else customer_ids(customer))
        #: Properties that ``capture_properties`` counts at most this large fit in a command with
        #: any customer ids that are not ``LargeCustomerIds``; a command past it is measured.
        self._properties_room = properties_room(self._token)
        #: The last string ``customer=`` passed to a call and its ids: one ids object for a run of
        #: calls for one customer (the engine's encoder reuses its JSON for the same object).
        self._last_customer: Tuple[Optional[str], CustomerIds] = (None, {})
        #: The last event type ``track`` checked (see ``_event_type``): at first, no string at all.
        self._last_event_type: object = _NO_EVENT_TYPE
        self._worker: Optional[BufferedEngine] = None
        #: How ``track``/``update`` check and capture properties (see ``capture_properties_written``).
        self._capture: Callable[[Any], Tuple[Union[JSONObject, str, bytes], int]] = capture_properties
        # Checked in both modes: a bad setting is a mistake even where it has no effect yet.
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, not {type(on_error).__name__}")
        if before_send is not None and not callable(before_send):
            raise TypeError(f"before_send must be callable, not {type(before_send).__name__}")
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, not {type(enabled).__name__} {enabled!r}")
        self._on_error = on_error
        self._before_send = before_send
        self._enabled = enabled
        self._buffered = bool(buffered)
        # Counted here (the worker counts what it queues): what before_send filtered out or failed on,
        # what a disabled client discarded, and what a blocking client sent, retried and failed.
        self._filtered, self._hook_failed, self._discarded = _Tally(), _Tally(), _Tally()
        self._sent, self._retried, self._failed = _Tally(), _Tally(), _Tally()
        self._hook_failures_flushed = 0  # before_send failures that a flush() already answered for
        #: A blocking client's calls in a row that raised, and the last error (for ``health()``).
        self._calls_failed_in_a_row = 0
        self._last_call_error = ""
        batch_size = _number("batch_size", batch_size, minimum=1, integer=True)
        if batch_size > MAX_BULK_COMMANDS:
            raise ValueError(f"batch_size must be at most {MAX_BULK_COMMANDS} (the protocol's limit), not {batch_size}")
        max_in_flight = _number("max_in_flight", max_in_flight, minimum=1, integer=True)
        if max_in_flight > MAX_IN_FLIGHT:
            raise ValueError(f"max_in_flight must be at most {MAX_IN_FLIGHT}, not {max_in_flight}")
        limits = Limits(
            batch_size=batch_size,
            max_batch_bytes=MAX_BATCH_BYTES,
            flush_interval=_number("flush_interval", flush_interval, minimum=0, allow_equal=False),
            max_queue_size=_number("max_queue_size", max_queue_size, minimum=1, integer=True),
            max_queue_bytes=_number("max_queue_bytes", max_queue_bytes, minimum=1024, integer=True),
            max_in_flight=max_in_flight,
            retry_deadline=self._retry_deadline,
            shutdown_timeout=_number("shutdown_timeout", shutdown_timeout, minimum=0),
            timeout=self._timeout,
            stall_warning_after=_number("stall_warning_after", stall_warning_after, minimum=0, allow_equal=False),
        )
        self._stall_warning_after = limits.stall_warning_after
        spool_max_bytes = _number("spool_max_bytes", spool_max_bytes, minimum=1024, integer=True)
        if spool is not None and not buffered:
            raise ValueError("spool= needs buffered=True: a blocking client sends each command before it returns")
        if buffered and enabled:
            durable = None
            if spool is not None:
                from . import process_hooks
                from .spool import Spool, is_command, lock_held_here  # only for clients that use one: the command line starts faster

                durable = Spool(  # a bad folder raises here
                    spool, max_bytes=spool_max_bytes, fsync=bool(spool_fsync), target=self.target, accepts=is_command
                )
                process_hooks.register_lock_check(lock_held_here)
            self._worker = BufferedEngine(token, self._transport, limits, on_error, spool=durable)
            if before_send is None:
                # Queued commands are their JSON from the call on: capture that, not a copy.
                self._capture = capture_properties_written

    def __repr__(self) -> str:
        mode = "buffered" if self._buffered else "blocking"
        if not self._enabled:
            mode += ", disabled"
        return f"SevenSegments(target={self.target!r}, customer={self._identified!r}, {mode})"

    @property
    def buffered(self) -> bool:
        """True when ``track`` and ``update`` are queued and sent in the background (when enabled)."""
        return self._buffered

    @property
    def enabled(self) -> bool:
        """False when the client checks every call but sends nothing (``enabled=False``)."""
        return self._enabled

    @property
    def customer(self) -> Optional[CustomerIds]:
        """The identified customer's ids, or None (a ``customer_context`` does not change it)."""
        return None if self._identified is None else dict(self._identified)

    def identify(self, customer: Customer, properties: Optional[Mapping[str, Any]] = None) -> None:
        """Make ``customer`` the client's current customer (for every thread: an active ``customer_context``
        comes first); with ``properties``, also ``update`` them."""
        self._identify_ids(customer_ids(customer))
        if properties is not None:
            self.update(properties)

    def _event_type(self, event_type: Any) -> str:
        """``check_event_type``, remembering the last plain string it passed: most calls name their
        type with a literal, the same object each time, which needs no second check."""
        kind = check_event_type(event_type)
        if kind is event_type:  # a plain str (immutable), not a subclass or a converted copy
            self._last_event_type = kind
        return kind

    def _ids(self, customer: Optional[Customer]) -> CustomerIds:
        if customer is not None:
            if type(customer) is str:  # a string id, often the same one several calls in a row
                last = self._last_customer  # (id, ids), read and replaced whole: safe across threads
                if last[0] is customer:
                    return last[1]
                ids = customer_ids(customer)
                self._last_customer = (customer, ids)
                return ids
            return customer_ids(customer)
        if self._customer_ids is None:  # look further: contexts (once used), then the identified customer
            return self._context_or_identified()
        return self._customer_ids

    def track(
        self,
        event_type: str,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        customer: Optional[Customer] = None,
        timestamp: Optional[Timestamp] = None,
        command_id: Optional[str] = None,
    ) -> str:
        """Track an event of type ``event_type`` (with ``properties``) for the customer; returns its ``command_id``.

        ``timestamp`` (seconds since the epoch, not milliseconds, or an aware ``datetime``) defaults
        to now. ``command_id`` (1 to 64 characters of ``[A-Za-z0-9_-]``, such as an order number) is
        the idempotency key: a command sent again with the same one, from this or another process, is
        applied once; by default a unique one is made. Bad input raises ``TypeError``/``ValueError``
        here, before anything is queued or sent. A ``before_send`` hook runs here, on this thread.
        """
        if self._closed:
            raise ClientClosedError("this SevenSegments client is closed; it takes no more events")
        ids = self._customer_ids if customer is None else None
        if ids is None:
            ids = self._ids(customer)
        kind = event_type if event_type is self._last_event_type else self._event_type(event_type)
        worker = self._worker
        if worker is not None and command_id is None and timestamp is None and type(properties) is dict:
            if self._before_send is None:
                # The engine's encoder checks, writes and measures the properties on this thread, in one
                # pass, raising what capture_properties_written and _check_size raise (BulkCommandEncoder).
                pid = _getpid()
                command_id = _new_command_id(pid)
                worker.submit((PATH_EVENTS, ids, kind, properties, time.time(), command_id), pid)
                return command_id
        captured, size = self._capture(properties)
        pid = _getpid()  # once per call: the id and the engine both need it (a fork changes both)
        command_id = _new_command_id(pid) if command_id is None else check_command_id(command_id)
        command = (
            PATH_EVENTS, ids, kind, captured, time.time() if timestamp is None else timestamp_seconds(timestamp),
            command_id,
        )
        if size > self._properties_room or type(ids) is LargeCustomerIds:
            self._check_size(command, size)  # perhaps more than the server takes
        if worker is not None and self._before_send is None:
            worker.submit(command, pid)
            return command_id
        return self._dispatch(command, size)

    def update(
        self,
        properties: Mapping[str, Any],
        *,
        customer: Optional[Customer] = None,
        timestamp: Optional[Timestamp] = None,
        command_id: Optional[str] = None,
    ) -> str:
        """Update the customer's properties (merged property by property, later timestamp wins).

        ``timestamp`` and ``command_id`` as for ``track``; returns the command's ``command_id``.
        """
        if self._closed:
            raise ClientClosedError("this SevenSegments client is closed; it takes no more updates")
        if properties is None:
            raise TypeError("properties must be a dict of customer properties, not None")
        ids = self._customer_ids if customer is None else None
        if ids is None:
            ids = self._ids(customer)
        worker = self._worker
        if worker is not None and command_id is None and timestamp is None and type(properties) is dict:
            if self._before_send is None:  # checked, written and measured as in track
                pid = _getpid()
                command_id = _new_command_id(pid)
                worker.submit((PATH_CUSTOMERS, ids, None, properties, time.time(), command_id), pid)
                return command_id
        captured, size = self._capture(properties)
        pid = _getpid()  # once per call: the id and the engine both need it (a fork changes both)
        command_id = _new_command_id(pid) if command_id is None else check_command_id(command_id)
        command = (
            PATH_CUSTOMERS, ids, None, captured, time.time() if timestamp is None else timestamp_seconds(timestamp),
            command_id,
        )
        if size > self._properties_room or type(ids) is LargeCustomerIds:
            self._check_size(command, size)  # perhaps more than the server takes
        if worker is not None and self._before_send is None:
            worker.submit(command, pid)
            return command_id
        return self._dispatch(command, size)

    def _check_size(self, command: Command, size: int) -> None:
        """``ValueError`` naming the largest part of a command that the server would refuse as too
        large (its properties counted ``size``: see ``properties_room``)."""
        ids = command[1]
        if type(ids) is LargeCustomerIds and size <= properties_room(self._token, ids.json_bytes):
            return
        check_command_size(command, self._token)

    def _dispatch(self, command: Command, size: int) -> str:
        """Every checked command that is not simply queued: disabled, through ``before_send``, or
        sent now (blocking). Returns the ``command_id`` it went with."""
        if not self._enabled:
            self._discarded.add()
            return command[5]
        if self._before_send is not None:
            hooked = self._run_before_send(self._before_send, command)
            if hooked is None:
                return command[5]
            command, size = hooked
        if self._worker is not None:
            self._worker.submit(command)
        else:
            self._send_now(command)
        return command[5]

    def _run_before_send(self, hook: BeforeSend, command: Command) -> Optional[Tuple[Command, int]]:
        """``command`` as ``before_send`` makes it, checked; ``None`` when it is not to be sent."""
        try:
            sent = hook(_command_dict(command))
        except Exception as error:  # the hook's mistake: the command is dropped and reported, not sent
            self._report_hook_failure(command, f"before_send raised {type(error).__name__}: {error}")
            return None
        if sent is None:
            self._filtered.add()
            return None
        try:
            checked, size = _checked_command(command, sent)
            if size > self._properties_room or type(checked[1]) is LargeCustomerIds:
                self._check_size(checked, size)
            return checked, size
        except (TypeError, ValueError) as error:
            self._report_hook_failure(command, f"before_send returned an invalid command: {error}")
            return None

    def _report_hook_failure(self, command: Command, reason: str) -> None:
        """Count a command that ``before_send`` failed on and pass it, as the caller made it, to ``on_error``."""
        self._hook_failed.add()
        error = SevenSegmentsError(f"{command[0]}: {reason}; the command was dropped, not sent")
        callback = self._on_error
        if callback is None:
            logger.warning("seven_segments: %s", error)
            return
        try:
            callback(error, [BulkCommandEncoder.as_dict(command)])
        except Exception:
            logger.exception("seven_segments: the on_error callback raised")

    def _send_now(self, command: Command) -> None:
        data = {"company_id": self._token, **BulkCommandEncoder.as_dict(command)["data"]}
        try:
            self._call(command[0], _encode(data), on_retry=self._retried.add)
        except Exception as error:
            self._failed.add()
            self._calls_failed_in_a_row += 1
            self._last_call_error = str(error) if isinstance(error, SevenSegmentsError) else type(error).__name__
            raise
        self._sent.add()
        self._calls_failed_in_a_row = 0

    def get_html(self, campaign_name: str, *, customer: Optional[Customer] = None) -> str:
        """The HTML of campaign ``campaign_name`` for the customer (``''`` when it shows nothing to them,
        and always ``''`` from a disabled client, which sends nothing)."""
        if not isinstance(campaign_name, str) or not campaign_name:
            raise ValueError(f"campaign_name must be a non-empty string, not {campaign_name!r}")
        data = {"company_id": self._token, "customer_ids": self._ids(customer), "html_campaign_name": campaign_name}
        if not self._enabled:
            if self._closed:
                raise ClientClosedError(f"{type(self).__name__} is closed")
            return ""
        answer = self._call(PATH_HTML, _encode(data))
        html = answer.get("data")
        if not isinstance(html, str):
            raise SevenSegmentsError(f"{PATH_HTML}: the answer has no 'data' string", status=200)
        return html

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far was delivered or failed for good (or ``timeout`` s).

        True only when all of it was delivered (and nothing was dropped since the last flush, nor
        failed in ``before_send``; what it filtered out is not lost). Blocking and disabled clients
        have nothing queued: True unless ``before_send`` failed on a command since the last flush.
        """
        if timeout is not None:
            _number("timeout", timeout, minimum=0)
        delivered = True if self._worker is None else self._worker.flush(timeout)
        hook_failures = self._hook_failed.value
        clean = hook_failures == self._hook_failures_flushed
        self._hook_failures_flushed = hook_failures
        return delivered and clean

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued (waiting at most ``timeout``, default ``shutdown_timeout``), then stop.

        Idempotent; later ``track``/``update`` raise ``ClientClosedError``. A buffered client that is
        never closed is closed at interpreter exit.
        """
        if timeout is not None:
            _number("timeout", timeout, minimum=0)
        self._closed = True
        if self._worker is not None:
            self._worker.close(timeout)
        else:
            self._transport.close()

    def stats(self) -> Dict[str, float]:
        """Counts since the client was made: queued, sent, retried, failed, unconfirmed (in flight when a
        close gave up: perhaps applied), dropped (``dropped_queue_full`` + ``dropped_closed``), batches,
        in_flight, pending, filtered (dropped by ``before_send`` returning ``None``) and discarded (by a
        disabled client); ``pending_bytes`` (the memory the pending commands take, as ``max_queue_bytes``
        counts it), ``spool_bytes`` (the size of the spool's files) and ``oldest_pending_seconds`` (how
        long the oldest command not delivered yet has waited; 0 when none). The keys are the same in
        both modes.

        ``failed`` includes the commands ``before_send`` failed on. A blocking client counts each
        ``track``/``update`` that the server accepted as sent, each that raised as failed, and each
        retry of one as retried.
        """
        stats: Dict[str, float]
        if self._worker is None:
            stats = {
                "queued": 0, "sent": self._sent.value, "retried": self._retried.value, "failed": self._failed.value,
                "unconfirmed": 0, "dropped": 0, "dropped_queue_full": 0, "dropped_closed": 0,
                "replayed": 0, "not_spooled": 0, "kept_in_spool": 0, "batches": 0, "in_flight": 0, "pending": 0,
                "pending_bytes": 0, "spool_bytes": 0, "oldest_pending_seconds": 0.0,
            }
        else:
            stats = self._worker.stats()
        stats["failed"] = stats.get("failed", 0) + self._hook_failed.value
        stats["filtered"] = stats.get("filtered", 0) + self._filtered.value
        stats["discarded"] = self._discarded.value
        return stats

    def health(self) -> Health:
        """Whether delivery works: a :class:`Health` whose ``status`` is ``"ok"``, ``"degraded"`` or
        ``"failing"``, with a ``reason`` sentence and the figures behind it (the rules are in
        ``seven_segments.health``). Cheap, from any thread; ``as_dict()`` gives it as JSON types."""
        if self._worker is not None:
            figures = self._worker.figures()
        else:
            figures = Figures(
                enabled=self._enabled,
                closed=self._closed,
                pending=0,
                oldest_pending_seconds=0.0,
                queue_fill=0.0,
                retrying=0,
                requests_failed_in_a_row=self._calls_failed_in_a_row,
                seconds_since_drop=math.inf,
                last_error=self._last_call_error,
                stall_warning_after=self._stall_warning_after,
                seconds_since_failure=math.inf,  # a refused call raised in its caller, and counts above
                requests_refused_in_a_row=0,
                last_failure="",
            )
        return assess(figures)


class AuthenticatedSevenSegments(_ApiClient):
    """Client of the 7SEGMENTS export API, with the credentials of a user that has export access."""

    def __init__(
        self,
        username: str,
        password: str,
        *,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT,
        retry_deadline: float = DEFAULT_BLOCKING_RETRY_DEADLINE,
        proxies: ProxiesSetting = None,
        verify: VerifySetting = True,
        cert: CertSetting = None,
    ) -> None:
        if not isinstance(username, str) or not username:
            raise ValueError(f"username must be a non-empty string, not {username!r}")
        problem = _utf8_problem(username)
        if problem is not None:
            raise ValueError(f"username {username!r} is not valid: {problem}")
        _secret("password", password)
        self._username = username
        super().__init__(
            target, timeout, retry_deadline, (password,), False, (username, password),
            network={"proxies": proxies, "verify": verify, "cert": cert},
        )

    def __repr__(self) -> str:
        return f"AuthenticatedSevenSegments(username={self._username!r}, target={self.target!r})"

    def export_analysis(
        self, analysis_type: AnalysisType, data: Mapping[str, Any], token: Optional[str] = None
    ) -> Dict[str, Any]:
        """Export an analysis (``funnel``, ``report``, ``retention`` or ``segmentation``) as a dict.

        ``data`` is the request, e.g. ``{"analysis_id": "..."}``; ``token`` picks the company when the
        user can reach several.
        """
        if analysis_type not in ANALYSIS_TYPES:
            raise ValueError(f"analysis type {analysis_type!r} is not one of {', '.join(sorted(ANALYSIS_TYPES))}")
        body, _ = capture_properties(data, "data")
        params = None
        if token is not None:
            params = {"company": _secret("token", token)}
            self._transport.add_secret(token)
        return self._call(PATH_ANALYTICS_PREFIX + analysis_type, _encode(body), params)

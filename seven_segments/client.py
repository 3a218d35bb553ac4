"""The public clients: ``SevenSegments`` (tracking) and ``AuthenticatedSevenSegments`` (export)."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union

from .clock import monotonic
from .context import CustomerChoice
from .errors import ClientClosedError, SevenSegmentsError
from .health import Health, assess
from .process_id import current_pid
from .protocol import (
    ANALYSIS_TYPES,
    DEFAULT_TARGET,
    PATH_ANALYTICS_PREFIX,
    PATH_CUSTOMERS,
    PATH_EVENTS,
    PATH_HTML,
)
from .serialization import (
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
from .types import AnalysisType, BeforeSend, Customer, ErrorCallback
from ._buffered import BufferedEngine, Limits
from ._before_send import BeforeSendHook, CallerCounts
from ._blocking import BlockingDelivery, Call, Delivery, encode as _encode
from ._options import buffered_limits, check_callbacks, check_spool
from ._options import flag as _flag, number as _number, secret as _secret, utf8_problem as _utf8_problem
from ._buffered.limits import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_SPOOL_MAX_BYTES,
    DEFAULT_STALL_WARNING_AFTER,
)

__all__ = ["SevenSegments", "AuthenticatedSevenSegments"]

logger = logging.getLogger(__name__)

_Self = TypeVar("_Self", bound="_ApiClient")
_getpid = current_pid  # every track reads it: no system call (see process_id.py)
#: ``new_command_id``'s bound method: cheaper to call than the instance (0.23 against 0.33 µs here).
_new_command_id = new_command_id.__call__
_NO_EVENT_TYPE = object()

#: Defaults (see the README's "Configuration" table).
DEFAULT_TIMEOUT = 10.0
DEFAULT_BLOCKING_RETRY_DEADLINE = 5.0
DEFAULT_BUFFERED_RETRY_DEADLINE = 300.0
#: Backoff of blocking calls: short, since a caller is waiting.
BLOCKING_BACKOFF = Backoff(initial=0.05, maximum=1.0)


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
        self._timeout = _number("timeout", timeout, minimum=0, allow_equal=False, seconds=True)
        self._retry_deadline = _number("retry_deadline", retry_deadline, minimum=0, seconds=True)
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


def _check_size(token: str, command: Command, size: int) -> None:
    """``ValueError`` naming the largest part of a command that the server would refuse as too
    large (its properties counted ``size``: see ``properties_room``)."""
    ids = command[1]
    if type(ids) is LargeCustomerIds and size <= properties_room(token, ids.json_bytes):
        return
    check_command_size(command, token)


def _open_delivery(
    token: str, transport: Transport, call: Call, limits: Limits, *, engine: bool, enabled: bool,
    on_error: Optional[ErrorCallback], spool: Optional[str], spool_max_bytes: int, spool_fsync: bool,
) -> Tuple[Optional[BufferedEngine], Delivery]:
    """Where a client's commands go: the engine of an enabled buffered client (built here only, with
    its spool when it has a folder: a bad folder raises here), else the blocking delivery, which also
    answers for a disabled client."""
    if not engine:
        return None, BlockingDelivery(
            token, call, transport.close, enabled=enabled, stall_warning_after=limits.stall_warning_after
        )
    durable = None
    if spool is not None:
        from . import process_hooks
        from .spool import Spool, is_command, lock_held_here  # only for clients that use one: the command line starts faster

        durable = Spool(
            spool, max_bytes=spool_max_bytes, fsync=spool_fsync, target=transport.target, accepts=is_command
        )
        process_hooks.register_lock_check(lock_held_here)
    buffered = BufferedEngine(token, transport, limits, on_error, spool=durable)
    return buffered, buffered


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
      ``max_in_flight`` (32: requests in flight at once; the window shrinks to one on a passing failure
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
    - ``before_send(command)`` (both modes): called on the CALLER's thread, inside ``track``/``update``,
      with each tracking command as a plain dict (``CommandDict``: ``name``, ``customer_ids`` or ``ids``,
      ``type``, ``properties``, ``timestamp``, ``command_id``); it returns the command to send (checked
      again as a caller's input) or ``None`` to drop it (``filtered``). A hook that raises or returns
      something invalid drops that command: ``on_error`` gets it at once, it counts as ``failed``, and
      ``track``/``update`` do not raise for the hook's mistakes.
    - ``enabled`` (True): with ``False`` every call is checked as usual (bad input still raises) but
      nothing is queued, sent or kept, no thread is started: ``track``/``update`` count the command as
      ``discarded``, ``get_html`` returns ``''``, ``flush`` returns True. For development and CI.
    - ``stall_warning_after`` (300 s, buffered): a warning when a command has waited this long, naming
      how many wait and the last error (then one a minute at most, and one line when delivery resumes);
      ``health()`` says ``"failing"`` meanwhile.

    One client may be shared by all threads; pass ``customer=`` per call, or run the request inside
    ``customer_context(customer)``, rather than ``identify`` when threads serve different customers.
    """

    #: How ``track``/``update`` check and capture properties (see ``capture_properties_written``).
    _capture: Callable[[Any], Tuple[Union[JSONObject, str, bytes], int]]

    def __init__(
        self,
        token: str,
        customer: Optional[Customer] = None,
        *,
        target: str = DEFAULT_TARGET,
        buffered: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        retry_deadline: Optional[float] = None,
        # buffered only:
        batch_size: int = DEFAULT_BATCH_SIZE, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        spool: Optional[str] = None, spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES, spool_fsync: bool = False,
        on_error: Optional[ErrorCallback] = None,
        gzip: bool = True,
        before_send: Optional[BeforeSend] = None,
        enabled: bool = True,
        proxies: ProxiesSetting = None, verify: VerifySetting = True, cert: CertSetting = None,
        stall_warning_after: float = DEFAULT_STALL_WARNING_AFTER,
    ) -> None:
        self._token = _secret("token", token)
        buffered, gzip, spool_fsync = _flag("buffered", buffered), _flag("gzip", gzip), _flag("spool_fsync", spool_fsync)
        if retry_deadline is None:
            retry_deadline = DEFAULT_BUFFERED_RETRY_DEADLINE if buffered else DEFAULT_BLOCKING_RETRY_DEADLINE
        # A buffered client's retry_deadline is the worker's; get_html still answers within seconds.
        call_deadline = DEFAULT_BLOCKING_RETRY_DEADLINE if buffered else None
        super().__init__(
            target, timeout, retry_deadline, (token,), gzip, None, call_deadline,
            network={"proxies": proxies, "verify": verify, "cert": cert},
        )
        self._init_customer(None if customer is None else customer_ids(customer))
        self._init_fast_path()
        check_callbacks(on_error, before_send, enabled)
        self._before_send, self._enabled, self._buffered = before_send, enabled, buffered
        self._counts = CallerCounts()
        self._hook = None if before_send is None else BeforeSendHook(
            before_send, on_error, self._counts, self._properties_room, self._check_size
        )
        limits = buffered_limits(
            retry_deadline=self._retry_deadline, timeout=self._timeout, batch_size=batch_size,
            flush_interval=flush_interval, max_queue_size=max_queue_size, max_queue_bytes=max_queue_bytes,
            max_in_flight=max_in_flight, shutdown_timeout=shutdown_timeout, stall_warning_after=stall_warning_after,
        )
        self._engine, self._delivery = _open_delivery(
            token, self._transport, self._call, limits, engine=buffered and enabled, enabled=enabled, on_error=on_error,
            spool=spool, spool_max_bytes=check_spool(spool, spool_max_bytes, buffered), spool_fsync=spool_fsync,
        )
        if self._engine is not None and before_send is None:
            self._capture = capture_properties_written  # queued commands are their JSON from the call on: no copy

    def _init_fast_path(self) -> None:
        """What ``track`` and ``update`` remember between calls, to check less on the next one."""
        #: Properties that ``capture_properties`` counts at most this large fit in a command with
        #: any customer ids that are not ``LargeCustomerIds``; a command past it is measured.
        self._properties_room = properties_room(self._token)
        self._check_size: Callable[[Command, int], None] = functools.partial(_check_size, self._token)
        #: The last event type ``track`` checked (see ``_event_type``): at first, no string at all.
        self._last_event_type: object = _NO_EVENT_TYPE
        self._capture = capture_properties

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
        engine = self._engine
        if engine is not None and command_id is None and timestamp is None and type(properties) is dict:
            if self._before_send is None:
                # The engine's encoder checks, writes and measures the properties on this thread, in one
                # pass, raising what capture_properties_written and _check_size raise (BulkCommandEncoder).
                pid = _getpid()
                command_id = _new_command_id(pid)
                engine.submit((PATH_EVENTS, ids, kind, properties, time.time(), command_id), pid)
                return command_id
        return self._checked_command(PATH_EVENTS, ids, kind, properties, timestamp, command_id)

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
        engine = self._engine
        if engine is not None and command_id is None and timestamp is None and type(properties) is dict:
            if self._before_send is None:  # checked, written and measured as in track
                pid = _getpid()
                command_id = _new_command_id(pid)
                engine.submit((PATH_CUSTOMERS, ids, None, properties, time.time(), command_id), pid)
                return command_id
        return self._checked_command(PATH_CUSTOMERS, ids, None, properties, timestamp, command_id)

    def _checked_command(
        self, path: str, ids: CustomerIds, kind: Optional[str], properties: Optional[Mapping[str, Any]],
        timestamp: Optional[Timestamp], command_id: Optional[str],
    ) -> str:
        """``track`` and ``update`` the careful way (a command id, a timestamp, a hook, not a dict, or
        not buffered): the properties checked and captured, the command measured, then queued or sent."""
        captured, size = self._capture(properties)
        pid = _getpid()  # once per call: the id and the engine both need it (a fork changes both)
        command_id = _new_command_id(pid) if command_id is None else check_command_id(command_id)
        command = (
            path, ids, kind, captured, time.time() if timestamp is None else timestamp_seconds(timestamp), command_id,
        )
        if size > self._properties_room or type(ids) is LargeCustomerIds:
            self._check_size(command, size)  # perhaps more than the server takes
        engine = self._engine
        if engine is not None and self._before_send is None:
            engine.submit(command, pid)
            return command_id
        return self._dispatch(command, size)

    def _dispatch(self, command: Command, size: int) -> str:
        """Every checked command that is not simply queued: disabled, through ``before_send``, or
        sent now (blocking). Returns the ``command_id`` it went with."""
        if not self._enabled:
            self._counts.discarded.add()
            return command[5]
        if self._hook is not None:
            hooked = self._hook.run(command)
            if hooked is None:
                return command[5]
            command, size = hooked
        self._delivery.submit(command)  # the engine queues it; a blocking client sends it now
        return command[5]

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
            _number("timeout", timeout, minimum=0, seconds=True)
        delivered = self._delivery.flush(timeout)
        clean = self._counts.flush_clean()  # read after the flush: a hook that failed meanwhile counts
        return delivered and clean

    def close(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued (waiting at most ``timeout``, default ``shutdown_timeout``), then stop.

        Idempotent; later ``track``/``update`` raise ``ClientClosedError``. A buffered client that is
        never closed is closed at interpreter exit.
        """
        if timeout is not None:
            _number("timeout", timeout, minimum=0, seconds=True)
        self._closed = True
        self._delivery.close(timeout)

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
        return self._counts.add_to(self._delivery.stats())

    def health(self) -> Health:
        """Whether delivery works: a :class:`Health` whose ``status`` is ``"ok"``, ``"degraded"`` or
        ``"failing"``, with a ``reason`` sentence and the figures behind it (the rules are in
        ``seven_segments.health``). Cheap, from any thread; ``as_dict()`` gives it as JSON types."""
        return assess(self._delivery.figures())


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

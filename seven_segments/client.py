"""The public clients: ``SevenSegments`` (tracking) and ``AuthenticatedSevenSegments`` (export)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, Dict, Optional, Tuple, Type, TypeVar

from .clock import monotonic
from .errors import ClientClosedError, SevenSegmentsError
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
from .serialization import (
    BulkCommandEncoder,
    Command,
    CustomerIds,
    JSONObject,
    Timestamp,
    capture_properties,
    check_command_id,
    check_event_type,
    customer_ids,
    new_command_id,
    timestamp_seconds,
)
from .transport import Backoff, Transport, call_with_retries
from .worker import BufferedWorker, ErrorCallback, WorkerSettings

__all__ = ["SevenSegments", "AuthenticatedSevenSegments"]

logger = logging.getLogger(__name__)

_Self = TypeVar("_Self", bound="_ApiClient")

#: Defaults (see the README's "Configuration" table).
DEFAULT_TIMEOUT = 10.0
DEFAULT_BLOCKING_RETRY_DEADLINE = 5.0
DEFAULT_BUFFERED_RETRY_DEADLINE = 300.0
DEFAULT_BATCH_SIZE = 1000
DEFAULT_FLUSH_INTERVAL = 0.5
DEFAULT_MAX_QUEUE_SIZE = 1_000_000
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT = 5.0
#: A batch's bulk body stays this far under the protocol's 5 MiB.
MAX_BATCH_BYTES = MAX_BULK_BYTES - 256 * 1024
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


def _secret(name: str, value: Any) -> str:
    """Check a token or password without ever echoing it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
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
    ) -> None:
        self._timeout = _number("timeout", timeout, minimum=0, allow_equal=False)
        self._retry_deadline = _number("retry_deadline", retry_deadline, minimum=0)
        #: How long a call that the caller waits for (blocking track/update, get_html, export) retries.
        self._call_deadline = self._retry_deadline if call_deadline is None else call_deadline
        self._transport = Transport(target, timeout=self._timeout, gzip=gzip, secrets=secrets, auth=auth)
        self._closed = False
        self._sleep: Callable[[float], None] = time.sleep

    @property
    def target(self) -> str:
        """The API's base URL."""
        return self._transport.target

    def _call(self, path: str, body: bytes, params: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
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
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


class SevenSegments(_ApiClient):
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
      ``on_error(error, commands)`` (called on the worker thread for commands that could not be
      delivered), ``gzip`` (True: compress request bodies of 1 KiB or more).

    One client may be shared by all threads; pass ``customer=`` per call rather than ``identify``
    when threads serve different customers.
    """

    def __init__(
        self,
        token: str,
        customer: Any = None,
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
        on_error: Optional[ErrorCallback] = None,
        gzip: bool = True,
    ) -> None:
        self._token = _secret("token", token)
        if retry_deadline is None:
            retry_deadline = DEFAULT_BUFFERED_RETRY_DEADLINE if buffered else DEFAULT_BLOCKING_RETRY_DEADLINE
        # A buffered client's retry_deadline is the worker's; get_html still answers within seconds.
        call_deadline = DEFAULT_BLOCKING_RETRY_DEADLINE if buffered else None
        super().__init__(target, timeout, retry_deadline, (token,), bool(gzip), None, call_deadline)
        self._customer_ids: Optional[CustomerIds] = None if customer is None else customer_ids(customer)
        self._worker: Optional[BufferedWorker] = None
        # Checked in both modes: a bad setting is a mistake even where it has no effect yet.
        if on_error is not None and not callable(on_error):
            raise TypeError(f"on_error must be callable, not {type(on_error).__name__}")
        batch_size = _number("batch_size", batch_size, minimum=1, integer=True)
        if batch_size > MAX_BULK_COMMANDS:
            raise ValueError(f"batch_size must be at most {MAX_BULK_COMMANDS} (the protocol's limit), not {batch_size}")
        settings = WorkerSettings(
            batch_size=batch_size,
            max_batch_bytes=MAX_BATCH_BYTES,
            flush_interval=_number("flush_interval", flush_interval, minimum=0, allow_equal=False),
            max_queue_size=_number("max_queue_size", max_queue_size, minimum=1, integer=True),
            max_queue_bytes=_number("max_queue_bytes", max_queue_bytes, minimum=1024, integer=True),
            retry_deadline=self._retry_deadline,
            shutdown_timeout=_number("shutdown_timeout", shutdown_timeout, minimum=0),
            timeout=self._timeout,
            on_error=on_error,
        )
        if buffered:
            self._worker = BufferedWorker(token, self._transport, settings)

    def __repr__(self) -> str:
        mode = "buffered" if self._worker is not None else "blocking"
        return f"SevenSegments(target={self.target!r}, customer={self._customer_ids!r}, {mode})"

    @property
    def buffered(self) -> bool:
        """True when ``track`` and ``update`` are queued and sent in the background."""
        return self._worker is not None

    @property
    def customer(self) -> Optional[CustomerIds]:
        """The identified customer's ids, or None."""
        return None if self._customer_ids is None else dict(self._customer_ids)

    def identify(self, customer: Any, properties: Optional[Mapping[str, Any]] = None) -> None:
        """Make ``customer`` the client's current customer; with ``properties``, also ``update`` them."""
        self._customer_ids = customer_ids(customer)
        if properties is not None:
            self.update(properties)

    def _ids(self, customer: Any) -> CustomerIds:
        if customer is not None:
            return customer_ids(customer)
        if self._customer_ids is None:
            return customer_ids(None)  # raises "no customer identified ..."
        return self._customer_ids

    def track(
        self,
        event_type_: str,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        customer: Any = None,
        timestamp: Optional[Timestamp] = None,
    ) -> None:
        """Track an event of type ``event_type_`` (with ``properties``) for the customer.

        ``timestamp`` (seconds since the epoch or an aware ``datetime``) defaults to now. Bad input
        raises ``TypeError``/``ValueError`` here, before anything is queued or sent.
        """
        if self._closed:
            raise ClientClosedError("this SevenSegments client is closed; it takes no more events")
        ids = self._ids(customer)
        kind = check_event_type(event_type_)
        captured, size = capture_properties(properties)
        command = (
            PATH_EVENTS, ids, kind, captured, time.time() if timestamp is None else timestamp_seconds(timestamp),
            new_command_id(),
        )
        if self._worker is not None:
            self._worker.submit(command, size)
        else:
            self._send_now(command)

    def update(
        self, properties: Mapping[str, Any], *, customer: Any = None, timestamp: Optional[Timestamp] = None
    ) -> None:
        """Update the customer's properties (merged property by property, later timestamp wins)."""
        if self._closed:
            raise ClientClosedError("this SevenSegments client is closed; it takes no more updates")
        if properties is None:
            raise TypeError("properties must be a dict of customer properties, not None")
        ids = self._ids(customer)
        captured, size = capture_properties(properties)
        command = (
            PATH_CUSTOMERS, ids, None, captured, time.time() if timestamp is None else timestamp_seconds(timestamp),
            new_command_id(),
        )
        if self._worker is not None:
            self._worker.submit(command, size)
        else:
            self._send_now(command)

    def _send_now(self, command: Command) -> None:
        data = {"company_id": self._token, **BulkCommandEncoder.as_dict(command)["data"]}
        self._call(command[0], _encode(data))

    def get_html(self, campaign_name: str, *, customer: Any = None) -> str:
        """The HTML of campaign ``campaign_name`` for the customer (``''`` when it shows nothing to them)."""
        if not isinstance(campaign_name, str) or not campaign_name:
            raise ValueError(f"campaign_name must be a non-empty string, not {campaign_name!r}")
        data = {"company_id": self._token, "customer_ids": self._ids(customer), "html_campaign_name": campaign_name}
        answer = self._call(PATH_HTML, _encode(data))
        html = answer.get("data")
        if not isinstance(html, str):
            raise SevenSegmentsError(f"{PATH_HTML}: the answer has no 'data' string", status=200)
        return html

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until everything queued so far was delivered or failed for good (or ``timeout`` s).

        True only when all of it was delivered (and nothing was dropped since the last flush).
        Blocking clients have nothing queued: True.
        """
        if timeout is not None:
            _number("timeout", timeout, minimum=0)
        if self._worker is None:
            return True
        return self._worker.flush(timeout)

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

    def stats(self) -> Dict[str, int]:
        """Counts since the client was made: queued, sent, retried, failed, dropped, batches, pending."""
        if self._worker is None:
            return {"queued": 0, "sent": 0, "retried": 0, "failed": 0, "dropped": 0, "batches": 0, "pending": 0}
        return self._worker.stats()


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
    ) -> None:
        if not isinstance(username, str) or not username:
            raise ValueError(f"username must be a non-empty string, not {username!r}")
        _secret("password", password)
        self._username = username
        super().__init__(target, timeout, retry_deadline, (password,), False, (username, password))

    def __repr__(self) -> str:
        return f"AuthenticatedSevenSegments(username={self._username!r}, target={self.target!r})"

    def export_analysis(self, analysis_type: str, data: Mapping[str, Any], token: Optional[str] = None) -> Dict[str, Any]:
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

"""asyncio faces of the clients: ``AsyncSevenSegments`` (tracking) and ``AsyncAuthenticatedSevenSegments`` (export).

::

    client = AsyncSevenSegments(token, target=...)         # always buffered
    client.track("page_view", {"path": "/"}, customer=uid)  # a plain call: queued, never blocks
    html = await client.get_html("Banner", customer=uid)    # the request runs in a thread
    await client.flush(5)
    await client.aclose()                                   # or: async with AsyncSevenSegments(...) as client:

No new dependency: the blocking client does the work, and whatever waits (a request, a flush, a close)
waits in a thread, so no coroutine blocks the event loop whatever the server does.

- ``get_html`` and ``export_analysis`` run in a small private thread pool (``max_workers`` threads,
  default 8; calls beyond that wait for a free thread, in the pool's queue, not on the loop).
  Cancelling one returns at once: a call not yet started never runs, one under way finishes in its
  thread (bounded by ``timeout`` and the call's retry deadline) and its answer is dropped. They are
  reads: nothing is lost or applied twice.
- ``flush`` waits on one thread per client, however many flushes wait at once (see
  ``_flush_waiter``). Cancelling it stops the waiting only: delivery goes on in the background
  exactly as before. ``aclose`` waits on a thread of its own; cancelling it cannot undo the close:
  it goes on, within ``shutdown_timeout``, in its thread.
- One client may be used by any number of tasks (and threads). Pass ``customer=`` per call, or run
  each request inside ``customer_context(customer)``, when tasks serve different customers
  (``identify`` sets the client's customer for every task).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Type, TypeVar

from .context import CustomerContext
from .health import Health
from .errors import ClientClosedError
from ._flush_waiter import FlushWaiter
from ._options import number
from .client import (
    DEFAULT_BLOCKING_RETRY_DEADLINE,
    DEFAULT_TIMEOUT,
    AuthenticatedSevenSegments,
    SevenSegments,
)
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
from .process_hooks import keep_signals_off_this_thread, threads_hang_forks_here
from .network import CertSetting, ProxiesSetting, VerifySetting
from .protocol import DEFAULT_TARGET
from .serialization import CustomerIds, Timestamp
from .types import AnalysisType, BeforeSend, Customer, ErrorCallback

__all__ = ["AsyncSevenSegments", "AsyncAuthenticatedSevenSegments"]

_T = TypeVar("_T")
_Client = TypeVar("_Client", bound="_AsyncBase")

#: Threads of a client's pool for ``get_html`` / ``export_analysis`` (calls beyond wait in its queue).
DEFAULT_MAX_WORKERS = 8


def _max_workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_workers must be an integer >= 1, not {value!r}")
    return value


async def _in_own_thread(function: Callable[[], _T], name: str) -> _T:
    """Run ``function`` on a new daemon thread; the awaiting task may be cancelled, the thread runs on."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[_T]" = loop.create_future()

    def settle(result: Optional[_T], error: Optional[BaseException]) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        keep_signals_off_this_thread()
        try:
            result = function()
        except BaseException as error:  # handed to the awaiting task
            outcome: Any = (None, error)
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody awaits any more
            pass

    if threads_hang_forks_here():  # a uwsgi master: no thread of ours there (see process_hooks)
        run()
    else:
        threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class _AsyncBase:
    """What both faces share: a private thread pool for the calls that wait on the server."""

    def __init__(self, max_workers: int) -> None:
        self._max_workers = _max_workers(max_workers)
        self._executor = self._new_executor()
        self._closed = False

    def _new_executor(self) -> ThreadPoolExecutor:
        self._pid = os.getpid()
        return ThreadPoolExecutor(self._max_workers, thread_name_prefix="seven-segments-aio")

    def _in_pool(self, function: Callable[[], _T]) -> "Awaitable[_T]":
        if self._closed:
            raise ClientClosedError(f"this {type(self).__name__} client is closed")
        loop = asyncio.get_running_loop()
        if threads_hang_forks_here():  # a uwsgi master: the call runs here (see process_hooks)
            future: "asyncio.Future[_T]" = loop.create_future()
            try:
                future.set_result(function())
            except Exception as error:
                future.set_exception(error)
            return future
        if self._pid != os.getpid():  # a forked child: the parent's pool thinks its threads are alive
            self._executor = self._new_executor()
        # In a copy of the caller's contextvars, as asyncio.to_thread runs it: its customer_context.
        return loop.run_in_executor(self._executor, contextvars.copy_context().run, function)

    async def __aenter__(self: _Client) -> _Client:
        return self

    async def __aexit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        await self.aclose()

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """Close the client (see the subclasses); idempotent."""
        raise NotImplementedError


class AsyncSevenSegments(_AsyncBase):
    """asyncio client of the 7SEGMENTS tracking API; always buffered.

    ``AsyncSevenSegments(token, customer=None, *, target=..., ...)`` takes the keywords of
    ``SevenSegments(..., buffered=True)`` (see the README's "Configuration" table) and
    ``max_workers`` (8: threads for ``get_html``). ``track``, ``update`` and ``identify`` are plain
    calls that queue and return at once; ``get_html``, ``flush`` and ``aclose`` are coroutines that
    never block the event loop; ``async with`` closes. A client that is never closed is closed at
    interpreter exit, as a buffered ``SevenSegments`` is.
    """

    def __init__(
        self,
        token: str,
        customer: Optional[Customer] = None,
        *,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT,
        retry_deadline: Optional[float] = None,
        batch_size: int = DEFAULT_BATCH_SIZE, flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE, max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        spool: Optional[str] = None, spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES, spool_fsync: bool = False,
        on_error: Optional[ErrorCallback] = None,
        gzip: bool = True,
        before_send: Optional[BeforeSend] = None,
        enabled: bool = True,
        stall_warning_after: float = DEFAULT_STALL_WARNING_AFTER,
        max_workers: int = DEFAULT_MAX_WORKERS,
        proxies: ProxiesSetting = None, verify: VerifySetting = True, cert: CertSetting = None,
    ) -> None:
        _max_workers(max_workers)
        # Every keyword as it came: SevenSegments checks them all.
        self._client = SevenSegments(
            token, customer, target=target, buffered=True, timeout=timeout, retry_deadline=retry_deadline,
            batch_size=batch_size, flush_interval=flush_interval, max_queue_size=max_queue_size,
            max_queue_bytes=max_queue_bytes, shutdown_timeout=shutdown_timeout, max_in_flight=max_in_flight,
            spool=spool, spool_max_bytes=spool_max_bytes, spool_fsync=spool_fsync, on_error=on_error, gzip=gzip,
            before_send=before_send, enabled=enabled, proxies=proxies, verify=verify, cert=cert,
            stall_warning_after=stall_warning_after,
        )
        super().__init__(max_workers)
        self._flushes = FlushWaiter(self._client.flush, "seven-segments-aio-flush")

    def __repr__(self) -> str:
        return f"AsyncSevenSegments(target={self.target!r}, customer={self.customer!r})"

    @property
    def sync(self) -> SevenSegments:
        """The buffered ``SevenSegments`` doing the work (for code that is not async)."""
        return self._client

    @property
    def target(self) -> str:
        """The API's base URL."""
        return self._client.target

    @property
    def customer(self) -> Optional[CustomerIds]:
        """The identified customer's ids, or None."""
        return self._client.customer

    def identify(self, customer: Customer, properties: Optional[Mapping[str, Any]] = None) -> None:
        """Make ``customer`` the client's current customer (for every task); with ``properties``, ``update`` them."""
        self._client.identify(customer, properties)

    def customer_context(self, customer: Customer) -> CustomerContext:
        """``with client.customer_context(customer):`` the calls inside it that name no customer
        (``track``, ``update``, ``await get_html``) are for ``customer``, in this task only (and the
        tasks it creates): as ``SevenSegments.customer_context``. A plain ``with``, in a coroutine too."""
        return self._client.customer_context(customer)

    def track(
        self,
        event_type: str,
        properties: Optional[Mapping[str, Any]] = None,
        *,
        customer: Optional[Customer] = None,
        timestamp: Optional[Timestamp] = None,
        command_id: Optional[str] = None,
    ) -> str:
        """Queue an event (as ``SevenSegments.track``: never blocks); returns its ``command_id``."""
        return self._client.track(
            event_type, properties, customer=customer, timestamp=timestamp, command_id=command_id
        )

    def update(
        self,
        properties: Mapping[str, Any],
        *,
        customer: Optional[Customer] = None,
        timestamp: Optional[Timestamp] = None,
        command_id: Optional[str] = None,
    ) -> str:
        """Queue a customer update (as ``SevenSegments.update``: never blocks); returns its ``command_id``."""
        return self._client.update(properties, customer=customer, timestamp=timestamp, command_id=command_id)

    async def get_html(self, campaign_name: str, *, customer: Optional[Customer] = None) -> str:
        """The campaign's HTML for the customer (``''`` when it shows nothing to them), fetched in a thread.

        Bad input raises here, before any thread is used. Cancelling returns at once (the request, if
        it started, ends in its thread, bounded by ``timeout`` and a 5 s retry deadline).
        """
        if not isinstance(campaign_name, str) or not campaign_name:
            raise ValueError(f"campaign_name must be a non-empty string, not {campaign_name!r}")
        client = self._client
        return await self._in_pool(lambda: client.get_html(campaign_name, customer=customer))

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait (in a thread) until everything queued so far settled; True when all of it was delivered.

        As ``SevenSegments.flush``. Cancelling it stops the waiting, never the delivery.
        """
        if timeout is not None:
            number("timeout", timeout, minimum=0, seconds=True)  # as SevenSegments.flush checks it
        return await self._flushes.flush(timeout)

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """Deliver what is queued (at most ``timeout``, default ``shutdown_timeout``) and stop; idempotent.

        Later ``track``/``update`` raise ``ClientClosedError``. Cancelling it does not stop the close.
        """
        client = self._client
        self._closed = True
        try:
            await _in_own_thread(lambda: client.close(timeout), "seven-segments-aio-close")
        finally:
            self._executor.shutdown(wait=False)

    def stats(self) -> Dict[str, float]:
        """Counts since the client was made (as ``SevenSegments.stats``; no I/O)."""
        return self._client.stats()

    def health(self) -> Health:
        """Whether delivery works (as ``SevenSegments.health``; no I/O)."""
        return self._client.health()


class AsyncAuthenticatedSevenSegments(_AsyncBase):
    """asyncio client of the 7SEGMENTS export API: ``await export_analysis(...)`` runs in a thread.

    ``AsyncAuthenticatedSevenSegments(username, password, *, target=..., timeout=10,
    retry_deadline=5, max_workers=8, proxies=None, verify=True, cert=None)``; ``async with`` closes.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        target: str = DEFAULT_TARGET,
        timeout: float = DEFAULT_TIMEOUT,
        retry_deadline: float = DEFAULT_BLOCKING_RETRY_DEADLINE,
        max_workers: int = DEFAULT_MAX_WORKERS,
        proxies: ProxiesSetting = None,
        verify: VerifySetting = True,
        cert: CertSetting = None,
    ) -> None:
        _max_workers(max_workers)
        self._client = AuthenticatedSevenSegments(
            username, password, target=target, timeout=timeout, retry_deadline=retry_deadline,
            proxies=proxies, verify=verify, cert=cert,
        )
        super().__init__(max_workers)

    def __repr__(self) -> str:
        return f"Async{self._client!r}"

    @property
    def sync(self) -> AuthenticatedSevenSegments:
        """The blocking ``AuthenticatedSevenSegments`` doing the work."""
        return self._client

    @property
    def target(self) -> str:
        """The API's base URL."""
        return self._client.target

    async def export_analysis(
        self, analysis_type: AnalysisType, data: Mapping[str, Any], token: Optional[str] = None
    ) -> Dict[str, Any]:
        """As ``AuthenticatedSevenSegments.export_analysis``, in a thread; cancelling returns at once."""
        client = self._client
        return await self._in_pool(lambda: client.export_analysis(analysis_type, data, token))

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """Release the connection pool and the threads (calls under way finish in their threads); idempotent."""
        self._closed = True
        self._executor.shutdown(wait=False)
        self._client.close()

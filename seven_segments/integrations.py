"""Web servers: each request runs inside ``client.customer_context`` of its customer.

::

    from seven_segments.integrations import ASGICustomerMiddleware, WSGICustomerMiddleware

    application = WSGICustomerMiddleware(application, client=client, customer_of=lambda environ: ...)
    app = ASGICustomerMiddleware(app, client=client, customer_of=lambda scope: ...)

``customer_of`` maps the request (the WSGI environ, the ASGI scope) to its customer (a string id or a
dict of id types to ids), or to ``None`` for a request of no customer, which then runs as it would
without the middleware. Any other value that is not a customer raises ``TypeError``/``ValueError``
naming it, in the middleware, for that request. Inside, the application's ``track``/``update``/
``get_html`` calls that name no customer are for the request's customer (see
``seven_segments.context``). ``client`` is a ``SevenSegments`` or an ``AsyncSevenSegments``. No web
framework is imported.

- WSGI: the context covers the application's call and the iteration of the response it returns, up
  to the server's ``close()`` of it (a streaming response's generator tracks for the request's
  customer too). It lives in a copy of the server thread's (or greenlet's) contextvars, so nothing of
  it is left behind on a server thread that serves the next request.
- ASGI: ``customer_of`` may be a coroutine function; only ``http`` and ``websocket`` scopes are
  concerned (``lifespan`` passes through untouched). The whole ``await app(scope, receive, send)``
  runs in the context: the task of the request and the tasks it creates.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
from typing import (
    Any,
    Awaitable,
    Callable,
    ContextManager,
    Iterable,
    Iterator,
    MutableMapping,
    Optional,
    Protocol,
    Union,
)

from .types import Customer

__all__ = ["ASGICustomerMiddleware", "WSGICustomerMiddleware"]

WSGIEnviron = MutableMapping[str, Any]
WSGIApp = Callable[[WSGIEnviron, Callable[..., Any]], Iterable[bytes]]
ASGIScope = MutableMapping[str, Any]
ASGIApp = Callable[[ASGIScope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class CustomerContexts(Protocol):
    """A client with ``customer_context``: ``SevenSegments`` or ``AsyncSevenSegments``."""

    def customer_context(self, customer: Customer) -> ContextManager[Any]:
        """A context manager in which the client's calls that name no customer are for ``customer``."""


def _check(app: Any, client: Any, customer_of: Any) -> None:
    if not callable(app):
        raise TypeError(f"app must be a callable application, not {type(app).__name__} {app!r}")
    if not callable(getattr(client, "customer_context", None)):
        raise TypeError(f"client must be a SevenSegments or an AsyncSevenSegments, not {type(client).__name__}")
    if not callable(customer_of):
        raise TypeError(f"customer_of must be callable, not {type(customer_of).__name__} {customer_of!r}")


class WSGICustomerMiddleware:
    """``WSGICustomerMiddleware(app, client=..., customer_of=...)``: a WSGI application that runs
    ``app`` for each request inside ``client.customer_context(customer_of(environ))`` (as is when
    that is ``None``), the iteration of its response included (see the module's docstring)."""

    def __init__(
        self, app: WSGIApp, *, client: CustomerContexts, customer_of: Callable[[WSGIEnviron], Optional[Customer]]
    ) -> None:
        _check(app, client, customer_of)
        self.app = app
        self._client = client
        self._customer_of = customer_of

    def __repr__(self) -> str:
        return f"WSGICustomerMiddleware({self.app!r})"

    def __call__(self, environ: WSGIEnviron, start_response: Callable[..., Any]) -> Iterable[bytes]:
        customer = self._customer_of(environ)
        if customer is None:
            return self.app(environ, start_response)
        scope = self._client.customer_context(customer)  # a bad customer raises here, before the app runs
        context = contextvars.copy_context()
        context.run(scope.__enter__)
        try:
            response = context.run(self.app, environ, start_response)
        except BaseException:
            context.run(scope.__exit__, *sys.exc_info())
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(response, (list, tuple)) or (isinstance(file_wrapper, type) and isinstance(response, file_wrapper)):
            # Iterating these runs no code of the application: the server may look inside (sendfile).
            context.run(scope.__exit__, None, None, None)
            return response
        return _ResponseInContext(response, context, scope)


class _ResponseInContext:
    """A WSGI response iterated and closed inside the request's context; the context ends at ``close``."""

    def __init__(self, response: Iterable[bytes], context: contextvars.Context, scope: ContextManager[Any]) -> None:
        self._response = response
        self._chunks: Optional[Iterator[bytes]] = None
        self._context = context
        self._scope: Optional[ContextManager[Any]] = scope

    def __iter__(self) -> "_ResponseInContext":
        return self

    def __next__(self) -> bytes:
        if self._chunks is None:
            self._chunks = self._context.run(iter, self._response)
        return self._context.run(next, self._chunks)

    def close(self) -> None:
        """Close the application's response (PEP 3333), then end the request's context."""
        scope, self._scope = self._scope, None
        if scope is None:
            return
        close = getattr(self._response, "close", None)
        try:
            if close is not None:
                self._context.run(close)
        finally:
            self._context.run(scope.__exit__, None, None, None)


class ASGICustomerMiddleware:
    """``ASGICustomerMiddleware(app, client=..., customer_of=...)``: an ASGI application that runs
    ``app`` for each ``http`` and ``websocket`` request inside ``client.customer_context(customer)``,
    ``customer`` being what ``customer_of(scope)`` returns (or, for a coroutine function, what it
    gives when awaited); as is when that is ``None``. Usable with Starlette's ``add_middleware``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: CustomerContexts,
        customer_of: Callable[[ASGIScope], Union[Optional[Customer], Awaitable[Optional[Customer]]]],
    ) -> None:
        _check(app, client, customer_of)
        self.app = app
        self._client = client
        self._customer_of = customer_of

    def __repr__(self) -> str:
        return f"ASGICustomerMiddleware({self.app!r})"

    async def __call__(
        self, scope: ASGIScope, receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]
    ) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        customer = self._customer_of(scope)
        if inspect.isawaitable(customer):
            customer = await customer
        if customer is None:
            await self.app(scope, receive, send)
            return
        with self._client.customer_context(customer):
            await self.app(scope, receive, send)

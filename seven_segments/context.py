"""Which customer a call that names none is for: the client's ``customer_context``, on ``contextvars``.

A ``track``, ``update`` or ``get_html`` call is for, in this order:

1. its own ``customer=``;
2. the innermost active ``customer_context`` of that client where the call runs;
3. the client's identified customer (``SevenSegments(token, customer)`` or ``identify``);

and raises ``ValueError`` when there is none. A context is held in a ``contextvars.ContextVar``, so
it is seen by the code inside the ``with`` only: per thread, per greenlet (gevent, eventlet: each
greenlet has its own context) and per asyncio task. A new thread or greenlet starts without it; an
asyncio task (and a function run by ``asyncio.to_thread``, but not by ``loop.run_in_executor``: wrap
it in ``contextvars.copy_context().run``) starts with a copy of its creator's, so a task made inside
the ``with`` keeps its customer, even after the ``with`` ended. A plain ``with`` is right in a coroutine as well: no ``async with`` is needed.

Cost: ``track`` reads the client's ``_customer_ids`` before anything else. Until the client's first
``customer_context``, that is the identified customer (or ``None``) and nothing else is looked at:
the same path as a client without contexts. That first ``customer_context`` sets it to ``None`` for
good (not only while a context is active: a task made inside a ``with`` may outlive it and must
still see its customer, whether or not the client is identified), and calls naming no customer then
look at the context variable first, then at the identified customer.
"""

from __future__ import annotations

import os
import threading
from contextvars import ContextVar
from types import TracebackType
from typing import Optional, Tuple, Type

from .serialization import CustomerIds, customer_ids
from .types import Customer

__all__ = ["CustomerChoice", "CustomerContext"]


class _Frame:
    """One active context: its client, its customer, the context it is nested in, and the
    ``CustomerContext`` that entered it."""

    __slots__ = ("owner", "ids", "outer", "scope")

    def __init__(
        self, owner: "CustomerChoice", ids: CustomerIds, outer: "Optional[_Frame]", scope: "CustomerContext"
    ) -> None:
        self.owner = owner
        self.ids = ids
        self.outer = outer
        self.scope = scope


#: The innermost active context (of any client) where the code runs; frames of several clients nest.
_frames: "ContextVar[Optional[_Frame]]" = ContextVar("seven_segments_customer_context", default=None)
_innermost = _frames.get

#: Held only while a client switches to contexts or is identified: both write ``_customer_ids``.
_switch_lock = threading.Lock()


def _new_lock_in_child() -> None:
    """A fork child gets a new lock: another thread of the parent may have held the old one."""
    global _switch_lock
    _switch_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)


class CustomerContext:
    """What ``customer_context(customer)`` returns: inside ``with`` it, the calls of its client that
    name no customer are for that customer (see the module's docstring). Entering it gives the
    customer's ids. It holds no state of its own (what is active lives in the context variable):
    one object may be entered by several threads or tasks at once, and again once exited, but not
    twice at once in one thread, greenlet or task."""

    __slots__ = ("_owner", "_ids")

    def __init__(self, owner: "CustomerChoice", ids: CustomerIds) -> None:
        self._owner = owner
        self._ids = ids

    def __repr__(self) -> str:
        return f"<customer_context {self._ids!r}>"

    def __enter__(self) -> CustomerIds:
        outer = frame = _frames.get()
        while frame is not None:
            if frame.scope is self:
                raise RuntimeError(f"{self!r} is already active here: make a new customer_context to nest one")
            frame = frame.outer
        _frames.set(_Frame(self._owner, self._ids, outer, self))
        return dict(self._ids)

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        frame = _frames.get()
        if frame is None or frame.scope is not self:
            raise RuntimeError(
                f"{self!r} is not the innermost customer_context active here (exited without being entered,"
                " out of order, or in another thread, greenlet or task than it was entered in: a generator"
                " resumed elsewhere?)"
            )
        _frames.set(frame.outer)


class CustomerChoice:
    """The customer of the calls that name none, for ``SevenSegments`` (a base class of it).

    Owns ``_customer_ids`` (read first by ``track``: the customer to use without looking further, or
    ``None`` to look at the contexts and then at ``_identified``), ``_identified`` and
    ``_contexts_used``; ``_ids`` gives the customer of a call.
    """

    _customer_ids: Optional[CustomerIds]
    _identified: Optional[CustomerIds]
    _contexts_used: bool
    _last_customer: Tuple[Optional[str], CustomerIds]

    def _init_customer(self, identified: Optional[CustomerIds]) -> None:
        self._identified = identified
        self._customer_ids = identified
        self._contexts_used = False
        #: The last string ``customer=`` passed to a call and its ids: one ids object for a run of
        #: calls for one customer (the engine's encoder reuses its JSON for the same object).
        self._last_customer = (None, {})

    @property
    def customer(self) -> Optional[CustomerIds]:
        """The identified customer's ids, or None (a ``customer_context`` does not change it)."""
        return None if self._identified is None else dict(self._identified)

    def _ids(self, customer: Optional[Customer]) -> CustomerIds:
        """The customer of a call: its ``customer=``, else the innermost context, else the identified one."""
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

    def _identify_ids(self, ids: CustomerIds) -> None:
        """Make ``ids`` the identified customer (contexts, where active, still come first)."""
        with _switch_lock:
            self._identified = ids
            if not self._contexts_used:
                self._customer_ids = ids

    def customer_context(self, customer: Customer) -> CustomerContext:
        """``with client.customer_context(customer):`` the calls of this client inside it that name
        no customer (``track``, ``update``, ``get_html``) are for ``customer``: in this thread,
        greenlet or asyncio task only, and in the tasks it creates.

        ``customer`` (a string id or a dict of id types to ids) is checked here: a bad one raises
        ``TypeError``/``ValueError`` naming it. ``customer=`` of a call still wins; the context wins
        over the identified customer; an inner context wins over an outer one until it exits. A plain
        ``with`` is right in coroutines too.
        """
        if customer is None:
            raise TypeError("customer_context needs a customer (a string id or a dict of id types to ids), not None")
        ids = customer_ids(customer)
        if not self._contexts_used:
            with _switch_lock:
                # _customer_ids first: a thread that sees _contexts_used must also see it None.
                self._customer_ids = None
                self._contexts_used = True
        return CustomerContext(self, ids)

    def _context_or_identified(self) -> CustomerIds:
        """The customer of a call that names none, once ``_customer_ids`` said to look further."""
        frame = _innermost()
        while frame is not None:
            if frame.owner is self:
                return frame.ids
            frame = frame.outer
        ids = self._identified
        if ids is None:
            raise ValueError(
                "no customer identified: pass customer= to SevenSegments(...) or to this call, call identify()"
                " first, or make the call inside client.customer_context(customer)"
            )
        return ids

"""``customer_context``: the customer of calls that name none, per thread, greenlet and asyncio task;
and the WSGI/ASGI middlewares that run each request inside it (in process; real servers are in
tests/test_deployment_customers.py).

Most tests read the customer each command was made for from a ``before_send`` hook that drops it:
nothing is sent, so no server is needed.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from seven_segments import AsyncSevenSegments, SevenSegments
from seven_segments.integrations import ASGICustomerMiddleware, WSGICustomerMiddleware
from seven_segments.testing import LocalServer

from .conftest import TOKEN

NOWHERE = "http://127.0.0.1:9"  # never contacted: the hook drops every command


class Recorder:
    """A blocking client whose commands are only recorded: (event type or None, customer id)."""

    def __init__(self, customer: Optional[str] = None) -> None:
        self.seen: List[Tuple[Optional[str], str]] = []
        self.client = SevenSegments(TOKEN, customer, target=NOWHERE, before_send=self._record)

    def _record(self, command: Dict[str, Any]) -> None:
        ids = command.get("customer_ids") or command["ids"]
        self.seen.append((command.get("type"), ids["registered"]))
        return None

    def who(self) -> str:
        """The customer of one ``track`` made now."""
        self.client.track("probe")
        return self.seen.pop()[1]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    made = Recorder()
    yield made
    made.client.close()


def test_calls_without_customer_use_the_context_and_customer_wins(recorder: Recorder) -> None:
    client = recorder.client
    with client.customer_context("alice") as ids:
        assert ids == {"registered": "alice"}
        client.track("view")
        client.update({"plan": "pro"})
        client.track("view", customer="bob")
        client.update({"plan": "free"}, customer="bob")
    assert recorder.seen == [("view", "alice"), (None, "alice"), ("view", "bob"), (None, "bob")]
    with pytest.raises(ValueError, match="no customer identified.*customer_context"):
        client.track("view")  # outside: no customer at all


def test_nested_contexts_restore_the_outer_one_even_after_an_error(recorder: Recorder) -> None:
    client = recorder.client
    with client.customer_context("outer"):
        with pytest.raises(KeyError):
            with client.customer_context({"registered": "inner"}):
                assert recorder.who() == "inner"
                raise KeyError("boom")
        assert recorder.who() == "outer"
    with pytest.raises(ValueError, match="no customer identified"):
        client.track("view")


def test_the_context_wins_over_the_identified_customer_and_identify_does_not_change_it() -> None:
    recorder = Recorder(customer="identified")
    client = recorder.client
    assert recorder.who() == "identified"
    with client.customer_context("alice"):
        assert recorder.who() == "alice"
        client.identify("later")
        assert recorder.who() == "alice"
        assert client.customer == {"registered": "later"}  # the identified one, as before
    assert recorder.who() == "later"
    assert "later" in repr(client)
    client.close()


def test_a_context_of_another_client_is_not_this_ones(recorder: Recorder) -> None:
    other = Recorder(customer="other-identified")
    with recorder.client.customer_context("alice"), other.client.customer_context("bob"):
        assert recorder.who() == "alice"
        assert other.who() == "bob"
        with recorder.client.customer_context("carol"):
            assert (recorder.who(), other.who()) == ("carol", "bob")
    assert other.who() == "other-identified"
    other.client.close()


@pytest.mark.parametrize(
    "customer, error, words",
    [
        (None, TypeError, "not None"),
        ("", ValueError, "non-empty string"),
        (12345, TypeError, "int 12345"),
        ({}, ValueError, "empty dict"),
        ({"registered": 5}, TypeError, "customer\\['registered'\\]: id 5"),
    ],
)
def test_an_invalid_customer_raises_at_customer_context_naming_it(
    recorder: Recorder, customer: Any, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        recorder.client.customer_context(customer)
    recorder.client.identify("still-fine")
    assert recorder.who() == "still-fine"


def test_one_context_object_is_not_entered_twice_at_once_but_may_be_reused(recorder: Recorder) -> None:
    context = recorder.client.customer_context("alice")
    with context:
        with pytest.raises(RuntimeError, match="already active"):
            context.__enter__()
        assert recorder.who() == "alice"
    with context:
        assert recorder.who() == "alice"



def test_one_context_object_shared_by_threads_holds_in_each_and_leaves_nothing_behind(recorder: Recorder) -> None:
    # The object kept the token of its one active entry: a second thread's entry raised "already
    # active", and two entries racing overwrote each other's token, so that a thread kept the
    # customer after its with had ended (its next requests tracked for it).
    recorder.client.identify("identified")
    context = recorder.client.customer_context("tenant")
    entered, exited = threading.Event(), threading.Event()
    seen: List[str] = []

    def other() -> None:
        with context:
            entered.set()
            exited.wait(5)
            seen.append(recorder.who())
        seen.append(recorder.who())

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    with context:  # while the other thread is inside it too
        assert recorder.who() == "tenant"
    assert recorder.who() == "identified"
    exited.set()
    thread.join(5)
    assert seen == ["tenant", "identified"]

def test_threads_each_see_their_own_context(recorder: Recorder) -> None:
    """All threads inside their contexts at once, tracking in turn; then none sees another's."""
    recorder.client.identify("identified")
    count = 8
    inside = threading.Barrier(count + 1)
    results: Dict[int, List[str]] = {}

    def serve(number: int) -> None:
        with recorder.client.customer_context(f"thread-{number}"):
            inside.wait(5)
            for _ in range(50):
                recorder.client.track("view")
            inside.wait(5)
        results[number] = [recorder.who()]

    threads = [threading.Thread(target=serve, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    inside.wait(5)  # all are inside: the main thread is not
    assert recorder.who() == "identified"
    inside.wait(5)
    for thread in threads:
        thread.join(5)
    views = Counter(customer for kind, customer in recorder.seen if kind == "view")
    assert views == {f"thread-{number}": 50 for number in range(count)}
    assert results == {number: ["identified"] for number in range(count)}  # after their with


def test_threads_tracking_at_once_never_mix_customers() -> None:
    """The hook sees each command on the caller's thread: a thread-local list per thread."""
    seen = threading.local()
    mixed: List[str] = []

    def hook(command: Dict[str, Any]) -> None:
        if command["customer_ids"]["registered"] != seen.name:
            mixed.append(f"{seen.name} got {command['customer_ids']}")
        return None

    client = SevenSegments(TOKEN, target=NOWHERE, before_send=hook)
    start = threading.Barrier(6)

    def serve(number: int) -> None:
        seen.name = f"thread-{number}"
        start.wait(5)
        for _ in range(300):
            with client.customer_context(seen.name):
                client.track("view")

    threads = [threading.Thread(target=serve, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert mixed == []
    assert client.stats()["filtered"] == 6 * 300
    client.close()


def test_asyncio_tasks_each_see_their_own_and_a_task_made_inside_keeps_it(recorder: Recorder) -> None:
    client = recorder.client

    async def request(name: str) -> List[str]:
        with client.customer_context(name):
            customers = []
            for _ in range(5):
                customers.append(recorder.who())
                await asyncio.sleep(0)  # the other tasks run here, inside their own contexts
            later = asyncio.ensure_future(asyncio.sleep(0.01, None))
            child = asyncio.ensure_future(child_task())
        await later
        customers.append(await child)  # made inside, finished after the with ended
        return customers

    async def child_task() -> str:
        await asyncio.sleep(0.005)
        return recorder.who()

    async def main() -> List[List[str]]:
        return list(await asyncio.gather(*(request(f"task-{number}") for number in range(10))))

    results = asyncio.run(main())
    assert results == [[f"task-{number}"] * 6 for number in range(10)]


def test_greenlets_each_see_their_own_context(recorder: Recorder) -> None:
    """Each greenlet has its own contextvars (what gevent and eventlet run requests in)."""
    greenlet = pytest.importorskip("greenlet")
    client = recorder.client
    hub = greenlet.getcurrent()
    order: List[str] = []

    def serve(name: str) -> None:
        with client.customer_context(name):
            order.append(recorder.who())
            hub.switch()
            order.append(recorder.who())

    first, second = greenlet.greenlet(serve), greenlet.greenlet(serve)
    first.switch("green-1")
    second.switch("green-2")  # the first is suspended inside its context
    with pytest.raises(ValueError, match="no customer identified"):
        client.track("view")  # the hub is in neither
    first.switch()
    second.switch()
    assert order == ["green-1", "green-2", "green-1", "green-2"]


def test_get_html_uses_the_context_in_both_clients(fresh: LocalServer) -> None:
    """The asyncio client fetches in its thread pool: the context crosses into it."""
    fresh.campaigns = {"Banner": "<b>hi</b>"}
    client = SevenSegments(TOKEN, "identified", target=fresh.url)

    async def fetch() -> str:
        async with AsyncSevenSegments(TOKEN, "identified", target=fresh.url) as aclient:
            with aclient.customer_context("async-alice"):
                html = await aclient.get_html("Banner")
                aclient.track("view")
            await aclient.flush(5)
            return html

    with client.customer_context("alice"):
        assert client.get_html("Banner") == "<b>hi</b>"
    assert asyncio.run(fetch()) == "<b>hi</b>"
    client.close()
    asked = [request["body"]["customer_ids"] for request in fresh.requests() if request["path"] == "/campaigns/html/get"]
    assert asked == [{"registered": "alice"}, {"registered": "async-alice"}]
    assert [event["customer_ids"] for event in fresh.events()] == [{"registered": "async-alice"}]


# --------------------------------------------------------------------------------------------
# The middlewares, called as a server calls them


def _wsgi(app: Any, environ: Dict[str, Any]) -> Tuple[List[bytes], List[str]]:
    statuses: List[str] = []
    response = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        return list(response), statuses
    finally:
        if hasattr(response, "close"):
            response.close()


def test_wsgi_middleware_covers_the_call_and_the_iteration_up_to_close(recorder: Recorder) -> None:
    client = recorder.client
    closed: List[str] = []

    def app(environ: Dict[str, Any], start_response: Any) -> Iterator[bytes]:
        client.track("called")
        start_response("200 OK", [])

        def body() -> Iterator[bytes]:
            try:
                client.track("streamed")
                yield b"ok"
            finally:
                closed.append(recorder.who())

        return body()

    middleware = WSGICustomerMiddleware(app, client=client, customer_of=lambda environ: environ.get("HTTP_X_CUSTOMER"))
    assert _wsgi(middleware, {"HTTP_X_CUSTOMER": "alice"}) == ([b"ok"], ["200 OK"])
    assert recorder.seen == [("called", "alice"), ("streamed", "alice")]
    assert closed == ["alice"]  # the generator's close ran in the context too
    with pytest.raises(ValueError, match="no customer identified"):
        client.track("after")  # nothing left behind on this (server) thread
    with pytest.raises(ValueError, match="no customer identified"):
        _wsgi(middleware, {})  # customer_of gave None: the app runs as without the middleware


def test_wsgi_middleware_a_list_response_and_an_app_that_raises(recorder: Recorder) -> None:
    client = recorder.client

    def app(environ: Dict[str, Any], start_response: Any) -> List[bytes]:
        client.track("called")
        if environ.get("fail"):
            raise RuntimeError("the app failed")
        start_response("200 OK", [])
        return [b"a", b"b"]

    middleware = WSGICustomerMiddleware(app, client=client, customer_of=lambda environ: environ["customer"])
    response = middleware({"customer": "alice"}, lambda *args: None)
    assert response == [b"a", b"b"]  # given to the server as it is
    with pytest.raises(RuntimeError, match="the app failed"):
        middleware({"customer": "bob", "fail": True}, lambda *args: None)
    assert recorder.seen == [("called", "alice"), ("called", "bob")]
    with pytest.raises(TypeError, match="int 7"):
        middleware({"customer": 7}, lambda *args: None)  # a bad customer: raised for that request


def test_middlewares_check_their_arguments(recorder: Recorder) -> None:
    for middleware in (WSGICustomerMiddleware, ASGICustomerMiddleware):
        with pytest.raises(TypeError, match="customer_of must be callable"):
            middleware(lambda *args: None, client=recorder.client, customer_of="HTTP_X_USER")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="client must be a SevenSegments"):
            middleware(lambda *args: None, client=object(), customer_of=lambda request: None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="app must be a callable"):
            middleware(None, client=recorder.client, customer_of=lambda request: None)  # type: ignore[arg-type]


def test_asgi_middleware_sync_and_async_customer_of_and_lifespan_untouched(recorder: Recorder) -> None:
    client = recorder.client
    asked: List[str] = []

    async def app(scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await send({"type": "lifespan.startup.complete"})
            return
        client.track("called")
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": recorder.who().encode()})

    def customer_of(scope: Dict[str, Any]) -> Optional[str]:
        asked.append(scope["type"])
        return dict(scope["headers"]).get(b"x-customer", b"").decode() or None

    async def async_customer_of(scope: Dict[str, Any]) -> Optional[str]:
        await asyncio.sleep(0)
        return customer_of(scope)

    async def main() -> List[Any]:
        sent: List[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        async def receive() -> Any:
            return {"type": "http.request"}

        plain = ASGICustomerMiddleware(app, client=client, customer_of=customer_of)
        awaiting = ASGICustomerMiddleware(app, client=client, customer_of=async_customer_of)
        await asyncio.gather(
            plain({"type": "http", "headers": [(b"x-customer", b"alice")]}, receive, send),
            awaiting({"type": "http", "headers": [(b"x-customer", b"bob")]}, receive, send),
            plain({"type": "lifespan"}, receive, send),
        )
        with pytest.raises(ValueError, match="no customer identified"):
            await plain({"type": "http", "headers": []}, receive, send)
        return sent

    sent = asyncio.run(main())
    bodies = sorted(message["body"] for message in sent if "body" in message)
    assert bodies == [b"alice", b"bob"]
    assert {message["type"] for message in sent} == {"http.response.body", "lifespan.startup.complete"}
    assert sorted(customer for kind, customer in recorder.seen if kind == "called") == ["alice", "bob"]
    assert "lifespan" not in asked

"""The asyncio clients on a real event loop (``asyncio.run``) against the local server, slow, down or trickling.

A heartbeat task measures the event loop's longest stall: no coroutine of ours may block it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Awaitable, Callable, Iterator, List, TypeVar

import pytest

from seven_segments import AsyncAuthenticatedSevenSegments, AsyncSevenSegments, ClientClosedError
from seven_segments.testing import LocalServer

from .conftest import TOKEN

pytestmark = pytest.mark.timeout(60)

_T = TypeVar("_T")

CAMPAIGNS = {"Banner": "<b>hello</b>", "VIP": {"html": "<i>vip</i>", "condition": {"property": "vip", "equals": True}}}
#: The longest the loop may stall (it ticks every 5 ms) while our coroutines wait on a server that
#: takes a second or more: a call that blocked the loop would stall it that long. Scheduling noise on
#: this 2-core machine under a load average of 8 reaches 40-100 ms even for an idle loop.
MAX_STALL = 0.25


class Heartbeat:
    """A task that ticks every 5 ms and keeps the longest gap between two ticks."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self._task: "asyncio.Task[None]"

    async def _beat(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last - 0.005)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> "Heartbeat":
        self._task = asyncio.ensure_future(self._beat())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_: Any) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


def run(main: Callable[[], Awaitable[_T]]) -> _T:
    """One fresh event loop per test, as an application would have."""
    return asyncio.run(main())  # type: ignore[arg-type]


@pytest.fixture
def campaign_server() -> Iterator[LocalServer]:
    with LocalServer(campaigns=CAMPAIGNS) as local:
        yield local


def test_track_update_identify_get_html_flush_and_async_with(campaign_server: LocalServer) -> None:
    async def main() -> List[Any]:
        async with AsyncSevenSegments(TOKEN, "john", target=campaign_server.url, flush_interval=60) as client:
            ids = [client.track("view", {"n": number}) for number in range(100)]
            client.update({"vip": True})
            client.identify("mary", {"vip": False})
            assert client.customer == {"registered": "mary"}
            assert await client.flush(10) is True
            html = [await client.get_html("VIP", customer="john"), await client.get_html("VIP"), await client.get_html("Banner")]
            stats = client.stats()
        with pytest.raises(ClientClosedError):
            client.track("late")
        with pytest.raises(ClientClosedError):
            await client.get_html("Banner")
        await client.aclose()  # idempotent
        return [ids, html, stats]

    ids, html, stats = run(main)
    assert html == ["<i>vip</i>", "", "<b>hello</b>"]
    assert stats["sent"] == 102 and stats["failed"] == stats["dropped"] == 0
    events = campaign_server.events()
    assert sorted(event["properties"]["n"] for event in events) == list(range(100))
    assert {event["command_id"] for event in events} == set(ids)
    customers = {customer["ids"]["registered"]: customer["properties"] for customer in campaign_server.customers()}
    assert customers == {"john": {"vip": True}, "mary": {"vip": False}}


def test_bad_input_raises_at_the_call_not_in_a_thread(server: LocalServer) -> None:
    async def main() -> None:
        async with AsyncSevenSegments(TOKEN, "john", target=server.url) as client:
            with pytest.raises(ValueError, match="campaign_name"):
                await client.get_html("")
            with pytest.raises(ValueError, match="timeout"):
                await client.flush(-1)
            with pytest.raises(TypeError):
                client.track("view", {"bad": object()})

    with pytest.raises(TypeError):
        AsyncSevenSegments(TOKEN, target=server.url, batch_size="many")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_workers"):
        AsyncSevenSegments(TOKEN, target=server.url, max_workers=0)
    run(main)


@pytest.mark.slow
def test_the_loop_never_stalls_while_the_server_is_slow() -> None:
    with LocalServer(campaigns=CAMPAIGNS, latency=1.0) as slow:

        async def main() -> List[str]:
            client = AsyncSevenSegments(TOKEN, "john", target=slow.url, flush_interval=60, max_workers=4)
            for number in range(5000):  # on the loop (the calls themselves take a few ms per thousand)
                client.track("view", {"n": number})
            async with Heartbeat() as heartbeat:
                started = time.perf_counter()
                pages = await asyncio.gather(*(client.get_html("Banner") for _ in range(8)))  # 2 rounds of 4
                assert time.perf_counter() - started >= 1.9  # the server really was slow
                assert await client.flush(20) is True
                await client.aclose()
            assert heartbeat.ticks > 50
            assert heartbeat.longest < MAX_STALL, heartbeat.longest
            print(f"slow server: longest stall of the loop {heartbeat.longest * 1000:.1f} ms")
            return pages

        assert run(main) == ["<b>hello</b>"] * 8
        assert slow.stats()["events"] == 5000 and slow.stats()["duplicates"] == 0


@pytest.mark.slow
def test_the_loop_never_stalls_while_the_server_is_down(dead_url: str) -> None:
    async def main() -> None:
        client = AsyncSevenSegments(TOKEN, "john", target=dead_url, shutdown_timeout=1.0, timeout=1)
        for number in range(1000):
            client.track("view", {"n": number})
        async with Heartbeat() as heartbeat:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get_html("Banner"), 1.0)  # refused, retried in its thread for 5 s
            started = time.perf_counter()
            assert await client.flush(1.0) is False
            await client.aclose()  # gives up within shutdown_timeout, reporting the loss
            assert time.perf_counter() - started < 3.5
            stats = client.stats()
            # a retry in flight when the close gave up is "unconfirmed", not "failed"
            assert stats["failed"] + stats["unconfirmed"] == 1000 and stats["sent"] == 0, stats
        assert heartbeat.longest < MAX_STALL, heartbeat.longest

    run(main)


class Trickle:
    """A server that answers one byte every 0.1 s, forever: each read succeeds, the answer never ends."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = "http://127.0.0.1:%d" % self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        connections = []
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
                connections.append(connection)
            except OSError:
                pass
            for connection in list(connections):
                try:
                    connection.send(b"H")
                except OSError:
                    connections.remove(connection)
            self.stop.wait(0.05)
        for connection in connections:
            connection.close()
        self.listener.close()


def test_the_loop_never_stalls_while_the_server_trickles_and_cancelled_get_html_returns_at_once() -> None:
    trickle = Trickle()
    try:

        async def main() -> None:
            async with Heartbeat() as heartbeat:
                client = AsyncSevenSegments(TOKEN, "john", target=trickle.url, timeout=5)
                task = asyncio.ensure_future(client.get_html("Banner"))
                await asyncio.sleep(0.3)
                assert not task.done()  # still reading the endless answer, in its thread
                cancelled_at = time.perf_counter()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert time.perf_counter() - cancelled_at < 0.05
                await client.aclose(0)
            assert heartbeat.longest < MAX_STALL, heartbeat.longest

        run(main)
    finally:
        trickle.stop.set()  # the abandoned request's thread ends with the connection
        trickle.thread.join(5)


def test_cancelling_flush_loses_and_duplicates_nothing(server: LocalServer) -> None:
    server.faults.delay_next(1, 0.5)  # the first batch is slow to answer

    async def main() -> None:
        client = AsyncSevenSegments(TOKEN, "john", target=server.url, flush_interval=60, batch_size=100)
        for number in range(1000):
            client.track("view", {"n": number})
        waiting = asyncio.ensure_future(client.flush(10))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert server.stats()["events"] < 1000  # the cancel came while delivery was under way
        assert await client.flush(10) is True
        await client.aclose()

    run(main)
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(1000))
    assert server.stats()["duplicates"] == 0


def test_cancelled_get_html_returns_at_once_and_the_client_carries_on(campaign_server: LocalServer) -> None:
    campaign_server.faults.delay_next(1, 1.0)

    async def main() -> None:
        async with AsyncSevenSegments(TOKEN, "john", target=campaign_server.url) as client:
            task = asyncio.ensure_future(client.get_html("Banner"))
            await asyncio.sleep(0.1)
            cancelled_at = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.perf_counter() - cancelled_at < 0.05
            assert await client.get_html("Banner") == "<b>hello</b>"

    run(main)


def test_many_tasks_track_concurrently_through_faults_and_every_event_arrives_once(server: LocalServer) -> None:
    server.faults.random(0.1, seed=5, retry_after=0.02)
    tasks, per_task = 50, 200

    async def main() -> None:
        client = AsyncSevenSegments(TOKEN, target=server.url, flush_interval=0.05, batch_size=100)

        async def work(index: int) -> None:
            for number in range(per_task):
                client.track("view", {"task": index, "n": number}, customer=f"user-{index}")
                if number % 20 == 0:
                    await asyncio.sleep(0)  # let the other tasks in

        async with Heartbeat() as heartbeat:
            await asyncio.gather(*(work(index) for index in range(tasks)))
            assert await client.flush(30) is True
            await client.aclose()
        assert heartbeat.longest < MAX_STALL * 2, heartbeat.longest  # 10,000 tracks on the loop itself

    run(main)
    seen = [(event["properties"]["task"], event["properties"]["n"]) for event in server.events()]
    assert len(seen) == tasks * per_task
    assert set(seen) == {(index, number) for index in range(tasks) for number in range(per_task)}
    assert server.stats()["faults_injected"] > 0


ANALYSES = {"report-1": {"type": "report", "name": "Views", "event": "view"}}


def test_export_analysis_runs_in_a_thread_and_cancelling_returns_at_once() -> None:
    with LocalServer(users={"analyst": "pa55-word"}, analyses=ANALYSES) as local:

        async def main() -> Any:
            tracker = AsyncSevenSegments(TOKEN, "john", target=local.url)
            for _ in range(3):
                tracker.track("view")
            await tracker.aclose()
            async with AsyncAuthenticatedSevenSegments("analyst", "pa55-word", target=local.url) as client:
                assert "pa55-word" not in repr(client)
                local.faults.delay_next(1, 1.0)
                slow = asyncio.ensure_future(client.export_analysis("report", {"analysis_id": "report-1"}))
                await asyncio.sleep(0.1)
                slow.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await slow
                return await client.export_analysis("report", {"analysis_id": "report-1"})

        answer = run(main)
        assert answer["total"]["events"] == 3


def test_the_async_client_takes_every_keyword_of_the_buffered_one() -> None:
    import inspect

    from seven_segments import AsyncSevenSegments, SevenSegments

    buffered = set(inspect.signature(SevenSegments.__init__).parameters) - {"self", "buffered"}
    asynchronous = set(inspect.signature(AsyncSevenSegments.__init__).parameters) - {"self", "max_workers"}
    assert buffered == asynchronous


FORKED_GET_HTML = """
import asyncio, os, sys
from seven_segments import AsyncSevenSegments

client = AsyncSevenSegments(sys.argv[2], "john", target=sys.argv[1])
first = asyncio.run(client.get_html("Banner"))  # at import, in the master: the pool has a thread now
pid = os.fork()
if pid == 0:  # a worker: its copy of the pool believed that thread alive, and ran nothing
    try:
        html = asyncio.run(asyncio.wait_for(client.get_html("Banner"), 10))
        os._exit(0 if html == first else 3)
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(4)
_, status = os.waitpid(pid, 0)
asyncio.run(client.aclose(5))
sys.exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 9)
"""


@pytest.mark.slow
def test_get_html_works_in_a_child_forked_after_the_parent_used_it(campaign_server: LocalServer) -> None:
    """gunicorn --preload with an asyncio worker class forks after the app may have called the API."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", FORKED_GET_HTML, campaign_server.url, TOKEN], capture_output=True, text=True,
        timeout=60, env=dict(os.environ, PYTHONPATH=str(root)),
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])


def test_a_redirect_is_an_error_and_nothing_goes_to_the_other_host(witness: Any) -> None:
    from seven_segments import SevenSegmentsError

    with LocalServer(campaigns=CAMPAIGNS, users={"analyst": "pa55-word"}, analyses=ANALYSES) as local:
        reported: List[Any] = []

        async def main() -> None:
            on_error = lambda error, commands: reported.append((error, len(commands)))  # noqa: E731
            async with AsyncSevenSegments(TOKEN, "john", target=local.url, on_error=on_error) as client:
                local.faults.redirect_next(1, witness.url, status=307)
                with pytest.raises(SevenSegmentsError, match="redirects to") as html:
                    await client.get_html("Banner")
                assert html.value.status == 307
                local.faults.redirect_next(1, witness.url, status=308)
                client.track("view")
                assert await client.flush(10) is False
            async with AsyncAuthenticatedSevenSegments("analyst", "pa55-word", target=local.url) as exporter:
                local.faults.redirect_next(1, witness.url, status=307)
                with pytest.raises(SevenSegmentsError, match="redirects to") as export:
                    await exporter.export_analysis("report", {"analysis_id": "report-1"}, token=TOKEN)
                assert export.value.status == 307 and TOKEN not in str(export.value)

        run(main)
        assert [(error.status, count) for error, count in reported] == [(308, 1)]
        assert witness.connections == 0 and witness.received == b""


def test_concurrent_flushes_share_one_thread(server: LocalServer) -> None:
    server.faults.delay_next(1, 0.5)  # the flushes wait for an answer that takes a while

    async def main() -> None:
        client = AsyncSevenSegments(TOKEN, "john", target=server.url, flush_interval=60, max_in_flight=2)
        client.track("view")
        before = threading.active_count()
        flushes = [asyncio.ensure_future(client.flush(10)) for _ in range(300)]
        await asyncio.sleep(0)  # every flush has started waiting
        during = threading.active_count()
        assert not any(flush.done() for flush in flushes)
        assert during - before <= 4, (before, during)  # a sender, and one thread for all the flushes
        assert await asyncio.gather(*flushes) == [True] * 300
        server.latency = 0.3
        client.track("view")  # later flushes are served as well, and a short one ends by its timeout
        assert await asyncio.gather(client.flush(0.05), client.flush(10)) == [False, True]
        await client.aclose()

    run(main)
    assert len(server.events()) == 2

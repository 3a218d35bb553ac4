"""The customer of each request under real servers: gunicorn (gthread and gevent workers) and
uvicorn, each request run by ``seven_segments.integrations``' middleware inside the
``customer_context`` of its ``X-Customer`` header, its handler tracking with no ``customer=``.

Concurrent requests of eight customers: every event reaches the local server for the customer of
the request that made it. The three servers start once for the module, at the same time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from seven_segments.testing import LocalServer

from .conftest import wait_until
from .test_deployment import ROOT, Run, _free_port, green, needs

pytestmark = pytest.mark.timeout(60)

#: Three events per request: in the call, after a sleep (other requests run meanwhile), and while
#: the server iterates the streamed response (after the application returned).
WSGI_APP = """
import os, time
from seven_segments import SevenSegments
from seven_segments.integrations import WSGICustomerMiddleware

client = SevenSegments("context-token", target=os.environ["API_URL"], buffered=True, flush_interval=0.05)
APP = os.environ["APP"]

def handler(environ, start_response):
    request = environ["QUERY_STRING"]
    client.track("called", {"app": APP, "request": request})
    time.sleep(0.01)  # gevent's under its worker
    client.track("slept", {"app": APP, "request": request})
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        time.sleep(0.005)
        client.track("streamed", {"app": APP, "request": request})
        yield request.encode()

    return body()

application = WSGICustomerMiddleware(handler, client=client, customer_of=lambda environ: environ.get("HTTP_X_CUSTOMER"))
"""

#: The asyncio client; ``customer_of`` is a coroutine function; ``get_html`` runs in the client's pool.
ASGI_APP = """
import asyncio, os, sys
import uvicorn
from seven_segments import AsyncSevenSegments
from seven_segments.integrations import ASGICustomerMiddleware

client = AsyncSevenSegments("context-token", target=os.environ["API_URL"], flush_interval=0.05)

async def customer_of(scope):
    await asyncio.sleep(0)
    return dict(scope["headers"]).get(b"x-customer", b"").decode() or None

async def handler(scope, receive, send):
    request = scope["query_string"].decode()
    client.track("called", {"app": "uvicorn", "request": request})
    await asyncio.sleep(0.01)
    html = await client.get_html("Banner")
    client.track("slept", {"app": "uvicorn", "request": request})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    client.track("streamed", {"app": "uvicorn", "request": request})
    await send({"type": "http.response.body", "body": html.encode()})

app = ASGICustomerMiddleware(handler, client=client, customer_of=customer_of)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", lifespan="off")
"""

EVENTS_PER_REQUEST = 3
REQUESTS = 32
CUSTOMERS = 8


@pytest.fixture(scope="module")
def apps(shared_server: LocalServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, int]]:
    """The ports of the three servers, started together; stopped by SIGTERM at the module's end."""
    needs("gunicorn", "gevent", "uvicorn")
    folder = tmp_path_factory.mktemp("customer_apps")
    (folder / "wsgi_app.py").write_text(WSGI_APP)
    (folder / "asgi_app.py").write_text(ASGI_APP)
    shared_server.campaigns = {"Banner": "<b>hi</b>"}
    environment = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{folder}", API_URL=shared_server.url)
    gunicorn = [sys.executable, "-m", "gunicorn", "-w", "1", "--graceful-timeout", "3"]
    commands = {
        "gthread": [*gunicorn, "-k", "gthread", "--threads", "8"],
        "gevent": [*gunicorn, "-k", "gevent"],
    }
    ports = {name: _free_port() for name in ("gthread", "gevent", "uvicorn")}
    processes: List[subprocess.Popen[bytes]] = []
    logs = {name: open(folder / f"{name}.log", "wb") for name in ports}
    try:
        for name, command in commands.items():
            processes.append(subprocess.Popen(
                [*command, "-b", f"127.0.0.1:{ports[name]}", "wsgi_app:application"],
                cwd=str(folder), stdout=logs[name], stderr=subprocess.STDOUT, env=dict(environment, APP=name),
            ))
        processes.append(subprocess.Popen(
            [sys.executable, str(folder / "asgi_app.py"), str(ports["uvicorn"])],
            cwd=str(folder), stdout=logs["uvicorn"], stderr=subprocess.STDOUT, env=environment,
        ))
        for name, port in ports.items():
            assert _listening(port), (folder / f"{name}.log").read_text()
        yield ports
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()


def _listening(port: int, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            _ask(port, "warm-up", "warm-up")
            return True
        except OSError:  # not listening yet
            time.sleep(0.05)
    return False


def _ask(port: int, request: str, customer: str) -> bytes:
    call = urllib.request.Request(f"http://127.0.0.1:{port}/?{request}", headers={"X-Customer": customer})
    with urllib.request.urlopen(call, timeout=10) as answer:
        return bytes(answer.read())


@pytest.mark.parametrize("app", ["gthread", "gevent", "uvicorn"])
def test_concurrent_requests_of_different_customers_each_track_for_their_own(
    app: str, apps: Dict[str, int], shared_server: LocalServer
) -> None:
    customer_of = {f"{app}-{number}": f"customer-{number % CUSTOMERS}" for number in range(REQUESTS)}
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda request: _ask(apps[app], request, customer_of[request]), customer_of))
    assert len(answers) == REQUESTS

    def ours() -> List[Dict[str, object]]:
        return [event for event in shared_server.events() if event["properties"].get("request") in customer_of]

    assert wait_until(lambda: len(ours()) >= REQUESTS * EVENTS_PER_REQUEST, timeout=10), len(ours())
    events = ours()
    assert len(events) == REQUESTS * EVENTS_PER_REQUEST
    wrong = [
        (event["properties"], event["customer_ids"]) for event in events
        if event["customer_ids"] != {"registered": customer_of[event["properties"]["request"]]}  # type: ignore[index]
    ]
    assert wrong == []
    kinds = Counter(event["type"] for event in events)
    assert kinds == {"called": REQUESTS, "slept": REQUESTS, "streamed": REQUESTS}
    if app == "uvicorn":  # get_html ran in the asyncio client's thread pool, for the request's customer
        asked = Counter(
            request["body"]["customer_ids"]["registered"] for request in shared_server.requests()
            if request["path"] == "/campaigns/html/get" and request["body"]["customer_ids"] != {"registered": "warm-up"}
        )
        assert asked == Counter(customer_of.values())
        assert set(answers) == {b"<b>hi</b>"}
    else:
        assert sorted(answers) == sorted(request.encode() for request in customer_of)


#: Green threads of eventlet (gevent's run gunicorn's requests above), switching inside their contexts.
EVENTLET_TASKS = """
import eventlet
from seven_segments import SevenSegments
client = SevenSegments("green-token", target=url, buffered=True, flush_interval=60)

def serve(name):
    with client.customer_context(name):
        for number in range(20):
            client.track("view", {"who": name})
            eventlet.sleep(0)

threads = [eventlet.spawn(serve, "green-%d" % number) for number in range(5)]
for thread in threads:
    thread.wait()
ready("flushed %s" % client.flush(10))
"""


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_eventlet_green_threads_each_track_for_their_own(shared_server: LocalServer, tmp_path: Path) -> None:
    result = Run(tmp_path, green("eventlet", EVENTLET_TASKS), shared_server.url).finish()
    assert result["code"] == 0, result["stderr"]
    assert "flushed True" in result["stdout"]
    pairs = Counter(
        (event["customer_ids"]["registered"], event["properties"]["who"])
        for event in shared_server.events() if "who" in event["properties"]
    )
    assert pairs == {(f"green-{number}", f"green-{number}"): 20 for number in range(5)}

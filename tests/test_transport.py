"""The transport's own request preparation, against a real HTTP server on 127.0.0.1.

``Transport.post`` prepares requests without params or auth itself (see ``Transport._prepare``):
what goes on the wire must be what ``Session.post`` would have sent.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from seven_segments.errors import SevenSegmentsError
from seven_segments.protocol import USER_AGENT
from seven_segments.transport import Transport, TransientError


class Recorder(BaseHTTPRequestHandler):
    """Answers every POST with a JSON success (``/moved/...``: a 307 to ``/...``; ``/to/HOST:PORT/...``:
    a 307 to ``http://HOST:PORT/...``), sets a cookie on the first, records what came."""

    seen: List[Tuple[str, Dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.seen.append((self.path, {key.lower(): value for key, value in self.headers.items()}, body))
        if self.path.startswith(("/moved/", "/to/")):  # the API moved: a 307 keeps the method and the body
            self.send_response(307)
            if self.path.startswith("/to/"):  # to another listener: /to/HOST:PORT/PATH
                self.send_header("Location", "http://" + self.path[len("/to/") :])
            else:
                self.send_header("Location", self.path[len("/moved") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = b'{"success": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if len(self.seen) == 1:
            self.send_header("Set-Cookie", "lb=sticky-1; Path=/")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Tuple[str, List[Tuple[str, Dict[str, str], bytes]]]]:
    seen: List[Tuple[str, Dict[str, str], bytes]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("compress", [False, True])
def test_prepared_posts_send_what_session_post_sends(recorder: Any, compress: bool) -> None:
    url, seen = recorder
    transport = Transport(url, timeout=5, gzip=compress)
    body = json.dumps({"commands": [{"n": n} for n in range(200)]}).encode()
    assert transport.post("bulk", body) == {"success": True}
    assert transport.post("bulk", body) == {"success": True}
    (path, first, sent), (_, second, _) = seen
    assert path == "/bulk"
    assert (gzip.decompress(sent) if compress else sent) == body
    assert first["content-length"] == str(len(sent))
    assert first.get("content-encoding") == ("gzip" if compress else None)
    assert (first["user-agent"], first["content-type"], first["accept"]) == (USER_AGENT, "application/json", "application/json")
    assert "cookie" not in first
    assert second["cookie"] == "lb=sticky-1"  # a cookie the server set goes back, as with Session.post
    transport.close()


def test_session_hooks_see_prepared_requests(recorder: Any) -> None:
    url, seen = recorder
    transport = Transport(url, timeout=5)
    statuses: List[int] = []
    transport._session.hooks["response"].append(lambda response, **_: statuses.append(response.status_code))
    transport.post("crm/events", b'{"x":1}')
    assert statuses == [200] and len(seen) == 1
    transport.close()


@pytest.mark.parametrize("auth", [None, ("alice", "pw")])
def test_a_redirect_is_not_followed_even_to_the_same_host(recorder: Any, auth: Any) -> None:
    url, seen = recorder
    transport = Transport(url + "/moved", timeout=5, auth=auth)
    with pytest.raises(SevenSegmentsError) as caught:
        transport.post("bulk", b'{"commands":[]}', params={"company": "co"} if auth else None)
    assert caught.value.status == 307 and "redirects to /bulk" in str(caught.value)
    assert [path.partition("?")[0] for path, _, _ in seen] == ["/moved/bulk"]  # one request, none to /bulk
    transport.close()


def test_a_bulk_request_never_follows_a_redirect_and_the_3xx_is_a_permanent_failure(recorder: Any) -> None:
    """A 307 to another listener on 127.0.0.1: nothing reaches it (not even a connection), and the
    answer is a ``SevenSegmentsError``, not a ``TransientError`` that would be retried."""
    url, seen = recorder
    elsewhere = socket.socket()
    elsewhere.bind(("127.0.0.1", 0))
    elsewhere.listen(8)
    elsewhere.setblocking(False)
    transport = Transport(f"{url}/to/127.0.0.1:{elsewhere.getsockname()[1]}", timeout=5, gzip=True)
    try:
        for _ in range(2):
            with pytest.raises(SevenSegmentsError, match=r"bulk: the server redirects to http://127.0.0.1:") as refused:
                transport.post("bulk", json.dumps({"commands": [{"n": n} for n in range(200)]}).encode())
            assert not isinstance(refused.value, TransientError)
        assert [path for path, _, _ in seen] == [f"/to/127.0.0.1:{elsewhere.getsockname()[1]}/bulk"] * 2
        with pytest.raises(BlockingIOError):
            elsewhere.accept()
    finally:
        transport.close()
        elsewhere.close()


def test_a_bulk_request_goes_through_the_proxy_the_environment_names(
    recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy for the target, bulk requests go the requests way, to the proxy."""
    url, seen = recorder
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", url)
    transport = Transport("http://api.example.invalid", timeout=5)
    try:
        assert transport.post("bulk", b'{"commands":[]}') == {"success": True}
    finally:
        transport.close()
    assert [path for path, _, _ in seen] == ["http://api.example.invalid/bulk"]

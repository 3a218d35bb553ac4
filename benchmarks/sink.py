"""A counting HTTP sink that answers the ingestion protocols of every benchmarked library.

It runs in its own process (so its CPU never counts against a client), listens on 127.0.0.1 and
counts every event it receives, per library, deduplicating by the id each library puts on its
events so that duplicates (re-sent events) can be told from new ones:

=============  ================================  ===========================  ===================
library        paths                             body                         event id
=============  ================================  ===========================  ===================
segment        ``/v1/batch``                     JSON ``{"batch": [...]}``    ``messageId``
posthog        ``/batch/`` (capture v0, the      JSON ``{"batch": [...]}``    ``uuid``
               default), ``/i/v0/e/``, ``/e/``
mixpanel       ``/track``, ``/engage``           form ``data=[...]`` or JSON  ``$insert_id``
amplitude      ``/2/httpapi``, ``/batch``        JSON ``{"events": [...]}``   ``insert_id``
ours           ``/bulk``, ``/crm/events``,       JSON, docs/protocol.md       ``command_id``
               ``/crm/customers``
floor          ``/floor``                        JSON ``[...]``               (none: all counted)
floor_orjson   ``/floor_orjson``                 JSON ``[...]``               (none: all counted)
=============  ================================  ===========================  ===================

Any body may be gzip-compressed (``Content-Encoding: gzip``). Each answer is the success answer the
library expects. The sink is a small asyncio HTTP/1.1 server (keep-alive, ``Content-Length`` and
chunked bodies), much faster than ``http.server`` so that it is not what a benchmark measures.

Control protocol (one command per line on stdin, one JSON line per answer on stdout):

- on start it prints ``READY http://127.0.0.1:PORT``;
- ``stats`` -> ``{"LIB": {"received": n, "unique": u, "requests": r, "last_event_at": t}, ...}``
  (``last_event_at`` is ``time.time()`` when the last new event arrived);
- ``wait LIB N TIMEOUT STALL`` -> the stats of LIB once it holds N unique events, or TIMEOUT seconds
  passed, or no new event came for STALL seconds;
- ``reset`` forgets everything; end of stdin stops the sink.

``--latency SECONDS`` delays every answer by that long, as a remote API would (the round-trip and
web-app scenarios). The delay is a timer on the event loop (``call_later``), not a sleep: concurrent
requests, on as many connections as the clients open (backlog 1024), are each delayed on their own and
never wait for one another; answers on one keep-alive connection keep their order. Events are counted
when their request has been read, before the delay (at most one round trip earlier than the client
learns that they arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gzip
import json
import sys
import threading
import time
import urllib.parse
import zlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple


class Counter:
    """Counts of one library's events; updated only by the event loop thread."""

    __slots__ = ("received", "ids", "anonymous", "requests", "last_event_at")

    def __init__(self) -> None:
        self.received = 0
        self.ids: set = set()
        self.anonymous = 0
        self.requests = 0
        self.last_event_at = 0.0

    def add(self, event_ids: Iterable[Optional[str]]) -> int:
        """Count a batch of events given by their ids (``None`` when an event has none)."""
        new = 0
        n = 0
        for event_id in event_ids:
            n += 1
            if event_id is None:
                self.anonymous += 1
                new += 1
            elif event_id not in self.ids:
                self.ids.add(event_id)
                new += 1
        self.received += n
        self.requests += 1
        if new:
            self.last_event_at = time.time()
        return n

    @property
    def unique(self) -> int:
        return len(self.ids) + self.anonymous

    def as_dict(self) -> Dict[str, Any]:
        return {
            "received": self.received,
            "unique": self.unique,
            "duplicates": self.received - self.unique,
            "requests": self.requests,
            "last_event_at": self.last_event_at,
        }


COUNTERS: Dict[str, Counter] = {}

#: Seconds every answer is delayed by (``--latency``); 0 answers at once.
LATENCY = 0.0


def counter(lib: str) -> Counter:
    found = COUNTERS.get(lib)
    if found is None:
        found = COUNTERS[lib] = Counter()
    return found


# --- per-library request handlers: (path, headers, body) -> (status, response JSON) -----------------

Answer = Tuple[int, Any]


try:  # the sink's own CPU shares the machine with the client measured: the fastest reader there is
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - the standard library's
    _fast_loads = json.loads


def _json(body: bytes) -> Any:
    if not body:
        return {}
    try:
        return _fast_loads(body)
    except ValueError:  # what orjson refuses and json takes (NaN, integers past 64 bits)
        return json.loads(body)


@functools.lru_cache(maxsize=8)
def _all_ok(count: int) -> bytes:
    """The answer to a bulk of ``count`` commands, encoded once (as ``json.dumps`` spells it)."""
    return json.dumps({"success": True, "results": [{"status": "ok"}] * count}).encode()


def handle_segment(body: bytes) -> Answer:
    batch = _json(body).get("batch", [])
    counter("segment").add(m.get("messageId") for m in batch)
    return 200, {"success": True}


def handle_posthog(body: bytes) -> Answer:
    doc = _json(body)
    batch = doc.get("batch") if isinstance(doc, dict) and "batch" in doc else (doc if isinstance(doc, list) else [doc])
    counter("posthog").add(m.get("uuid") for m in batch)
    return 200, {"status": 1}


def handle_mixpanel(body: bytes, content_type: str) -> Answer:
    if "json" in content_type:
        messages = _json(body)
    else:
        form = urllib.parse.parse_qs(body.decode("utf-8"))
        messages = json.loads(form.get("data", ["[]"])[0])
    if isinstance(messages, dict):
        messages = [messages]

    def insert_id(m: Dict[str, Any]) -> Optional[str]:
        return (m.get("properties") or {}).get("$insert_id") or m.get("$insert_id")

    counter("mixpanel").add(insert_id(m) for m in messages)
    return 200, {"status": 1, "error": None}


def handle_amplitude(body: bytes) -> Answer:
    events = _json(body).get("events", [])
    n = counter("amplitude").add(e.get("insert_id") for e in events)
    return 200, {"code": 200, "events_ingested": n, "payload_size_bytes": len(body), "server_upload_time": int(time.time() * 1000)}


def handle_floor(name: str, body: bytes) -> Answer:
    """A naive floor client of the web-app scenario (``floor``, ``floor_orjson``): a JSON list of
    events without ids, counted under ``name``."""
    events = _json(body)
    counter(name).add(None for _ in events)
    return 200, {"ok": True}


def handle_ours(path: str, body: bytes) -> Answer:
    doc = _json(body)
    if path == "/bulk":
        commands = doc.get("commands", [])
        counter("ours").add((c.get("data") or {}).get("command_id") for c in commands)
        return 200, _all_ok(len(commands))
    counter("ours").add([doc.get("command_id")])
    return 200, {"success": True}


def route(method: str, target: str, headers: Dict[str, str], body: bytes) -> Answer:
    """Answer one request (the body already decompressed)."""
    path = urllib.parse.urlsplit(target).path
    if path.rstrip("/") == "" and method == "GET":
        return 200, {"sink": True}
    if path == "/v1/batch":
        return handle_segment(body)
    if path in ("/batch/", "/batch") and b'"api_key"' in body and b'"events"' in body:
        return handle_amplitude(body)  # Amplitude's batch API also lives at /batch
    if path in ("/batch/", "/batch", "/i/v0/e/", "/e/", "/capture/", "/track/"):
        return handle_posthog(body)
    if path in ("/track", "/engage", "/groups", "/import"):
        return handle_mixpanel(body, headers.get("content-type", ""))
    if path == "/2/httpapi":
        return handle_amplitude(body)
    if path in ("/bulk", "/crm/events", "/crm/customers"):
        return handle_ours(path, body)
    if path in ("/floor", "/floor_orjson"):
        return handle_floor(path[1:], body)
    return 404, {"success": False, "errors": [f"sink: unknown path {path}"]}


# --- the HTTP/1.1 server ------------------------------------------------------------------------------

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}


class SinkProtocol(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 server protocol."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if not self._handle_one():
                return

    def _handle_one(self) -> bool:
        """Handle one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, target, version = (head[0].split(" ") + ["", "", ""])[:3]
        headers: Dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _parse_chunked(self.buffer, start)
            if parsed is None:
                return False
            body, consumed = parsed
        else:
            length = int(headers.get("content-length", "0") or 0)
            if len(self.buffer) < start + length:
                return False
            body, consumed = bytes(self.buffer[start : start + length]), start + length
        del self.buffer[:consumed]
        try:
            encoding = headers.get("content-encoding", "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            status, answer = route(method, target, headers, body)
        except Exception as exc:  # a malformed body must not kill the sink
            status, answer = 400, {"success": False, "errors": [f"sink: {exc!r}"]}
        payload = answer if type(answer) is bytes else json.dumps(answer).encode()
        close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        response = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n"
        ).encode() + payload
        if LATENCY > 0:
            asyncio.get_event_loop().call_later(LATENCY, self._answer, response, close)
        else:
            self._answer(response, close)
        return True

    def _answer(self, response: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client gave up on this connection meanwhile
        transport.write(response)
        if close:
            transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.transport = None


def _parse_chunked(buffer: bytearray, start: int) -> Optional[Tuple[bytes, int]]:
    """Decode a chunked body starting at ``start``; ``None`` while incomplete."""
    chunks: List[bytes] = []
    pos = start
    while True:
        line_end = buffer.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n", pos)
            if trailer_end < 0:
                return None
            return b"".join(chunks), trailer_end + 2
        if len(buffer) < pos + size + 2:
            return None
        chunks.append(bytes(buffer[pos : pos + size]))
        pos += size + 2


# --- control over stdin/stdout --------------------------------------------------------------------------


def stats() -> Dict[str, Any]:
    return {lib: c.as_dict() for lib, c in list(COUNTERS.items())}


def wait(lib: str, n: int, timeout: float, stall: float) -> Dict[str, Any]:
    """Block until ``lib`` holds ``n`` unique events, ``timeout`` passed or nothing came for ``stall``."""
    deadline = time.monotonic() + timeout
    last_unique = -1
    last_change = time.monotonic()
    while True:
        c = counter(lib)
        unique = c.unique
        now = time.monotonic()
        if unique != last_unique:
            last_unique, last_change = unique, now
        if unique >= n or now >= deadline or now - last_change >= stall:
            return dict(c.as_dict(), reached=unique >= n)
        time.sleep(0.001)


def control_loop(stdin: Any, write: Callable[[str], None]) -> None:
    for line in stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "stats":
            write(json.dumps(stats()))
        elif words[0] == "wait":
            write(json.dumps(wait(words[1], int(words[2]), float(words[3]), float(words[4]))))
        elif words[0] == "reset":
            COUNTERS.clear()
            write(json.dumps({"reset": True}))
        else:
            write(json.dumps({"error": f"unknown command {words[0]}"}))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="delay every answer by this many seconds")
    args = parser.parse_args(argv)
    if args.latency < 0:
        parser.error(f"--latency must be >= 0, not {args.latency}")
    global LATENCY
    LATENCY = args.latency

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(SinkProtocol, "127.0.0.1", args.port, backlog=1024))
    port = server.sockets[0].getsockname()[1]
    lock = threading.Lock()

    def write(text: str) -> None:
        with lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

    def control() -> None:
        try:
            control_loop(sys.stdin, write)
        finally:
            loop.call_soon_threadsafe(loop.stop)

    write(f"READY http://127.0.0.1:{port}")
    threading.Thread(target=control, name="sink-control", daemon=True).start()
    try:
        loop.run_forever()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

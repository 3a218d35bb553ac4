"""The HTTP side of the local 7SEGMENTS server: :class:`LocalServer` and its request handler.

See ``docs/local-server.md`` for the behaviour and every choice made where the protocol
(``docs/protocol.md``) is silent.
"""

from __future__ import annotations

import base64
import binascii
import collections
import email.utils
import functools
import json
import logging
import os
import socket
import ssl
import threading
import time
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Collection, Deque, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union
from urllib.parse import parse_qs

from ..protocol import (
    ANALYSIS_TYPES,
    MAX_BULK_BYTES,
    MAX_BULK_COMMANDS,
    MAX_COMMAND_BYTES,
    PATH_ANALYTICS_PREFIX,
    PATH_BULK,
    PATH_CUSTOMERS,
    PATH_EVENTS,
    PATH_HTML,
    RESULT_ERROR,
    RESULT_OK,
    RESULT_RETRY,
)
from . import analyses as _analyses
from .campaigns import Campaign, Source, in_file, load_campaigns, load_mapping, matches
from .faults import (
    COMMAND_ERROR,
    COMMAND_RETRY,
    DELAY,
    DROP_AFTER,
    DROP_BEFORE,
    REDIRECT,
    STATUS,
    TRICKLE,
    Faults,
    RequestFault,
)
from .faults import format_retry_after
from .store import Command, Store
from ..network import refuse_password
from ..serialization import escapes_lone_surrogate
from ..transport import redact_urls
from .validation import (
    CustomerUpdate,
    EventRow,
    HtmlRequest,
    command_size,
    split_command,
    validate_customer,
    validate_event,
    validate_event_bulk,
    validate_html,
)

logger = logging.getLogger(__name__)

JSONDict = Dict[str, Any]

#: API paths (as requested, with the leading slash) -> is it a tracking command endpoint.
_EVENTS = "/" + PATH_EVENTS
_CUSTOMERS = "/" + PATH_CUSTOMERS
_HTML = "/" + PATH_HTML
_BULK = "/" + PATH_BULK
_ANALYTICS = "/" + PATH_ANALYTICS_PREFIX
_LOCAL = "/_local/"

#: Bodies up to this size are read (and discarded) before answering 413, so that the client sees the answer.
_DRAIN_LIMIT = 64 * 1024 * 1024
#: A TLS client has this long to complete its handshake.
_HANDSHAKE_SECONDS = 10.0
#: How long a connection whose handshake failed is read from, for the client to take the alert.
_LINGER_SECONDS = 2.0
#: How many requests ``requests()`` keeps (the most recent).
DEFAULT_MAX_RECORDED = 10_000
#: At most this many body bytes (as received) are kept for ``requests()``.
MAX_RECORDED_BYTES = 64 * 1024 * 1024

_TOKEN_ERROR = "company_id is not a known company token"

#: ``GET /`` and ``GET /_local/``: what this server answers (never delayed, faulted nor recorded).
_INDEX_PATHS = frozenset(("/", "/_local", "/_local/"))
_INDEX: JSONDict = {
    "success": True,
    "server": "seven-segments local 7SEGMENTS server",
    "docs": "docs/local-server.md",
    "api": [
        "POST /crm/events", "POST /crm/customers", "POST /campaigns/html/get", "POST /bulk",
        "POST /analytics/{funnel,report,retention,segmentation}",
    ],
    "local": {
        "GET /_local/": "this index",
        "GET /_local/events[?company=TOKEN]": "stored events, in arrival order",
        "GET /_local/customers[?company=TOKEN]": "known customers with merged properties",
        "GET /_local/requests": "recorded API requests, oldest first",
        "GET /_local/stats": "counters",
        "GET /_local/wait_for_events?n=N&timeout=S": "wait until N events are stored",
        "GET /_local/faults": "planned faults",
        "POST /_local/faults": "plan faults: {\"action\": \"fail_next\", \"n\": 2, \"status\": 503} or a list",
        "GET /_local/latency": "seconds every API answer waits",
        "POST /_local/latency": "set it: {\"seconds\": 0.05}",
        "POST /_local/reset": "forget data, counters and faults",
    },
}


class _Encoded(bytes):
    """A JSON answer body encoded already (see :func:`_all_ok`)."""


@functools.lru_cache(maxsize=64)
def _all_ok(count: int) -> _Encoded:
    """The answer of a bulk request whose ``count`` commands all are ``ok``, encoded once per count."""
    return _Encoded(('{"success":true,"results":[' + ",".join(['{"status":"ok"}'] * count) + "]}").encode())


class _Refusal(Exception):
    """A whole-request refusal: status, errors and optional headers."""

    def __init__(self, status: int, errors: List[str], headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = headers or {}


class _Drop(Exception):
    """Close the connection without answering."""


class _HTTPServer(ThreadingHTTPServer):
    """Threading HTTP server that knows its :class:`LocalServer` and its open connections."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], app: "LocalServer") -> None:
        if ":" in address[0]:  # an IPv6 address such as ::1 (the class listens on IPv4 otherwise)
            self.address_family = socket.AF_INET6
        self.app = app
        self.connections: Set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)
        if app.tls is not None:
            # The handshake is made on the connection's own thread (finish_request), not in accept():
            # a client that stalls it must not hold up every other connection.
            self.socket = app.tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(_HANDSHAKE_SECONDS)
                request.do_handshake()
            except (OSError, ValueError) as error:  # no certificate, an untrusted one, not TLS at all
                self.app._count_refused_handshake()
                logger.info("local 7SEGMENTS server: TLS handshake with %s failed: %s", client_address[0], error)
                _linger(request)
                return
        super().finish_request(request, client_address)

    def close_connections(self) -> None:
        """Shut down every open connection (idle keep-alive ones included)."""
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _linger(connection: socket.socket) -> None:
    """Close our side of a connection whose handshake failed, then read what the client still sends
    (its request, under TLS 1.3) until it closes: closed at once, the kernel would answer that data
    with a reset, which can reach the client before the alert OpenSSL sent saying why."""
    try:
        socket.socket.shutdown(connection, socket.SHUT_WR)
        connection.settimeout(_LINGER_SECONDS)
        while socket.socket.recv(connection, 65536):
            pass
    except OSError:
        pass


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 with keep-alive."""

    protocol_version = "HTTP/1.1"
    server_version = "seven-segments-local"
    sys_version = ""
    timeout = 300
    server: _HTTPServer
    #: ``(stopping event, seconds per byte)`` while the trickle fault writes the answer.
    trickle: Optional[Tuple[threading.Event, float]] = None

    def setup(self) -> None:
        super().setup()
        self.trickle = None
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def __getattr__(self, name: str) -> Callable[[], None]:
        # Every method (GET, POST, PUT, FOO...) goes to the same dispatcher: 405 / 404 are decided by path.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        if logger.isEnabledFor(logging.DEBUG):  # a request line it quotes may hold ?company=TOKEN
            logger.debug("%s %s", self.address_string(), redact_urls(format % args))

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """Errors found by the base class (malformed request line, headers too long...) as JSON."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self.close_connection = True
        self.send_json(code, {"success": False, "errors": [message or phrase]})

    def send_json(self, status: int, payload: Any, headers: Optional[Mapping[str, str]] = None) -> None:
        """Write a complete JSON answer in one go (``payload`` may be an :class:`_Encoded` body)."""
        if type(payload) is _Encoded:
            body: bytes = payload
        else:
            body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        lines = [
            f"HTTP/1.1 {status} {phrase}",
            f"Server: {self.server_version}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        answer = head if self.command == "HEAD" else head + body
        trickle = self.trickle
        if trickle is None:
            self.wfile.write(answer)
            return
        stopping, seconds = trickle
        self.trickle = None
        for index in range(len(answer)):  # one byte at a time (the trickle fault)
            self.wfile.write(answer[index : index + 1])
            self.wfile.flush()
            if stopping.wait(seconds):
                self.close_connection = True
                return

    def drop(self) -> None:
        """Close the connection without any answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def read_raw_body(self) -> bytes:
        """The request body as sent (Content-Length or chunked), at most ``MAX_BULK_BYTES``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            raise _Refusal(400, ["Content-Length must be a non-negative integer"])
        if length > MAX_BULK_BYTES:
            self._discard(length)
            raise _Refusal(413, [f"the body is {length} bytes, more than {MAX_BULK_BYTES}"])
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        if length > _DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _read_chunked(self) -> bytes:
        parts: List[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise _Refusal(400, ["malformed chunked body"])
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            total += size
            if total > MAX_BULK_BYTES:
                self.close_connection = True
                raise _Refusal(413, [f"the body is more than {MAX_BULK_BYTES} bytes"])
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        return b"".join(parts)

    def _dispatch(self) -> None:
        app = self.server.app
        started = time.perf_counter()
        status: Optional[int] = None
        try:
            status = app.handle(self)
        except _Drop:
            self.drop()
        except Exception as error:  # a bug of this server: answer 500 (if nothing was sent) rather than hang up
            logger.exception("local 7SEGMENTS server: %s %s failed", self.command, self.path.partition("?")[0])
            self.close_connection = True
            status = 500
            try:
                errors = [f"internal error of the local server: {type(error).__name__}"]
                self.send_json(500, {"success": False, "errors": errors})
            except OSError:
                pass
        finally:
            if app.verbose:
                logger.info(
                    "%s %s -> %s (%.1f ms)",
                    self.command,
                    redact_urls(self.path),  # ?company=*** as the client shows it: tokens are secrets
                    "dropped" if status is None else status,
                    (time.perf_counter() - started) * 1000,
                )


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing (413) more than ``limit`` bytes of output without inflating them all."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(raw, limit + 1)
        if len(data) > limit:
            raise _Refusal(413, [f"the uncompressed body is more than {limit} bytes"])
        if not decompressor.eof:
            data += decompressor.flush()
            if not decompressor.eof:
                raise _Refusal(400, ["the gzip body is truncated"])
    except zlib.error as error:
        raise _Refusal(400, [f"the body is not valid gzip: {error}"]) from None
    return data


class LocalServer:
    """A real 7SEGMENTS-compatible HTTP server on ``host:port`` (a free port by default).

    ``with LocalServer() as server: server.url`` (``http://127.0.0.1:PORT``, no trailing slash).
    ``db``: SQLite file (in memory by default; a file survives a restart). ``campaigns`` and
    ``analyses``: mapping or JSON file path. ``users``: name -> password for the export API
    (``None``: any name and password). ``tokens``: accepted company tokens (``None``: any non-empty
    one). ``counting_only``: validate, dedupe and count but store nothing. ``verbose``: log one line
    per request (``logging.INFO`` on this module's logger; URL query values masked, ``?company=***``). ``latency``: seconds every API answer
    (every path but ``/_local/``) waits after its body is read, as a round trip across a network
    would; concurrent requests wait concurrently (settable at run time through :attr:`latency` or
    ``POST /_local/latency``). Stored data stays readable after :meth:`stop`; a restarted server
    listens on the same port again. ``tls_cert`` (a PEM certificate, its key in it or in ``tls_key``):
    serve HTTPS (``url`` is then ``https://...``); with ``tls_client_ca`` (a PEM CA bundle), a client
    must present a certificate that CA signed (mutual TLS), else its handshake fails (counted in
    ``stats()["tls_refused"]``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        db: Optional[str] = None,
        campaigns: Source = None,
        analyses: Source = None,
        users: Optional[Mapping[str, str]] = None,
        tokens: Optional[Collection[str]] = None,
        counting_only: bool = False,
        verbose: bool = False,
        max_recorded_requests: int = DEFAULT_MAX_RECORDED,
        latency: float = 0.0,
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        tls_client_ca: Optional[str] = None,
    ) -> None:
        #: The server side of TLS (``None``: plain HTTP), made and checked now (see ``_tls_context``).
        self.tls = _tls_context(tls_cert, tls_key, tls_client_ca)
        self._latency = 0.0
        self.latency = latency
        self.host = host
        self.port = port
        self.db = db
        self.campaigns = campaigns  # checked and loaded by the setters
        self.analyses = analyses
        self.users = users
        self.tokens = tokens
        self.counting_only = counting_only
        self.verbose = verbose
        self.faults = Faults()
        self._store = Store(db, counting_only=counting_only)
        self._recorded: Deque[JSONDict] = collections.deque()
        self._recorded_bytes = 0
        self.max_recorded_requests = max_recorded_requests
        self._stats_lock = threading.Lock()
        self._stats: JSONDict = {}
        self._reset_stats()
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    # -- configuration -----------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds every API answer waits (``0``: none); assign a new value at any time."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = _check_latency(seconds)

    @property
    def campaigns(self) -> Dict[str, Campaign]:
        """HTML campaigns by name; assign a mapping or a JSON file path (checked: ``ValueError`` naming the problem)."""
        return self._campaigns

    @campaigns.setter
    def campaigns(self, source: Source) -> None:
        self._campaigns = load_campaigns(source)

    @property
    def analyses(self) -> Dict[str, JSONDict]:
        """Export API analyses by id; assign a mapping or a JSON file path (checked: ``ValueError``)."""
        return self._analyses

    @analyses.setter
    def analyses(self, source: Source) -> None:
        definitions = load_mapping(source, "analyses")
        try:
            self._analyses = _analyses.load_analyses(definitions)
        except ValueError as error:
            raise in_file(source, "analyses", error) from None

    @property
    def users(self) -> Optional[Dict[str, str]]:
        """Export API users, name -> password (``None``: any non-empty name with any password)."""
        return self._users

    @users.setter
    def users(self, users: Optional[Mapping[str, str]]) -> None:
        if users is None:
            self._users: Optional[Dict[str, str]] = None
            return
        if not isinstance(users, Mapping):
            raise ValueError(f"users must be a mapping of user name to password, not {type(users).__name__}")
        for name, password in users.items():
            if not isinstance(name, str) or not name or ":" in name:
                raise ValueError(f"user name {name!r} must be a non-empty string without ':'")
            if not isinstance(password, str):
                raise ValueError(f"the password of user {name!r} must be a string")  # the value is not shown
        self._users = dict(users)

    @property
    def tokens(self) -> Optional[FrozenSet[str]]:
        """Accepted company tokens (``None``: any non-empty token); assign a collection of strings."""
        return self._tokens

    @tokens.setter
    def tokens(self, tokens: Optional[Collection[str]]) -> None:
        if tokens is None:
            self._tokens: Optional[FrozenSet[str]] = None
            return
        if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Collection):
            kind = type(tokens).__name__
            raise ValueError(f"tokens must be a collection of company tokens (a list or set), not {kind}")
        if not all(isinstance(token, str) and token for token in tokens):
            raise ValueError("tokens must all be non-empty strings")  # tokens are secrets: none is shown
        self._tokens = frozenset(tokens)

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server, such as ``http://127.0.0.1:8765`` (no trailing slash)."""
        if self._httpd is None and self.port == 0:
            raise RuntimeError("the server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'http' if self.tls is None else 'https'}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._httpd is not None

    def start(self) -> "LocalServer":
        """Bind and serve in a background (daemon) thread; returns ``self``."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        try:
            httpd = _HTTPServer((self.host, self.port), self)
        except OSError as error:
            host = f"[{self.host}]" if ":" in self.host else self.host
            refused = OSError(f"cannot listen on {host}:{self.port}: {error.strerror or error}")
            refused.errno = error.errno
            raise refused from None
        self.port = int(httpd.server_address[1])
        self._httpd = httpd
        # stop() waits for the serving loop to notice, up to one poll interval: test suites start and
        # stop a server per test, so the loop polls often (an idle wake-up costs next to nothing).
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, name=f"seven-segments-local:{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.debug("local 7SEGMENTS server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close every connection, idle keep-alive ones included; returns promptly."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        logger.debug("local 7SEGMENTS server on port %s stopped", self.port)

    def close(self) -> None:
        """``stop()`` and close the database."""
        self.stop()
        self._store.close()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<LocalServer {state}>"

    # -- inspection --------------------------------------------------------------------------------

    def events(self, company_id: Optional[str] = None) -> List[JSONDict]:
        """Stored events in arrival order: dicts of company_id, customer_ids, type, properties, timestamp, command_id."""
        return self._store.events(company_id)

    def customers(self, company_id: Optional[str] = None) -> List[JSONDict]:
        """Known customers: dicts of company_id, ids and merged properties."""
        return self._store.customers(company_id)

    def customer(self, ids: Union[str, Mapping[str, str]], company_id: Optional[str] = None) -> Optional[JSONDict]:
        """Merged properties of one customer (a plain string means ``{"registered": ...}``), or ``None``."""
        wanted = {"registered": ids} if isinstance(ids, str) else dict(ids)
        for customer in self._store.customers(company_id):
            if customer["ids"] == wanted:
                return dict(customer["properties"])
        return None

    def requests(self) -> List[JSONDict]:
        """Recorded API requests, oldest first (none when counting only).

        At most the last ``max_recorded_requests`` (10,000), and their bodies total at most
        ``MAX_RECORDED_BYTES`` (64 MiB; older requests are forgotten first). Each: method, path (with
        query), headers (``Authorization`` value redacted), user (the HTTP Basic user name, if any),
        body (decoded JSON after gunzip, ``None`` if not JSON), gzipped, status (``None`` when dropped
        or not answered yet) and time (seconds since the epoch).
        """
        with self._stats_lock:
            records = [dict(record) for record in self._recorded]
        for record in records:
            raw = record.pop("raw")
            try:
                text = _gunzip(raw, MAX_BULK_BYTES) if record["gzipped"] else raw
                record["body"] = json.loads(text.decode("utf-8")) if text else None
            except (_Refusal, ValueError):
                record["body"] = None
        return records

    def stats(self) -> JSONDict:
        """Counters since start or reset (with a ``db`` file, ``events`` counts the file's events too).

        Keys: requests, bulk_requests, statuses, commands, tls_refused (TLS handshakes that failed),
        events, customer_updates, duplicates, faults, faults_injected (see ``docs/local-server.md``).
        """
        with self._stats_lock:
            stats: JSONDict = dict(self._stats)
            stats["statuses"] = dict(stats["statuses"])
            stats["commands"] = dict(stats["commands"])
        stats["events"] = self._store.events_accepted
        stats["customer_updates"] = self._store.customer_updates
        stats["duplicates"] = self._store.duplicates
        stats["faults"] = dict(self.faults.injected)
        stats["faults_injected"] = sum(stats["faults"].values())
        return stats

    def reset(self) -> None:
        """Forget events, customers, command ids, recorded requests, counters and planned faults."""
        self._store.reset()
        self.faults.reset()
        with self._stats_lock:
            self._recorded.clear()
            self._recorded_bytes = 0
            self._reset_stats()

    def wait_for_events(self, n: int, timeout: Optional[float] = 5.0) -> bool:
        """Wait until ``stats()["events"] >= n``; ``False`` after ``timeout`` s.

        That count is the events accepted since start or :meth:`reset`, plus, with a ``db`` file, the
        events the file held already: ``wait_for_events(n)`` waits until ``len(events()) >= n``.
        """
        return self._store.wait_for_events(n, timeout)

    def _reset_stats(self) -> None:
        self._stats = {
            "requests": 0,
            "bulk_requests": 0,
            "statuses": {},
            "commands": {RESULT_OK: 0, RESULT_RETRY: 0, RESULT_ERROR: 0},
            "tls_refused": 0,
        }

    def _count_refused_handshake(self) -> None:
        with self._stats_lock:
            self._stats["tls_refused"] += 1

    def _count(self, status: Optional[int], results: Optional[Mapping[str, int]] = None) -> None:
        with self._stats_lock:
            key = "dropped" if status is None else str(status)
            self._stats["statuses"][key] = self._stats["statuses"].get(key, 0) + 1
            if results:
                commands = self._stats["commands"]
                for result, count in results.items():
                    commands[result] += count

    # -- request handling --------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> Optional[int]:
        """Answer one request; the status sent (``None`` when the connection was dropped)."""
        path, _, query = handler.path.partition("?")
        if path.startswith(_LOCAL):
            return self._handle_local(handler, path, query)
        if path in _INDEX_PATHS and handler.command in ("GET", "HEAD"):
            handler.send_json(200, _INDEX)
            return 200
        latency = self._latency
        if latency > 0 and self._stopping.wait(latency):
            raise _Drop()  # stopped while waiting: go away without applying
        if path in (_EVENTS, _CUSTOMERS, _HTML, _BULK) or path.startswith(_ANALYTICS):
            return self._handle_api(handler, path, query)
        return self._refuse(handler, _Refusal(404, [f"unknown path {path}"]), drain=True)

    def _refuse(self, handler: _Handler, refusal: _Refusal, drain: bool = False) -> int:
        if drain:
            try:
                handler.read_raw_body()
            except _Refusal:
                pass
        handler.send_json(refusal.status, {"success": False, "errors": refusal.errors}, refusal.headers)
        return refusal.status

    def _handle_api(self, handler: _Handler, path: str, query: str) -> Optional[int]:
        with self._stats_lock:
            self._stats["requests"] += 1
            if path == _BULK:
                self._stats["bulk_requests"] += 1
        if handler.command != "POST":
            self._count(405)
            return self._refuse(handler, _Refusal(405, [f"{path} accepts POST only"], {"Allow": "POST"}), drain=True)
        record: Optional[JSONDict] = None
        received = time.time()
        fault: Optional[RequestFault] = None
        status: Optional[int] = None
        results: Dict[str, int] = {}
        counted = False
        try:
            try:
                raw = handler.read_raw_body()
                gzipped = "gzip" in handler.headers.get("Content-Encoding", "").lower()
                record = self._record(handler, path, query, raw, gzipped, received)
                fault = self.faults.take_request(path == _BULK)
                if fault is not None:
                    self._pre_fault(fault, handler.path)
                body, size = self._decode(handler, raw, MAX_BULK_BYTES if path == _BULK else MAX_COMMAND_BYTES)
                answer, extra_headers = self._process(handler, path, query, body, size, received, fault, results)
                status = 200
            except _Refusal as refusal:
                status = refusal.status
                answer, extra_headers = {"success": False, "errors": refusal.errors}, refusal.headers
            if fault is not None and fault.kind == DROP_AFTER:
                raise _Drop()
            if record is not None:
                record["status"] = status
            # Count before answering, so that a client reading stats() after the answer sees it.
            self._count(status, results)
            counted = True
            if fault is not None and fault.kind == TRICKLE:
                handler.trickle = (self._stopping, fault.seconds)
            handler.send_json(status, answer, extra_headers)
            return status
        except _Drop:
            status = None
            raise
        finally:
            if not counted:
                self._count(status, results)  # before _dispatch drops the connection

    def _pre_fault(self, fault: RequestFault, target: str) -> None:
        if fault.kind == REDIRECT:
            raise _Refusal(
                fault.status, [f"injected fault: HTTP {fault.status} redirect"], {"Location": f"{fault.location}{target}"}
            )
        if fault.kind == STATUS:
            retry_after = format_retry_after(fault.retry_after)
            raise _Refusal(
                fault.status,
                [f"injected fault: HTTP {fault.status}"],
                {"Retry-After": retry_after} if retry_after is not None else None,
            )
        if fault.kind == DELAY:
            if self._stopping.wait(fault.seconds):
                raise _Drop()  # stopped while delaying: go away without applying
        elif fault.kind == DROP_BEFORE:
            raise _Drop()

    def _record(
        self, handler: _Handler, path: str, query: str, raw: bytes, gzipped: bool, received: float
    ) -> Optional[JSONDict]:
        if self.counting_only:
            return None
        headers: Dict[str, str] = {}
        user: Optional[str] = None
        for name, value in handler.headers.items():
            if name.lower() == "authorization":
                scheme = value.split(" ", 1)[0]
                user = _basic_credentials(value)[0] if scheme.lower() == "basic" else None
                value = f"{scheme} <redacted>"
            headers[name] = value
        record: JSONDict = {
            "method": handler.command,
            "path": path + ("?" + query if query else ""),
            "headers": headers,
            "user": user,
            "raw": raw,
            "gzipped": gzipped,
            "status": None,
            "time": received,
        }
        with self._stats_lock:
            self._recorded.append(record)
            self._recorded_bytes += len(raw)
            while self._recorded and (
                len(self._recorded) > self.max_recorded_requests or self._recorded_bytes > MAX_RECORDED_BYTES
            ):
                self._recorded_bytes -= len(self._recorded.popleft()["raw"])
        return record

    def _decode(self, handler: _Handler, raw: bytes, limit: int) -> Tuple[JSONDict, int]:
        """The JSON object of the body (after gunzip) and its uncompressed size; refusals as ``_Refusal``."""
        content_type = handler.headers.get("Content-Type", "")
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise _Refusal(400, ["Content-Type must be application/json"])
        encoding = handler.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            raw = _gunzip(raw, limit)
        elif encoding not in ("identity", ""):
            raise _Refusal(400, [f"Content-Encoding {encoding} is not supported (use gzip or none)"])
        if len(raw) > limit:
            raise _Refusal(413, [f"the body is {len(raw)} bytes, more than {limit}"])
        try:
            body = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Refusal(400, ["the body is not UTF-8"]) from None
        except ValueError as error:
            raise _Refusal(400, [f"the body is not valid JSON: {error}"]) from None
        if not isinstance(body, dict):
            raise _Refusal(400, ["the body must be a JSON object"])
        if escapes_lone_surrogate(raw, body):  # neither stored nor measured as UTF-8
            raise _Refusal(400, ["the body holds an escaped lone surrogate (\\ud800 to \\udfff), which is not text"])
        return body, len(raw)

    def _process(
        self,
        handler: _Handler,
        path: str,
        query: str,
        body: JSONDict,
        size: int,
        received: float,
        fault: Optional[RequestFault],
        results: Dict[str, int],
    ) -> Tuple[Union[JSONDict, _Encoded], Optional[Dict[str, str]]]:
        if path == _BULK:
            return self._bulk(body, size, received, fault, results), None
        if path == _EVENTS or path == _CUSTOMERS:
            command = validate_event(body, received) if path == _EVENTS else validate_customer(body, received)
            if isinstance(command, list):
                results[RESULT_ERROR] = 1
                raise _Refusal(400, command)
            if not self._token_ok(command.company_id):
                results[RESULT_ERROR] = 1
                raise _Refusal(401, [_TOKEN_ERROR])
            self._store.apply([command])
            results[RESULT_OK] = 1
            return {"success": True}, None
        if path == _HTML:
            return self._html(body), None
        return self._analytics(handler, path[len(_ANALYTICS):], query, body), None

    def _token_ok(self, token: str) -> bool:
        return self.tokens is None or token in self.tokens

    def _bulk(
        self, body: JSONDict, size: int, received: float, fault: Optional[RequestFault], counts: Dict[str, int]
    ) -> Union[JSONDict, _Encoded]:
        commands = body.get("commands")
        if not isinstance(commands, list):
            raise _Refusal(400, ["the body must be a JSON object with a commands list"])
        extra = sorted(set(body) - {"commands"})
        if extra:
            raise _Refusal(400, [f"{name} is not a known field of a bulk body" for name in extra])
        if len(commands) > MAX_BULK_COMMANDS:
            raise _Refusal(413, [f"a bulk request holds at most {MAX_BULK_COMMANDS} commands, not {len(commands)}"])
        tokens = self.tokens
        if not self.faults.commands_faulted(fault):
            # The usual bulk, all valid events, checked as a whole; anything else command by command below.
            batch = validate_event_bulk(commands, received, size, rows=not self.counting_only)
            if batch is not None and (tokens is None or batch.companies <= tokens):
                self._store.apply_events(batch.keys, batch.rows)
                counts[RESULT_OK] = len(commands)
                return _all_ok(len(commands))
        validated: List[Union[EventRow, CustomerUpdate, List[str]]] = []
        for command in commands:
            # Fast path for the usual shape; split_command reports anything else.
            errors: List[str]
            if type(command) is dict and len(command) == 2 and "data" in command:
                name, data, errors = command.get("name"), command["data"], []
            else:
                name, data, errors = split_command(command)
            if errors:
                validated.append(errors)
            elif name == PATH_EVENTS:
                validated.append(validate_event(data, received))
            elif name == PATH_CUSTOMERS:
                validated.append(validate_customer(data, received))
            else:
                validated.append([f"name must be {PATH_EVENTS} or {PATH_CUSTOMERS}"])
        if size > MAX_COMMAND_BYTES:
            self._check_command_sizes(commands, validated)
        injected = self.faults.take_commands(len(commands), fault)
        results: List[JSONDict] = []
        valid: List[Command] = []
        ok = {"status": RESULT_OK}
        for index, item in enumerate(validated):
            kind = injected[index]
            if kind == COMMAND_RETRY:
                results.append({"status": RESULT_RETRY})
            elif kind == COMMAND_ERROR:
                results.append({"status": RESULT_ERROR, "errors": ["injected fault: command refused"]})
            elif type(item) is list:
                results.append({"status": RESULT_ERROR, "errors": item})
            elif tokens is not None and item.company_id not in tokens:  # type: ignore[union-attr]
                results.append({"status": RESULT_ERROR, "errors": [_TOKEN_ERROR]})
            else:
                valid.append(item)  # type: ignore[arg-type]
                results.append(ok)
        self._store.apply(valid)
        for result in results:
            status = result["status"]
            counts[status] = counts.get(status, 0) + 1
        return {"success": True, "results": results}

    @staticmethod
    def _check_command_sizes(commands: List[Any], validated: List[Union[EventRow, CustomerUpdate, List[str]]]) -> None:
        """413 if any command's data is over ``MAX_COMMAND_BYTES`` as JSON (exact size only when it may be)."""
        for index, item in enumerate(validated):
            # At most 4 bytes per character of JSON text in UTF-8, 6 per character of a raw string (\u0000),
            # plus the other fields' names, syntax, command_id and timestamp.
            if isinstance(item, EventRow):
                estimate = 4 * (len(item.properties_json) + len(item.customer_key))
                estimate += 6 * (len(item.type) + len(item.company_id))
            elif isinstance(item, CustomerUpdate):
                estimate = 4 * sum(len(value) for value in item.properties.values())
                estimate += 6 * sum(len(key) + 1 for key in item.properties) + 4 * len(item.customer_key)
                estimate += 6 * len(item.company_id)
            else:
                estimate = MAX_COMMAND_BYTES  # refused anyway: measure exactly
            if estimate + 512 > MAX_COMMAND_BYTES:
                command = commands[index]
                if isinstance(command, dict) and "data" in command:
                    size = command_size(command["data"])
                    if size > MAX_COMMAND_BYTES:
                        raise _Refusal(
                            413, [f"commands[{index}].data is {size} bytes as JSON, more than {MAX_COMMAND_BYTES}"]
                        )

    def _html(self, body: JSONDict) -> JSONDict:
        request = validate_html(body)
        if isinstance(request, list):
            raise _Refusal(400, request)
        assert isinstance(request, HtmlRequest)
        if not self._token_ok(request.company_id):
            raise _Refusal(401, [_TOKEN_ERROR])
        campaign = self.campaigns.get(request.campaign)
        if campaign is None:
            raise _Refusal(404, [f"no campaign named {request.campaign!r}"])
        if campaign.condition is not None:
            properties = self._store.customer_properties(request.company_id, request.customer_key)
            if not matches(campaign.condition, properties):
                return {"success": True, "data": ""}
        return {"success": True, "data": campaign.html}

    def _analytics(self, handler: _Handler, analysis_type: str, query: str, body: JSONDict) -> JSONDict:
        if analysis_type not in ANALYSIS_TYPES:
            raise _Refusal(404, [f"unknown analysis type {analysis_type!r}; one of {sorted(ANALYSIS_TYPES)}"])
        name, password = _basic_credentials(handler.headers.get("Authorization", ""))
        if name is None or not self._user_ok(name, password or ""):
            raise _Refusal(
                401, ["HTTP Basic credentials of an export API user are required" if name is None
                      else "the username or password is not that of an export API user"],
                {"WWW-Authenticate": 'Basic realm="7SEGMENTS export API", charset="UTF-8"'},
            )
        analysis_id = body.get("analysis_id")
        if not isinstance(analysis_id, str) or not analysis_id:
            raise _Refusal(400, ["analysis_id must be a non-empty string"])
        analysis = self.analyses.get(analysis_id)
        if analysis is None or analysis["type"] != analysis_type:
            raise _Refusal(404, [f"no {analysis_type} analysis with id {analysis_id!r}"])
        company = self._pick_company(parse_qs(query).get("company", []))
        result = _analyses.compute(analysis, self._store, company)
        answer: JSONDict = {"success": True}
        answer.update(result)
        return answer

    def _user_ok(self, name: str, password: str) -> bool:
        if self.users is None:
            return bool(name)
        expected = self.users.get(name)
        return expected is not None and _constant_time_equal(expected, password)

    def _pick_company(self, given: List[str]) -> str:
        if given:
            company = given[-1]
            if not company:
                raise _Refusal(400, ["company must be a non-empty company token"])
            if self.tokens is not None and company not in self.tokens:
                raise _Refusal(403, ["this user has no access to that company"])
            return company
        choices = sorted(self.tokens) if self.tokens is not None else self._store.companies()
        if len(choices) == 1:
            return choices[0]
        if not choices:
            return ""
        raise _Refusal(400, [f"this user can reach {len(choices)} companies; pick one with ?company=TOKEN"])

    def _handle_local(self, handler: _Handler, path: str, query: str) -> int:
        name = path[len(_LOCAL):]
        params = parse_qs(query)
        company = params.get("company", [None])[-1]
        getters: Dict[str, Callable[[], Any]] = {
            "events": lambda: {"events": self.events(company)},
            "customers": lambda: {"customers": self.customers(company)},
            "requests": lambda: {"requests": self.requests()},
            "stats": lambda: {"stats": self.stats()},
            "faults": lambda: {"faults": self.faults.pending()},
            "latency": lambda: {"latency": self.latency},
        }
        try:
            raw = handler.read_raw_body()
            if handler.command == "GET" and name in getters:
                answer = {"success": True}
                answer.update(getters[name]())
                handler.send_json(200, answer)
                return 200
            if handler.command == "GET" and name == "wait_for_events":
                try:
                    n = int(params.get("n", ["1"])[-1])
                    timeout = float(params.get("timeout", ["5"])[-1])
                except ValueError:
                    raise _Refusal(400, ["n must be an integer and timeout a number"]) from None
                reached = self.wait_for_events(n, min(timeout, 60.0))
                handler.send_json(200, {"success": True, "reached": reached, "events": self._store.events_accepted})
                return 200
            if handler.command == "POST" and name == "latency":
                try:
                    self.latency = json.loads(raw.decode("utf-8") or "null").get("seconds")
                except (ValueError, AttributeError) as error:
                    raise _Refusal(400, [f'the body must be {{"seconds": S}}: {error}']) from None
                handler.send_json(200, {"success": True, "latency": self.latency})
                return 200
            if handler.command == "POST" and name == "reset":
                self.reset()
                handler.send_json(200, {"success": True})
                return 200
            if handler.command == "POST" and name == "faults":
                try:
                    spec = json.loads(_gunzip(raw, MAX_BULK_BYTES) if "gzip" in handler.headers.get(
                        "Content-Encoding", "").lower() else raw.decode("utf-8"))
                    self.faults.apply_json(spec)
                except (ValueError, TypeError) as error:
                    raise _Refusal(400, [f"invalid fault: {error}"]) from None
                handler.send_json(200, {"success": True, "faults": self.faults.pending()})
                return 200
            if handler.command in ("GET", "HEAD") and name == "":
                handler.send_json(200, _INDEX)
                return 200
            if name in getters or name in ("reset", "faults", "wait_for_events", ""):
                raise _Refusal(405, [f"{path} does not accept {handler.command}"])
            raise _Refusal(404, [f"unknown path {path}"])
        except _Refusal as refusal:
            return self._refuse(handler, refusal)


def _tls_context(cert: Optional[str], key: Optional[str], client_ca: Optional[str]) -> Optional[ssl.SSLContext]:
    """The server's TLS context for ``LocalServer(tls_cert=, tls_key=, tls_client_ca=)``, or None;
    ``ValueError`` naming the keyword and the file that is missing or does not load."""
    if cert is None:
        if key is not None or client_ca is not None:
            raise ValueError("tls_key and tls_client_ca need tls_cert (the server's certificate)")
        return None
    for name, path in (("tls_cert", cert), ("tls_key", key), ("tls_client_ca", client_ca)):
        if path is not None and not (isinstance(path, str) and os.path.isfile(path)):
            raise ValueError(f"{name}: {path!r} is not a file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=refuse_password)  # never a prompt on the terminal
    except (ssl.SSLError, OSError, ValueError) as error:
        files = repr(cert) if key is None else f"{cert!r} and {key!r}"
        what = "tls_cert" if key is None else "tls_cert and tls_key"
        raise ValueError(f"{what}: {files} cannot be loaded as a PEM certificate and its key ({error})") from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"tls_client_ca: {client_ca!r} holds no CA certificate that can be read ({error})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _check_latency(seconds: Any) -> float:
    """``seconds`` as a float if it is a finite number from 0 to 60, else ``ValueError`` naming it."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 60:
        raise ValueError(f"latency must be a number of seconds from 0 to 60, not {seconds!r}")
    return float(seconds)


def _basic_credentials(header: str) -> Tuple[Optional[str], Optional[str]]:
    """``(user, password)`` from an ``Authorization: Basic`` header, ``(None, None)`` if absent or malformed."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None, None
    name, sep, password = decoded.partition(":")
    if not sep:
        return None, None
    return name, password


def _constant_time_equal(expected: str, given: str) -> bool:
    import hmac

    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))

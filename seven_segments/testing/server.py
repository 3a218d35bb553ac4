"""The HTTP side of the local 7SEGMENTS server: :class:`LocalServer` and its request handler.

See ``docs/local-server.md`` for the behaviour and every choice made where the protocol
(``docs/protocol.md``) is silent.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import socket
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Set, Tuple, Union

from ..network import refuse_password
from ..protocol import MAX_BULK_BYTES
from ..transport import redact_urls
from .api_routes import ANALYTICS, API_PATHS, ApiRoutes
from .campaigns import Campaign, Source
from .faults import Faults
from .local_routes import INDEX, INDEX_PATHS, LOCAL, LocalRoutes
from .recording import DEFAULT_MAX_RECORDED, MAX_RECORDED_BYTES, Recorder
from .settings import Settings
from .store import Store
from .wire import Drop, Encoded, JSONDict, Refusal, refuse

__all__ = ["LocalServer", "DEFAULT_MAX_RECORDED", "MAX_RECORDED_BYTES"]

logger = logging.getLogger(__name__)

#: Bodies up to this size are read (and discarded) before answering 413, so that the client sees the answer.
_DRAIN_LIMIT = 64 * 1024 * 1024
#: A TLS client has this long to complete its handshake.
_HANDSHAKE_SECONDS = 10.0
#: How long a connection whose handshake failed is read from, for the client to take the alert.
_LINGER_SECONDS = 2.0


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
        """Write a complete JSON answer in one go (``payload`` may be an :class:`~.wire.Encoded` body)."""
        if type(payload) is Encoded:
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
            raise Refusal(400, ["Content-Length must be a non-negative integer"])
        if length > MAX_BULK_BYTES:
            self._discard(length)
            raise Refusal(413, [f"the body is {length} bytes, more than {MAX_BULK_BYTES}"])
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
                raise Refusal(400, ["malformed chunked body"])
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            total += size
            if total > MAX_BULK_BYTES:
                self.close_connection = True
                raise Refusal(413, [f"the body is more than {MAX_BULK_BYTES} bytes"])
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)
        return b"".join(parts)

    def _dispatch(self) -> None:
        app = self.server.app
        started = time.perf_counter()
        status: Optional[int] = None
        try:
            status = app.handle(self)
        except Drop:
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
        self._settings = Settings(latency, campaigns, analyses, users, tokens)  # each checked
        self.host = host
        self.port = port
        self.db = db
        self.counting_only = counting_only
        self.verbose = verbose
        self.faults = Faults()
        self._store = Store(db, counting_only=counting_only)
        self._recorder = Recorder(max_recorded_requests, keep=not counting_only)
        self._httpd: Optional[_HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()
        self._api = ApiRoutes(self._settings, self._store, self.faults, self._recorder, self._stopping, counting_only)
        self._local = LocalRoutes(self)

    # -- configuration -----------------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds every API answer waits (``0``: none); assign a new value at any time."""
        return self._settings.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._settings.latency = seconds

    @property
    def campaigns(self) -> Dict[str, Campaign]:
        """HTML campaigns by name; assign a mapping or a JSON file path (checked: ``ValueError`` naming the problem)."""
        return self._settings.campaigns

    @campaigns.setter
    def campaigns(self, source: Source) -> None:
        self._settings.campaigns = source

    @property
    def analyses(self) -> Dict[str, JSONDict]:
        """Export API analyses by id; assign a mapping or a JSON file path (checked: ``ValueError``)."""
        return self._settings.analyses

    @analyses.setter
    def analyses(self, source: Source) -> None:
        self._settings.analyses = source

    @property
    def users(self) -> Optional[Dict[str, str]]:
        """Export API users, name -> password (``None``: any non-empty name with any password)."""
        return self._settings.users

    @users.setter
    def users(self, users: Optional[Mapping[str, str]]) -> None:
        self._settings.users = users

    @property
    def tokens(self) -> Optional[FrozenSet[str]]:
        """Accepted company tokens (``None``: any non-empty token); assign a collection of strings."""
        return self._settings.tokens

    @tokens.setter
    def tokens(self, tokens: Optional[Collection[str]]) -> None:
        self._settings.tokens = tokens

    @property
    def max_recorded_requests(self) -> int:
        """How many requests ``requests()`` keeps at most (the most recent); assign a new number at any time."""
        return self._recorder.max_requests

    @max_recorded_requests.setter
    def max_recorded_requests(self, count: int) -> None:
        self._recorder.max_requests = count

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
        return self._recorder.requests()

    def stats(self) -> JSONDict:
        """Counters since start or reset (with a ``db`` file, ``events`` counts the file's events too).

        Keys: requests, bulk_requests, statuses, commands, tls_refused (TLS handshakes that failed),
        events, customer_updates, duplicates, faults, faults_injected (see ``docs/local-server.md``).
        """
        stats = self._recorder.counters()
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
        self._recorder.reset()

    def wait_for_events(self, n: int, timeout: Optional[float] = 5.0) -> bool:
        """Wait until ``stats()["events"] >= n``; ``False`` after ``timeout`` s.

        That count is the events accepted since start or :meth:`reset`, plus, with a ``db`` file, the
        events the file held already: ``wait_for_events(n)`` waits until ``len(events()) >= n``.
        """
        return self._store.wait_for_events(n, timeout)

    def _count_refused_handshake(self) -> None:
        """Count a TLS handshake that failed (for ``stats()["tls_refused"]``)."""
        self._recorder.count_refused_handshake()

    # -- request handling --------------------------------------------------------------------------

    def handle(self, handler: _Handler) -> Optional[int]:
        """Answer one request; the status sent (``None`` when the connection was dropped)."""
        path, _, query = handler.path.partition("?")
        if path.startswith(LOCAL):
            return self._local.handle(handler, path, query)
        if path in INDEX_PATHS and handler.command in ("GET", "HEAD"):
            handler.send_json(200, INDEX)
            return 200
        latency = self._settings.latency
        if latency > 0 and self._stopping.wait(latency):
            raise Drop()  # stopped while waiting: go away without applying
        if path in API_PATHS or path.startswith(ANALYTICS):
            return self._api.handle(handler, path, query)
        return refuse(handler, Refusal(404, [f"unknown path {path}"]), drain=True)


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

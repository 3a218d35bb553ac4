"""``bulk`` requests on a connection of the urllib3 pool that ``requests`` keeps for a session.

``Session.send`` does work per request that a ``bulk`` POST does not need (hooks, cookies, redirect
handling, response objects), on the background thread that sends thousands of events a second, and
so do urllib3's ``urlopen`` and ``http.client``. So a ``bulk`` POST takes a connection of the session
adapter's own pool (connected, with the session's TLS settings, by urllib3; shared with the blocking
calls; joined to the watchdog's attempt), and the request and its answer are written and read by
``http_exchange.py``: without retries and never following a redirect (a 3xx answer is read as the
answer it is).

Not taken when a proxy serves the target (``requests`` does the proxying) or when the session holds
cookies (a load balancer's sticky cookie goes back through ``requests``); a cookie set by an answer
here is stored in the session, so the next request goes the ``requests`` way and carries it.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any, Dict, List, Optional, Tuple, cast
from urllib.parse import urlsplit

import requests
import urllib3

from .http_exchange import exchange, request_head
from .watchdog import adopt

__all__ = ["PooledPost", "Answer"]

#: What an answer is made of: its status, its body (decoded from gzip if need be) and its headers.
Answer = Tuple[int, bytes, Any]

#: Headers written here, whatever the session says.
_OURS = frozenset(("host", "accept-encoding", "content-length", "content-encoding", "transfer-encoding"))


class PooledPost:
    """POSTs of one session's requests, made on the urllib3 pool its adapter holds for the URL."""

    def __init__(self, session: requests.Session, url: str) -> None:
        self._session = session
        self._url = url
        parts = urlsplit(url)
        self._path = parts.path + ("?" + parts.query if parts.query else "")
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        default_port = 443 if parts.scheme == "https" else 80
        self._host = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        self._request = requests.PreparedRequest()
        self._request.prepare(method="POST", url=url)
        #: (adapter, verify, cert, host, pool_kwargs): the pool key of the last settings seen.
        self._key: Optional[Tuple[Any, Any, Any, Dict[str, Any], Dict[str, Any]]] = None

    def usable(self) -> bool:
        """Whether this path may carry the request: no proxy for the URL, no cookie to send."""
        session = self._session
        return not session.cookies and requests.utils.select_proxy(self._url, session.proxies) is None

    def _pool(self) -> Any:
        adapter = cast(requests.adapters.HTTPAdapter, self._session.get_adapter(self._url))
        verify, cert = self._session.verify, self._session.cert  # as network.NetworkSettings set them
        attributes = getattr(adapter, "build_connection_pool_key_attributes", None)
        if attributes is not None:  # requests 2.32+: the pool key requests itself uses (CA bundle, client certificate)
            # Worked out once for the adapter and settings in use: requests looks at the CA bundle's
            # path on the disk each time (a system call, and a hand-back of the interpreter's lock).
            key = self._key
            if key is None or key[0] is not adapter or key[1] != verify or key[2] != cert:
                host, pool_kwargs = attributes(self._request, verify, cert)
                key = self._key = (adapter, verify, cert, host, pool_kwargs)
            return adapter.poolmanager.connection_from_host(**key[3], pool_kwargs=key[4])
        pool = adapter.get_connection(self._url)  # pragma: no cover - requests before 2.32
        adapter.cert_verify(pool, self._url, verify, cert)  # type: ignore[no-untyped-call] # pragma: no cover
        return pool  # pragma: no cover

    def post(self, body: bytes, gzipped: bool, timeout: float) -> Answer:
        """One attempt: send ``body`` and read the whole answer (see http_exchange.py), each socket
        operation within ``timeout`` (the watchdog ends the whole attempt by its deadline). Raises
        as urllib3's ``urlopen`` does without retries: ``NewConnectionError`` and
        ``ConnectTimeoutError`` from connecting, ``SSLError``, ``ReadTimeoutError``, or
        ``ProtocolError`` for a connection that broke or an answer that is no HTTP. No redirect is
        followed: a 3xx answer is read as the answer it is."""
        headers = [
            (name, value if isinstance(value, str) else value.decode("latin-1"))
            for name, value in self._session.headers.items()
            if name.lower() not in _OURS
        ]
        headers.append(("Content-Length", str(len(body))))
        if gzipped:
            headers.append(("Content-Encoding", "gzip"))
        head = request_head("POST", self._path, [("Host", self._host), ("Accept-Encoding", "gzip"), *headers])
        pool = self._pool()
        conn = pool._get_conn()  # a kept connection that the server dropped is closed here
        reusable = False
        try:
            if conn.sock is None:
                conn.timeout = timeout
                conn.connect()  # TCP and TLS, as the pool's settings say; the socket joins the attempt
            sock = conn.sock
            adopt(sock)  # a kept connection joins the attempt too
            sock.settimeout(timeout)
            answer = exchange(sock, head, body)
            reusable = answer.reusable
        except socket.timeout:
            raise urllib3.exceptions.ReadTimeoutError(pool, self._url, "Read timed out.") from None
        except ssl.SSLError as error:  # a certificate refused among them
            raise urllib3.exceptions.SSLError(error) from None
        except (OSError, http.client.HTTPException) as error:
            raise urllib3.exceptions.ProtocolError("Connection aborted.", error) from None
        finally:
            if not reusable:
                conn.close()
            pool._put_conn(conn)
        if answer.cookies:
            self._keep_cookies(answer.cookies)
        return answer.status, answer.body, answer.headers

    def _keep_cookies(self, cookies: List[str]) -> None:
        """Store the answer's cookies in the session, as ``Session.send`` would have."""
        message = http.client.HTTPMessage()
        for cookie in cookies:
            message["Set-Cookie"] = cookie
        requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
            self._session.cookies, self._request, _AnswerForCookies(message)
        )


class _AnswerForCookies:
    """What ``requests.cookies.extract_cookies_to_jar`` reads of an answer: its headers."""

    def __init__(self, message: http.client.HTTPMessage) -> None:
        self._original_response = self
        self.msg = message

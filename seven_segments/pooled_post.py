"""``bulk`` requests straight through the urllib3 connection pool that ``requests`` keeps for a session.

``Session.send`` does work per request that a ``bulk`` POST does not need (hooks, cookies, redirect
handling, response objects), on the background thread that sends thousands of events a second. So
a ``bulk`` POST goes to the session adapter's own pool (connections, TLS settings and the watchdog's
connection classes are shared with the blocking calls), without retries and never following a
redirect: a 3xx answer is read as the answer it is.

Not taken when a proxy serves the target (``requests`` does the proxying) or when the session holds
cookies (a load balancer's sticky cookie goes back through ``requests``); a cookie set by an answer
here is stored in the session, so the next request goes the ``requests`` way and carries it.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, cast
from urllib.parse import urlsplit

import requests
import urllib3

__all__ = ["PooledPost", "Answer"]

#: What an answer is made of: its status, its body (decoded from gzip if need be) and its headers.
Answer = Tuple[int, bytes, Any]


class PooledPost:
    """POSTs of one session's requests, made on the urllib3 pool its adapter holds for the URL."""

    def __init__(self, session: requests.Session, url: str) -> None:
        self._session = session
        self._url = url
        parts = urlsplit(url)
        self._path = parts.path + ("?" + parts.query if parts.query else "")
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
        """One attempt: send ``body`` and read the whole answer. Raises urllib3's exceptions (and
        ``OSError``) as they come: no retry, no redirect followed."""
        headers = dict(self._session.headers)
        headers["Content-Length"] = str(len(body))
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        response = self._pool().urlopen(
            "POST", self._path, body=body, headers=headers, retries=False, redirect=False,
            assert_same_host=False, timeout=urllib3.Timeout(connect=timeout, read=timeout),
            preload_content=True, decode_content=True,
        )
        if response.headers.get("Set-Cookie") is not None:
            self._keep_cookies(response)
        return response.status, response.data, response.headers

    def _keep_cookies(self, response: Any) -> None:
        """Store the answer's cookies in the session, as ``Session.send`` would have."""
        original: Optional[Any] = getattr(response, "_original_response", None)
        if original is not None:
            requests.cookies.extract_cookies_to_jar(  # type: ignore[no-untyped-call]
                self._session.cookies, self._request, response
            )

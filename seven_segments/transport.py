"""HTTP to the 7SEGMENTS API: one ``requests.Session`` per client, answers mapped to errors, retries.

``Transport.post`` makes exactly one attempt (a ``bulk`` one straight through the session's urllib3
pool, never following a redirect: pooled_post.py) and sorts the outcome as docs/protocol.md says:
a passing failure (connection refused or reset, timeout, 429, 500/502/503/504) raises
``TransientError`` (internal, carries ``Retry-After``); anything else that is not a success raises
the public error for it. A redirect (3xx) is never followed: ``SevenSegmentsError``, and not a byte
goes to the host it names. ``call_with_retries`` retries transient failures through tenacity with
exponential backoff and jitter, never sooner than ``Retry-After``, until a deadline, and then raises
``ServiceUnavailable``: the client's one retry policy, in retrying.py.

Secrets (the company token, which also travels as ``?company=``, and the password) are kept out of
messages by construction: none is ever formatted into one; reasons quoted from ``requests``
exceptions have their URLs' query values redacted by parsing (``?company=***``); and the server's
``errors`` are quoted through ``Transport.scrub``, which redacts a secret only where it stands whole
(see there). A filter on urllib3's and requests' loggers redacts our secrets from the query
strings of their records (``?company=***`` in urllib3's debug line of each request).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import math
import os
import re
import socket
import ssl
import sys
import time
import weakref
import zlib
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, TypeVar, cast
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit

import requests
import urllib3

from .clock import Clock, monotonic
from .errors import AuthenticationError, InvalidRequest, SevenSegmentsError
from .network import CertSetting, NetworkSettings, ProxiesSetting, VerifySetting, shown_proxy
from .pooled_post import PooledPost
from .protocol import PATH_BULK, TRANSIENT_STATUSES, USER_AGENT
from .watchdog import WATCHDOG, Attempt, WatchedHTTPConnectionPool, WatchedHTTPSConnectionPool

__all__ = ["Backoff", "Transport", "TransientError", "call_with_retries", "normalize_target", "parse_retry_after"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bodies at least this long are gzipped when compression is on; smaller ones gain nothing.
GZIP_MIN_BYTES = 1024
#: zlib level 1: about 6x smaller JSON for a fraction of the CPU of the default level.
GZIP_LEVEL = 1
#: Connections kept per client for reuse (blocking calls from many threads share them).
POOL_SIZE = 32
#: ``Retry-After`` values longer than this are taken as this (a server bug should not park us for a day).
MAX_RETRY_AFTER = 600.0
#: Secrets at least this long are redacted wherever they stand whole in the server's text; shorter
#: ones only where quoted (see ``Transport.scrub``).
MIN_BARE_SECRET_LENGTH = 8

#: The query of a URL quoted in a message: from ``?`` up to a space, quote or bracket.
_URL_QUERY = re.compile(r"\?([^\s'\"<>()\[\]{}]+)")
#: The user information of a URL (``scheme://user:password@``), such as a proxy's.
_URL_USERINFO = re.compile(r"(?<=://)[^/\s@'\"]+@")
#: What may continue a token: a secret that touches one of these is part of a longer word.
_WORD_CHARS = r"A-Za-z0-9_\-"


def _redact_query(query: str, secret: Optional[Callable[[str], bool]] = None) -> str:
    """``a=1&company=TOKEN`` -> ``a=***&company=***`` (only the values ``secret`` picks, when given)."""
    pairs = []
    for pair in query.split("&"):
        key, separator, value = pair.partition("=")
        if not separator:  # a bare value (``?TOKEN``)
            key, value = "", key
        if value and (secret is None or secret(unquote_plus(value))):
            value = "***"
        pairs.append(f"{key}{separator}{value}")
    return "&".join(pairs)


def redact_urls(text: str) -> str:
    """``text`` with the value of every URL query parameter and every URL's user information replaced
    by ``***``: ``.../analytics/funnel?company=***``. It parses what looks like a URL's query rather
    than looking for known secrets, so it needs none and mangles nothing else."""
    if "?" in text:
        text = _URL_QUERY.sub(lambda match: "?" + _redact_query(match.group(1)), text)
    if "://" in text:
        text = _URL_USERINFO.sub("***@", text)
    return text


#: Every live transport, whose secrets the log filter redacts from query strings.
_TRANSPORTS: "weakref.WeakSet[Transport]" = weakref.WeakSet()


class _RedactLoggedQueries(logging.Filter):
    """Rewrites a record of urllib3 or requests whose URL query holds one of our clients' secrets.

    urllib3 logs every request line at DEBUG (``"POST /analytics/funnel?company=TOKEN HTTP/1.1" 200``)
    and retries with their URL. Only query values equal to a live client's secret become ``***``,
    so the lines of the application's other requests are left as they are. A record made below the
    logger's level is never made, so this costs nothing unless someone logs at DEBUG.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        if "?" not in message or not _TRANSPORTS:
            return True
        secrets: "set[str]" = set()
        for transport in list(_TRANSPORTS):
            secrets.update(transport._secrets)
        redacted = _URL_QUERY.sub(
            lambda match: "?" + _redact_query(match.group(1), lambda value: value in secrets), message
        )
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_LOG_FILTER = _RedactLoggedQueries()
#: The loggers of our dependencies that write request URLs (a logger's filters see only its own records).
for _name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry", "urllib3.connection",
              "urllib3.response", "requests", "requests.adapters", "requests.sessions"):
    logging.getLogger(_name).addFilter(_LOG_FILTER)
del _name


def shown_target(target: str) -> str:
    """A target as an error may quote it: its user information as ``***@``, every query value and
    its fragment as ``***`` (a password, a ``?company=`` token), as proxy URLs are shown."""
    text, hash_mark, fragment = target.partition("#")
    text, question_mark, query = text.partition("?")
    scheme, separator, rest = text.rpartition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    shown = f"{scheme}{separator}{authority}{slash}{path}"
    if question_mark:
        shown += "?" + _redact_query(query)
    return shown + ("#***" if hash_mark and fragment else hash_mark)


def normalize_target(target: Any) -> str:
    """Check a base URL ``http(s)://host[:port][/prefix]`` and return it without a trailing slash.

    Raises ``ValueError`` naming the bad value (its secrets masked: ``shown_target``) for any other
    scheme, no host, a query or fragment.
    """
    if not isinstance(target, str):
        raise TypeError(f"target must be a URL string such as 'https://api.7segments.com', not {type(target).__name__}")
    shown = shown_target(target)
    try:
        parts = urlsplit(target.strip())
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as error:
        reason = shown_target(str(error))  # urllib's message may quote a part of the URL
        raise ValueError(f"target {shown!r} is not a valid URL: {reason}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"target {shown!r} must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"target {shown!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"target {shown!r} must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("target must not contain credentials; pass them to the client instead")
    del port
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or ``None``."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if moment is None:
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


#: getaddrinfo's answers meaning "this name does not exist": a mistyped or dead target, not an outage.
_NO_SUCH_HOST = frozenset(code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code)


def _causes(error: BaseException) -> Iterable[BaseException]:
    """``error`` and every exception it was caused by or carries (urllib3 wraps them deep)."""
    seen: "set[int]" = set()
    causes: List[Any] = [error]
    while causes:
        cause = causes.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        yield cause
        causes.extend([cause.__cause__, cause.__context__, getattr(cause, "reason", None), *cause.args])


def _unresolved(path: str, target: str, error: BaseException) -> Optional[Exception]:
    """The error for a failure to resolve the target's host name (found in ``error``'s causes), else None.

    "No such host" is permanent (a ``SevenSegmentsError``, not retried), so a mistyped target fails at
    once instead of being retried for the whole deadline; a temporary resolver failure (``EAI_AGAIN``)
    is a ``TransientError``, retried like an outage. Both say "cannot resolve HOST".
    """
    for cause in _causes(error):
        if isinstance(cause, requests.exceptions.ProxyError):
            return None  # the proxy's name, not the target's: the generic message says which
        if isinstance(cause, socket.gaierror):
            host = urlsplit(target).hostname
            if cause.errno in _NO_SUCH_HOST:
                return SevenSegmentsError(f"{path}: cannot resolve {host}: no such host (is the target {target!r} right?)")
            return TransientError(f"{path}: cannot resolve {host} ({cause.strerror or 'temporary DNS failure'})")
    return None


#: The TLS alerts (OpenSSL's reasons) of a server that refuses our client certificate or its absence.
_CERTIFICATE_ALERT = re.compile(r"ALERT_(?:\w*CERTIFICATE\w*|UNKNOWN_CA)$")


def _proxy_refused(path: str, network: NetworkSettings, error: BaseException) -> Optional[Exception]:
    """The error for a proxy that refused to open a tunnel for want of credentials (407), else None:
    permanent, as the same credentials would be refused again."""
    if network.proxy is None or not isinstance(error, requests.exceptions.ProxyError):
        return None
    for cause in _causes(error):
        if isinstance(cause, OSError) and " 407 " in f" {cause} ":
            return SevenSegmentsError(
                f"{path}: the proxy {shown_proxy(network.proxy)} refused the credentials (HTTP 407 Proxy "
                "Authentication Required): check the user and password of the proxy's URL"
            )
    return None


def _tls_refused(path: str, network: NetworkSettings, error: BaseException) -> Optional[Exception]:
    """The error for a TLS handshake refused over certificates (found in ``error``'s causes), else None.

    A server certificate that the CA bundle does not vouch for (or of another host), and a server
    refusing our client certificate (or its absence), fail the same way on every attempt: a
    ``SevenSegmentsError`` naming the target, not retried, as a host that does not resolve.
    """
    for cause in _causes(error):
        if isinstance(cause, ssl.SSLCertVerificationError):
            whose = network.target if not (network.proxy or "").startswith("https:") else f"{network.target} (or of the proxy)"
            reason = cause.verify_message or cause.reason or "certificate verify failed"
            return SevenSegmentsError(
                f"{path}: the TLS certificate of {whose} is not trusted ({reason}); give verify= the CA bundle "
                "that signed it"
            )
        if isinstance(cause, ssl.SSLError) and _CERTIFICATE_ALERT.search(str(cause.reason or "")):
            alert = str(cause.reason).lower().replace("_", " ")
            wanted = "a client certificate it trusts (cert=)" if network.client_cert else "a client certificate (cert=)"
            return SevenSegmentsError(f"{path}: {network.target} refused the TLS connection ({alert}): it wants {wanted}")
    return None


def _secrets_pattern(secrets: Sequence[str]) -> "re.Pattern[str]":
    """The pattern of ``secrets`` where ``Transport.scrub`` redacts them."""
    # A secret is redacted only where it stands whole: not touching a letter, digit, "_" or "-"
    # (so the token "e" never turns "token" into "tok***n"). One of MIN_BARE_SECRET_LENGTH
    # characters or more is redacted wherever it stands whole (a server that echoes a real token,
    # "unknown company_id 1f0c...-9a2b", quoted or not). A shorter one is redacted only where
    # quoted ('e', "e"): as a bare word it is an ordinary word ("a", "api"), and blanking every
    # "a" would both mangle the message and show the reader what the secret is.
    escaped = sorted(secrets, key=len, reverse=True)
    bare = [re.escape(s) for s in escaped if len(s) >= MIN_BARE_SECRET_LENGTH]
    quoted = [re.escape(s) for s in escaped if len(s) < MIN_BARE_SECRET_LENGTH]
    alternatives = []
    if bare:
        alternatives.append(f"(?<![{_WORD_CHARS}])(?:{'|'.join(bare)})(?![{_WORD_CHARS}])")
    if quoted:
        alternatives.append(f"(?<=['\"`])(?:{'|'.join(quoted)})(?=['\"`])")
    return re.compile("|".join(alternatives) or "(?!)")


class TransientError(Exception):
    """A passing failure of one attempt: worth retrying (internal to the client)."""

    def __init__(
        self, reason: str, *, status: Optional[int] = None, retry_after: Optional[float] = None, errors: Sequence[str] = ()
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.errors = tuple(errors)


#: Every attempt ends by its deadline, however slowly the server answers (see watchdog.py).
_WATCHED_POOLS = {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connection pools are watched, direct and through a proxy alike:
    requests makes a new ``ProxyManager`` per proxy, with urllib3's own pool classes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS  # only HTTP(S) proxies: see network.PROXY_SCHEMES
        return manager


class Transport:
    """One client's HTTP connection pool to its target, and the rules for reading answers."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float,
        gzip: bool = False,
        secrets: Iterable[str] = (),
        auth: Optional[Tuple[str, str]] = None,
        proxies: ProxiesSetting = None,
        verify: VerifySetting = True,
        cert: CertSetting = None,
    ) -> None:
        self.target = normalize_target(target)
        #: How requests reach the target (proxy, CA bundle, client certificate), decided once, here:
        #: every path that sends reads it (see ``network.py``).
        self.network = NetworkSettings.resolve(self.target, proxies=proxies, verify=verify, cert=cert)
        self.timeout = timeout
        self.gzip = gzip
        self._secrets: Tuple[str, ...] = ()
        self._secret_pattern = _secrets_pattern(())
        for secret in secrets:
            self.add_secret(secret)
        # HTTP Basic credentials as UTF-8 (RFC 7617; the local server asks for it): given str,
        # requests encodes them as Latin-1, which garbles "é" and raises, with the password in the
        # exception, for anything beyond. The client checked that they encode.
        self._auth = None if auth is None else requests.auth.HTTPBasicAuth(auth[0].encode("utf-8"), auth[1].encode("utf-8"))
        self._pid = os.getpid()
        self._session = self._new_session()
        self._urls: Dict[str, str] = {}  # prepared by the session once per path
        self._pooled: Dict[str, PooledPost] = {}  # bulk requests' way to the session's pool

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Web servers share one client among many threads: keep up to 32 connections for reuse
        # (requests' default of 10 makes the 11th concurrent caller reconnect every time).
        adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update(
            {"User-Agent": USER_AGENT, "Content-Type": "application/json", "Accept": "application/json"}
        )
        # requests reads the proxy and CA-bundle environment variables again on every request (a
        # scan of os.environ, a large share of a bulk request's CPU): they were read once, into
        # self.network, which also holds the keywords that win over them.
        self.network.apply(session)
        return session

    def renew_after_fork(self) -> None:
        """Drop the parent's pooled sockets (without closing them: they are the parent's) and start anew."""
        self._pid = os.getpid()
        self._session = self._new_session()
        self._pooled = {}

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def add_secret(self, secret: str) -> None:
        """Also keep ``secret`` (such as a company token passed per call) out of what ``scrub`` and
        the log filter let through, as is and URL-encoded."""
        # A replayed command's token may hold a lone surrogate (JSON can say "\ud800"): quoted as
        # its UTF-8 would be, never raising in the middle of a replay.
        forms = {
            secret, quote(secret, safe="", errors="surrogatepass"), quote_plus(secret, safe="", errors="surrogatepass")
        } if secret else set()
        new = forms - set(self._secrets)
        if new:
            self._secrets = tuple(sorted(set(self._secrets) | new, key=len, reverse=True))
            self._secret_pattern = _secrets_pattern(self._secrets)
        _TRANSPORTS.add(self)

    def scrub(self, text: str) -> str:
        """Text from the server (an ``errors`` entry) or from ``requests``, made safe to quote.

        URL query values and user information are redacted by parsing (``?company=***``), and a
        secret of this client is replaced by ``***`` only where it stands whole (see ``_secrets_pattern``):
        our own messages never contain a secret, so this guards only against a server or library
        that echoes one, and leaves every other word as it was.
        """
        text = redact_urls(text)
        if self._secrets:
            text = self._secret_pattern.sub("***", text)
        return text

    def post(
        self,
        path: str,
        body: bytes,
        *,
        timeout: Optional[float] = None,
        params: Optional[Dict[str, str]] = None,
        owner: Any = None,
        decode: Callable[[bytes], Any] = json.loads,
    ) -> Dict[str, Any]:
        """One ``POST {target}/{path}`` attempt; returns the JSON answer of a success, else raises.

        ``decode`` turns the answer's body into its JSON value (``ValueError`` when it is not JSON).

        The attempt, from connecting to the last byte of the answer, ends within ``timeout`` (default:
        the transport's), or sooner when ``WATCHDOG.shorten(owner, ...)`` brings its end forward.
        Raises ``TransientError`` for a passing failure (a timeout among them),
        ``InvalidRequest``/``AuthenticationError``/``SevenSegmentsError`` for a permanent one.
        """
        gzipped = self.gzip and len(body) >= GZIP_MIN_BYTES
        if gzipped:
            body = gzip_body(body)
        wait = self.timeout if timeout is None else max(timeout, 0.001)
        if self._pid != os.getpid():  # a client used across fork() must not share the parent's sockets
            self.renew_after_fork()
        failure: Exception
        attempt = WATCHDOG.begin(monotonic() + wait, owner)
        try:
            if params is None and self._auth is None and path == PATH_BULK:
                pooled = self._pooled.get(path) or self._pooled.setdefault(path, PooledPost(self._session, self._url(path)))
                if pooled.usable():
                    return self._post_pooled(pooled, path, body, gzipped, wait, attempt, decode)
            response = self._send(path, body, gzipped, wait, params)
        except requests.Timeout:
            failure = TransientError(f"{path}: no answer within {wait:.3g} s")
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
            failure = self._broken(path, wait, attempt, error)
        except requests.RequestException as error:
            failure = SevenSegmentsError(f"{path}: request failed ({self._reason(error)})")
        except OSError as error:  # requests' own check of a certificate file removed since we checked it
            failure = SevenSegmentsError(f"{path}: {self.scrub(str(error))}")
        else:
            return self._answered(path, (response.status_code, response.content, response.headers), decode, wait, attempt)
        finally:
            WATCHDOG.end(attempt)
        # Raised outside the except blocks: no __context__ chain leads back to requests' exception,
        # whose text may hold the URL with ?company=TOKEN.
        raise failure

    def _send(
        self, path: str, body: bytes, gzipped: bool, wait: float, params: Optional[Dict[str, str]]
    ) -> requests.Response:
        """``post``'s request through ``requests``. Redirects are never followed (requests follows them
        by default): the protocol has none, and following one would send the body (which holds the
        token), the ``?company=`` query and the credentials to a host the user did not name."""
        if params is None and self._auth is None:
            return self._session.send(self._prepare(path, body, gzipped), timeout=wait, allow_redirects=False)
        return self._session.post(
            f"{self.target}/{path}", data=body, headers={"Content-Encoding": "gzip"} if gzipped else None,
            params=params, timeout=wait, auth=self._auth, allow_redirects=False,
        )

    def _post_pooled(
        self, pooled: PooledPost, path: str, body: bytes, gzipped: bool, wait: float, attempt: Attempt,
        decode: Callable[[bytes], Any],
    ) -> Dict[str, Any]:
        """``post``'s attempt on the urllib3 pool (see pooled_post.py), its failures sorted as
        ``post`` sorts requests' ones."""
        failure: Exception
        try:
            answer = pooled.post(body, gzipped, wait)
        except urllib3.exceptions.TimeoutError as error:
            if isinstance(error, urllib3.exceptions.NewConnectionError):  # a refused connection, not a timeout
                failure = self._connection_failure(path, error)
            else:
                failure = TransientError(f"{path}: no answer within {wait:.3g} s")
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as error:
            failure = self._broken(path, wait, attempt, error)
        else:
            return self._answered(path, answer, decode, wait, attempt)
        raise failure  # outside the except blocks: no chain to urllib3's exception and its URL

    def _broken(self, path: str, wait: float, attempt: Attempt, error: BaseException) -> Exception:
        """The error for an attempt whose connection broke: a timeout when the watchdog ended it at
        its deadline, else as ``_connection_failure`` says."""
        if attempt.expired:
            return TransientError(f"{path}: no complete answer within {wait:.3g} s")
        return self._connection_failure(path, error)

    def _answered(
        self, path: str, answer: Tuple[int, bytes, Any], decode: Callable[[bytes], Any], wait: float, attempt: Attempt
    ) -> Dict[str, Any]:
        """The JSON of a success, or the error for ``answer``; an attempt cut at its deadline whose
        answer is not whole is a timeout, not the server's word."""
        if not attempt.expired:
            return self._read_answer(path, answer, decode)
        try:
            return self._read_answer(path, answer, decode)
        except SevenSegmentsError:
            pass
        raise TransientError(f"{path}: no complete answer within {wait:.3g} s")  # outside: no chain

    def _connection_failure(self, path: str, error: BaseException) -> Exception:
        """The error for an attempt whose connection failed (before the deadline): permanent for a
        host that does not exist, a certificate refused either way or a proxy refusing the
        credentials; else a passing failure."""
        return (
            _unresolved(path, self.target, error)
            or _tls_refused(path, self.network, error)
            or _proxy_refused(path, self.network, error)
            or TransientError(f"{path}: connection failed ({self._reason(error)})")
        )

    def _url(self, path: str) -> str:
        """The URL of ``path``, as the session prepares it (once per path)."""
        url = self._urls.get(path)
        if url is None:
            session = self._session
            url = self._urls[path] = session.prepare_request(requests.Request("POST", f"{self.target}/{path}")).url or ""
        return url

    def _prepare(self, path: str, body: bytes, gzipped: bool) -> requests.PreparedRequest:
        """The request ``Session.post`` would prepare for a bytes body without params or auth, made
        from the session's headers, URL and hooks prepared once: ``prepare_request`` merges settings,
        cookies and hooks anew for every request, a fifth of a bulk request's CPU (measured)."""
        session = self._session
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self._url(path)
        request.headers = cast("requests.structures.CaseInsensitiveDict[str]", session.headers).copy()  # all str
        request.headers["Content-Length"] = str(len(body))
        if gzipped:
            request.headers["Content-Encoding"] = "gzip"
        request.body = body
        request.hooks = session.hooks
        # A jar of its own, as prepare_request gives (a redirect stores cookies in it): a copy of the
        # session's cookies (a load balancer's, say), sent back as Session.post would.
        request.prepare_cookies(session.cookies.copy() if session.cookies else requests.cookies.RequestsCookieJar())
        return request

    def _reason(self, error: BaseException) -> str:
        """A short reason for a ``requests`` exception, its URLs' query values redacted (``scrub``)."""
        root: BaseException = error
        while root.__context__ is not None and root.__context__ is not root and len(str(root)) > 200:
            root = root.__context__
        text = self.scrub(str(root) or type(root).__name__)
        if len(text) > 300:
            text = text[:297] + "..."
        return text

    def _read_answer(
        self, path: str, answer: Tuple[int, bytes, Any], decode: Callable[[bytes], Any] = json.loads
    ) -> Dict[str, Any]:
        """The JSON of a success, or the error for ``answer`` (its status, body and headers)."""
        status, content, headers = answer
        try:
            payload: Any = decode(content)
        except ValueError:
            payload = None
        errors: Sequence[str] = ()
        if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
            errors = [self.scrub(str(error)) for error in payload["errors"]]
        if status == 200:
            if isinstance(payload, dict) and payload.get("success") is True:
                return payload
            if isinstance(payload, dict) and payload.get("success") is False:
                raise InvalidRequest(f"{path}: the request was refused", status=status, errors=errors)
            raise SevenSegmentsError(f"{path}: the server's answer is not a JSON success object", status=status)
        if status in TRANSIENT_STATUSES:
            retry_after = parse_retry_after(headers.get("Retry-After"))
            reason = f"{path}: HTTP {status}"
            if retry_after is not None:
                reason += f", retry after {retry_after:.3g} s"
            raise TransientError(reason, status=status, retry_after=retry_after, errors=errors)
        if status in (401, 403):
            if status == 403:
                what = "no access to that company"
            elif self._auth is not None:  # credentials were sent: they were wrong, not missing
                what = "the username or password was not accepted"
            else:
                what = "the company token was not accepted"
            raise AuthenticationError(f"{path}: {what}", status=status, errors=errors)
        if 300 <= status <= 399:
            location = self.scrub(headers.get("Location") or "nowhere")
            if len(location) > 200:
                location = location[:197] + "..."
            raise SevenSegmentsError(
                f"{path}: the server redirects to {location}; redirects are not followed (is the target right?)",
                status=status, errors=errors,
            )
        if status == 407 and self.network.proxy is not None:
            raise SevenSegmentsError(
                f"{path}: the proxy {shown_proxy(self.network.proxy)} refused the credentials (HTTP 407 Proxy "
                "Authentication Required): check the user and password of the proxy's URL",
                status=status, errors=errors,
            )
        if status in (400, 404, 413):
            what = {400: "the request is invalid", 404: "not found", 413: "the body is too large"}[status]
            raise InvalidRequest(f"{path}: {what}", status=status, errors=errors)
        raise SevenSegmentsError(f"{path}: unexpected HTTP status", status=status, errors=errors)


def gzip_body(body: bytes) -> bytes:
    """``body`` gzipped at ``GZIP_LEVEL``, in one call: zlib lets go of the interpreter's lock while it
    compresses, and each time it does, taking the lock back can wait for a busy thread's switch
    interval (5 ms), on the way of a request whose window slot waits for it."""
    if _ONE_CALL_GZIP:
        return zlib.compress(body, GZIP_LEVEL, 31)
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # pragma: no cover - Python before 3.11
    return compressor.compress(body) + compressor.flush()  # pragma: no cover


#: ``zlib.compress`` takes ``wbits`` (31: a gzip header) from Python 3.11 on.
_ONE_CALL_GZIP = sys.version_info >= (3, 11)


class Backoff(NamedTuple):
    """An exponential backoff with jitter: about ``initial`` seconds after the first failure, at most
    ``maximum`` apart (the strategy is ``retrying.backoff``, made at the first retry)."""

    initial: float
    maximum: float


def call_with_retries(
    attempt: Callable[[float], T],
    *,
    what: str,
    deadline: Callable[[], float],
    timeout: float,
    backoff: Backoff,
    sleep: Callable[[float], None],
    clock: Clock = monotonic,
    on_retry: Optional[Callable[[TransientError, float], None]] = None,
    cut_attempts_at_deadline: bool = False,
) -> T:
    """Run ``attempt(timeout_for_this_attempt)``, retrying ``TransientError`` until ``deadline()``.

    ``deadline`` returns a moment on ``clock``'s scale; it is read anew before each decision, so a
    shutdown can bring it forward. Each attempt may take ``timeout``; with
    ``cut_attempts_at_deadline`` (a close that must end on time) it is cut to the time left. A retry is never
    made sooner than ``Retry-After``; when the next retry would start past the deadline we stop at
    once. Raises ``ServiceUnavailable`` (with the last status and errors) when the retries run out;
    other exceptions pass through. The policy is ``retrying.py``'s.

    The first attempt is made directly; only when it fails does tenacity take over
    (``retrying.retry_blocking``: it is handed that first failure as its own first attempt, then
    waits and retries), so the usual call that succeeds at once costs nothing more than the request.
    """
    started = clock()
    try:
        return attempt(max(0.001, min(timeout, deadline() - started)) if cut_attempts_at_deadline else timeout)
    except TransientError as error:
        failure = error
    from .retrying import backoff as exponential, retry_blocking  # loads tenacity: only for a retry

    return retry_blocking(
        attempt, failure, what=what, deadline=deadline, timeout=timeout, wait=exponential(*backoff), sleep=sleep,
        clock=clock, started=started, on_retry=on_retry, cut_attempts_at_deadline=cut_attempts_at_deadline,
    )

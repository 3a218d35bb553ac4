"""One HTTP/1.1 request and its whole answer on an open socket: written and read here.

A ``bulk`` request goes out on a connection of urllib3's pool (see ``pooled_post.py``), which
connects it, does the TLS handshake with the session's settings and checks that a kept connection
was not dropped. What is written and read on it is done here: urllib3's ``urlopen`` and
``http.client`` (request objects, header checks, the ``email`` package parsing every answer's
headers, response wrappers) spent several times the CPU of the whole exchange on the background
thread that sends thousands of events a second.

What is read: the status line and headers (at most ``MAX_HEAD_BYTES``, ``MAX_HEADERS`` lines),
interim ``1xx`` answers skipped, and a body framed by ``Transfer-Encoding: chunked``,
``Content-Length``, or the end of the connection (at most ``MAX_BODY_BYTES``), decoded when the
answer says ``Content-Encoding: gzip`` or ``deflate``. Anything else (a malformed line, a body cut
short, a closed connection, another encoding) raises an ``http.client.HTTPException``; the caller
then closes the connection. A connection is reusable only when the answer was read whole, as
HTTP/1.1 keep-alive, and nothing more came after it.
"""

from __future__ import annotations

import http.client
import re
import socket
import zlib
from typing import List, NamedTuple, Optional, Tuple

from requests.structures import CaseInsensitiveDict

__all__ = ["Exchanged", "exchange", "request_head", "MAX_HEAD_BYTES", "MAX_HEADERS", "MAX_BODY_BYTES"]

#: The status line and headers of an answer, at most.
MAX_HEAD_BYTES = 64 * 1024
#: Header lines of an answer, at most (as http.client).
MAX_HEADERS = 100
#: The body of an answer, at most, before and after decoding.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Interim (1xx) answers before the answer, at most.
MAX_INTERIM = 16
_RECEIVE = 256 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]+")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([0-9]{3})(?: [^\r\n]*)?")
#: What may not appear in a request line or header: it would end the line or the head early.
_LINE_BREAKING = re.compile(r"[\r\n\x00]")
_NOT_IN_A_TARGET = re.compile(r"[\x00-\x20\x7f]")


class Exchanged(NamedTuple):
    """An answer read whole."""

    status: int
    body: bytes
    headers: "CaseInsensitiveDict[str]"
    #: Every ``Set-Cookie`` value, in order (``headers`` keeps the last one only).
    cookies: List[str]
    #: Whether the connection may carry another request.
    reusable: bool


def request_head(method: str, target: str, headers: List[Tuple[str, str]]) -> bytes:
    """The request line and headers, ending with the empty line; ``ValueError`` for a line break or
    NUL in any of them (never sent: it would make another request of the rest)."""
    if _NOT_IN_A_TARGET.search(target):
        raise ValueError("the request target holds a line break, a space or a control character")
    lines = [f"{method} {target} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    for line in lines:
        if _LINE_BREAKING.search(line):
            raise ValueError("a header or the request target holds a line break")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader:
    """Reads from a socket through one buffer."""

    __slots__ = ("_sock", "_buffer")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _more(self) -> bool:
        chunk = self._sock.recv(_RECEIVE)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def line(self, most: int) -> bytes:
        """The next line, without its CRLF (or a bare LF, which a client may take as one: RFC 9112,
        2.2); ``LineTooLong`` past ``most`` bytes."""
        searched = 0
        while True:
            end = self._buffer.find(b"\n", searched)
            if end > most:
                raise http.client.LineTooLong("answer header")
            if end >= 0:
                line = bytes(self._buffer[: end - 1 if end and self._buffer[end - 1] == 13 else end])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > most:
                raise http.client.LineTooLong("answer header")
            searched = len(self._buffer)
            if not self._more():
                raise http.client.RemoteDisconnected("the connection closed before the answer's head ended")

    def exactly(self, count: int) -> bytes:
        """The next ``count`` bytes; ``IncompleteRead`` when the connection ends first."""
        while len(self._buffer) < count:
            if not self._more():
                raise http.client.IncompleteRead(bytes(self._buffer), count - len(self._buffer))
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def to_the_end(self, most: int) -> bytes:
        """Everything until the connection ends (at most ``most`` bytes)."""
        while self._more():
            if len(self._buffer) > most:
                raise http.client.HTTPException("the answer's body is too long")
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    @property
    def left(self) -> bool:
        """Whether bytes came after what was read."""
        return bool(self._buffer)


def exchange(sock: socket.socket, head: bytes, body: bytes) -> Exchanged:
    """Send ``head`` and ``body`` in one write, then read the answer whole.

    A server may answer before it has read the whole body (a 413 from a proxy that refuses large
    bodies) and close: the write then fails, and the answer is read all the same (the error of the
    write is raised when there is none)."""
    cut_short: Optional[OSError] = None
    try:
        sock.sendall(head + body)  # one write: the head never waits alone for the peer's acknowledgement
    except (BrokenPipeError, ConnectionResetError) as error:
        cut_short = error
    reader = _Reader(sock)
    try:
        status, keep_alive, headers, cookies = _final_head(reader)
        content, whole = _body(reader, status, headers)
    except (OSError, http.client.HTTPException):
        if cut_short is not None:
            raise cut_short from None
        raise
    content = _decoded(content, headers.get("Content-Encoding"))
    connection = {token.strip().lower() for token in (headers.get("Connection") or "").split(",")}
    if "close" in connection:
        keep_alive = False
    elif "keep-alive" in connection:  # HTTP/1.0 that keeps it
        keep_alive = True
    reusable = whole and keep_alive and cut_short is None and status != 101 and not reader.left
    return Exchanged(status, content, headers, cookies, reusable)


def _final_head(reader: _Reader) -> Tuple[int, bool, "CaseInsensitiveDict[str]", List[str]]:
    """The status, version's keep-alive, headers and cookies of the answer after any interim ones."""
    for _ in range(MAX_INTERIM + 1):
        status, keep_alive = _status(reader.line(MAX_HEAD_BYTES))
        headers, cookies = _headers(reader)
        if not (100 <= status < 200 and status != 101):
            return status, keep_alive, headers, cookies
    raise http.client.HTTPException(f"more than {MAX_INTERIM} interim answers")


def _status(line: bytes) -> Tuple[int, bool]:
    """The status of a status line, and whether its version keeps the connection by default."""
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise http.client.BadStatusLine(line[:80].decode("latin-1"))
    return int(match.group(2)), match.group(1) == b"1.1"


def _headers(reader: _Reader) -> Tuple["CaseInsensitiveDict[str]", List[str]]:
    headers: "CaseInsensitiveDict[str]" = CaseInsensitiveDict()
    cookies: List[str] = []
    size = 0
    for _ in range(MAX_HEADERS + 1):
        line = reader.line(MAX_HEAD_BYTES - size)
        if not line:
            return headers, cookies
        size += len(line) + 2
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():  # a folded line starts with a space
            raise http.client.HTTPException("a malformed header line in the answer")
        key, text = name.decode("latin-1"), value.strip(b" \t").decode("latin-1")
        if key.lower() == "set-cookie":
            cookies.append(text)
        known = headers.get(key)
        headers[key] = text if known is None or key.lower() == "set-cookie" else f"{known}, {text}"
    raise http.client.HTTPException(f"more than {MAX_HEADERS} header lines in the answer")


def _body(reader: _Reader, status: int, headers: "CaseInsensitiveDict[str]") -> Tuple[bytes, bool]:
    """The body (of an answer to a POST), and whether its end was known (else the connection ended it)."""
    if status in (204, 304) or 100 <= status < 200:
        return b"", True
    coding = headers.get("Transfer-Encoding")
    if coding is not None:
        if coding.split(",")[-1].strip().lower() != "chunked":
            return reader.to_the_end(MAX_BODY_BYTES), False
        return _chunked(reader), True
    length = headers.get("Content-Length")
    if length is not None:
        values = {value.strip() for value in length.split(",")}
        value = next(iter(values)).lstrip("0") or "0"
        if len(values) != 1 or not _DIGITS.fullmatch(value):
            raise http.client.HTTPException("a malformed Content-Length in the answer")
        count = int(value) if len(value) <= 12 else MAX_BODY_BYTES + 1  # past the bound either way
        if count > MAX_BODY_BYTES:
            raise http.client.HTTPException("the answer's body is too long")
        return reader.exactly(count), True
    return reader.to_the_end(MAX_BODY_BYTES), False


def _chunked(reader: _Reader) -> bytes:
    parts: List[bytes] = []
    total = 0
    while True:
        size_line = reader.line(1024).split(b";", 1)[0].strip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_line):
            raise http.client.HTTPException("a malformed chunk size in the answer")
        size = int(size_line, 16)
        if size == 0:
            for _ in range(MAX_HEADERS + 1):  # trailers, up to the empty line
                if not reader.line(MAX_HEAD_BYTES):
                    return b"".join(parts)
            raise http.client.HTTPException("too many trailer lines in the answer")
        total += size
        if total > MAX_BODY_BYTES:
            raise http.client.HTTPException("the answer's body is too long")
        parts.append(reader.exactly(size))
        if reader.line(2):
            raise http.client.HTTPException("a chunk of the answer does not end where its size says")


def _decoded(content: bytes, coding: Optional[str]) -> bytes:
    """The body, decoded from gzip or deflate (at most ``MAX_BODY_BYTES``)."""
    name = (coding or "").strip().lower()
    if name in ("", "identity"):
        return content
    if name in ("gzip", "x-gzip"):  # one gzip member or several, one after another
        members: List[bytes] = []
        left = MAX_BODY_BYTES
        while True:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            members.append(_inflated(content, decompressor, left))
            left -= len(members[-1])
            content = decompressor.unused_data
            if not decompressor.eof:
                raise http.client.HTTPException("the answer's body ends inside a gzip member")
            if not content:
                return b"".join(members)
    if name == "deflate":  # zlib-wrapped as the standard says, or raw as some servers send it
        try:
            return _inflated(content, zlib.decompressobj(), MAX_BODY_BYTES)
        except http.client.HTTPException:
            return _inflated(content, zlib.decompressobj(-zlib.MAX_WBITS), MAX_BODY_BYTES)
    raise http.client.HTTPException(f"the answer is encoded as {name[:40]!r}, which was not asked for")


def _inflated(content: bytes, decompressor: "zlib._Decompress", most: int) -> bytes:
    """What ``decompressor`` makes of ``content``: at most ``most`` bytes."""
    try:
        data = decompressor.decompress(content, max(1, most))
    except zlib.error:
        raise http.client.HTTPException("the answer's body does not decode") from None
    if decompressor.unconsumed_tail:
        raise http.client.HTTPException("the answer's body is too long")
    return data

"""What every route of the local server speaks: the exchange it answers, refusals, drops, bodies.

:class:`Exchange` is what a route sees of one request (the server's ``BaseHTTPRequestHandler``);
a route raises :class:`Refusal` to answer an error and :class:`Drop` to hang up without answering.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import threading
import zlib
from email.message import Message
from typing import Any, Dict, List, Mapping, Optional, Protocol, Tuple

__all__ = [
    "JSONDict", "Exchange", "Encoded", "all_ok", "Refusal", "Drop", "refuse", "gunzip",
    "basic_credentials", "constant_time_equal",
]

JSONDict = Dict[str, Any]


class Exchange(Protocol):
    """One request as a route sees it, and how it answers."""

    path: str
    command: str
    headers: Message
    #: ``(stopping event, seconds per byte)``: the trickle fault writes the answer this slowly.
    trickle: Optional[Tuple[threading.Event, float]]

    def send_json(self, status: int, payload: Any, headers: Optional[Mapping[str, str]] = None) -> None:
        """Write a complete JSON answer (``payload`` may be an :class:`Encoded` body)."""

    def read_raw_body(self) -> bytes:
        """The request body as sent; ``Refusal`` when it cannot be read."""


class Encoded(bytes):
    """A JSON answer body encoded already (see :func:`all_ok`)."""


@functools.lru_cache(maxsize=64)
def all_ok(count: int) -> Encoded:
    """The answer of a bulk request whose ``count`` commands all are ``ok``, encoded once per count."""
    return Encoded(('{"success":true,"results":[' + ",".join(['{"status":"ok"}'] * count) + "]}").encode())


class Refusal(Exception):
    """A whole-request refusal: status, errors and optional headers."""

    def __init__(self, status: int, errors: List[str], headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(status, errors)
        self.status = status
        self.errors = errors
        self.headers = headers or {}


class Drop(Exception):
    """Close the connection without answering."""


def refuse(exchange: Exchange, refusal: Refusal, drain: bool = False) -> int:
    """Answer ``refusal`` (after reading the body, with ``drain``); returns its status."""
    if drain:
        try:
            exchange.read_raw_body()
        except Refusal:
            pass
    exchange.send_json(refusal.status, {"success": False, "errors": refusal.errors}, refusal.headers)
    return refusal.status


def gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing (413) more than ``limit`` bytes of output without inflating them all."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = decompressor.decompress(raw, limit + 1)
        if len(data) > limit:
            raise Refusal(413, [f"the uncompressed body is more than {limit} bytes"])
        if not decompressor.eof:
            data += decompressor.flush()
            if not decompressor.eof:
                raise Refusal(400, ["the gzip body is truncated"])
    except zlib.error as error:
        raise Refusal(400, [f"the body is not valid gzip: {error}"]) from None
    return data


def basic_credentials(header: str) -> Tuple[Optional[str], Optional[str]]:
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


def constant_time_equal(expected: str, given: str) -> bool:
    """Whether two secrets are equal, in a time that does not tell where they differ."""
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))

"""Writing values already checked by ``serialization`` as compact UTF-8 JSON: ``orjson`` when it can
be imported (``pip install 'seven-segments[fast]'``), the standard library's C encoder otherwise.

The writers decide nothing: every check (NaN and infinities, naive datetimes, non-string keys, sizes,
depth, lone surrogates) runs in ``serialization`` before a writer sees a value, so what is accepted
and the errors that name a bad value are the same with either. They only write plain trees of
``dict``/``list``/``str``/``int``/``float``/``bool``/``None``. ``orjson`` refuses integers outside 64
bits, which the checks accept (up to 4300 digits): such a tree is written by the standard library.
"""

from __future__ import annotations

import json
import json.encoder
from json.encoder import encode_basestring
from typing import Any, Callable, Optional, Type, cast

__all__ = ["JsonWriter", "StdlibWriter", "OrjsonWriter", "WRITER", "orjson_writer"]


def _refuse_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def c_json_encoder(sort_keys: bool = False) -> Optional[Callable[[Any, int], Any]]:
    """The json module's C encoder, built once for reuse (``json.dumps`` builds one per call, which
    costs more than encoding a small object): compact, UTF-8 (no ``\\u`` escapes), NaN and
    Infinity refused, no cycle check (for values known to be trees). Call as ``encoder(value, 0)``
    and join the parts. ``None`` on interpreters without the C accelerator."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover
        return None
    return cast(
        Callable[[Any, int], Any],
        make(None, _refuse_default, encode_basestring, None, ":", ",", sort_keys, False, False),
    )


def compact_json_encoder(sort_keys: bool = False) -> Callable[[Any], str]:
    """A reusable, thread-safe ``value -> compact UTF-8 JSON text`` (see :func:`c_json_encoder`)."""
    encoder = c_json_encoder(sort_keys)
    if encoder is None:  # pragma: no cover
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False, sort_keys=sort_keys).encode
    join = "".join
    return lambda value: join(encoder(value, 0))


class JsonWriter:
    """Writes a checked plain tree as compact JSON: ``text`` (str) or ``data`` (UTF-8 bytes)."""

    #: Which library writes: ``"json"`` or ``"orjson"``.
    name = "json"
    #: ``orjson.dumps`` itself for the orjson writer (``value -> bytes``; raises a ``TypeError``, for
    #: an integer outside 64 bits among others), for callers that handle a refusal themselves;
    #: None for the standard library's.
    fast_dumps: Optional[Callable[[Any], bytes]] = None

    def text(self, value: Any) -> str:  # pragma: no cover - overridden
        """The compact JSON text of ``value``."""
        raise NotImplementedError

    def data(self, value: Any) -> bytes:  # pragma: no cover - overridden
        """The compact JSON of ``value`` as UTF-8 bytes."""
        raise NotImplementedError


class StdlibWriter(JsonWriter):
    """The standard library's C encoder, built once."""

    name = "json"

    def __init__(self) -> None:
        self._write = compact_json_encoder()

    def text(self, value: Any) -> str:
        """The compact JSON text of ``value``."""
        return self._write(value)

    def data(self, value: Any) -> bytes:
        """The compact JSON of ``value`` as UTF-8 bytes."""
        return self._write(value).encode()


class OrjsonWriter(JsonWriter):
    """``orjson.dumps``; a tree it refuses (an integer outside 64 bits) goes to the standard library."""

    name = "orjson"

    def __init__(self, dumps: Callable[[Any], bytes], refused: Type[Exception], fallback: JsonWriter) -> None:
        self.fast_dumps = self._dumps = dumps
        self._refused = refused
        self._fallback = fallback

    def data(self, value: Any) -> bytes:
        """The compact JSON of ``value`` as UTF-8 bytes."""
        try:
            return self._dumps(value)
        except self._refused:
            return self._fallback.data(value)

    def text(self, value: Any) -> str:
        """The compact JSON text of ``value``."""
        try:
            return self._dumps(value).decode()
        except self._refused:
            return self._fallback.text(value)


#: The standard library's writer (always there).
STDLIB = StdlibWriter()


def orjson_writer() -> Optional[OrjsonWriter]:
    """The ``orjson`` writer, or ``None`` when ``orjson`` cannot be imported."""
    try:
        import orjson
    except ImportError:
        return None
    return OrjsonWriter(orjson.dumps, orjson.JSONEncodeError, STDLIB)


#: The writer the library uses: ``orjson`` when installed, else the standard library.
WRITER: JsonWriter = orjson_writer() or STDLIB

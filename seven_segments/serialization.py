"""Checking and capturing what callers pass, before anything is queued or sent.

Every public tracking call runs its arguments through this module on the caller's thread. It
raises ``TypeError``/``ValueError`` naming the bad value and where it is (for example
``properties['cart'][2]: float nan is not valid JSON``), and it returns a private copy in plain JSON
types (or, for a buffered client, their JSON), so that mutating a dict after ``track()`` returned
never changes what is sent.

Conversions: ``datetime``/``date``/``time`` become ISO 8601 strings, ``Decimal`` a number, ``UUID`` a
string, ``Enum`` its value, tuples, lists, sets and frozensets lists, other ``Mapping`` types dicts.

One rule for moments, as ``timestamp=`` and inside properties alike: a ``datetime`` must be aware
(have a time zone); a naive one is refused, naming where it is, since the moment it means depends on
the machine that runs the code. A ``date`` or a ``time`` of day is not a moment and is sent as it is.

The fast path (a flat dict of strings and numbers) is a single loop without recursion: it runs on
every ``track`` of every request thread of a web server. A buffered client makes each command the
bytes it will have inside a ``bulk`` body before ``track`` returns (``BulkCommandEncoder``), so it
needs the JSON at once: ``capture_properties_written`` checks the same way and returns the JSON
instead of a copy, which mutating the dict later cannot change either.
"""

from __future__ import annotations

import base64
import datetime as _dt
import enum
import functools
import json
import json.encoder
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from itertools import count
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union, cast

from .process_id import current_pid
from .protocol import (
    COMMAND_ID_RE,
    DEFAULT_ID_TYPE,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_ID_LENGTH,
    MAX_EVENT_TYPE_LENGTH,
    PATH_CUSTOMERS,
    PATH_EVENTS,
)
from .types import Timestamp

from json.encoder import encode_basestring as _encode_string

from . import json_writer
from .json_writer import JsonWriter, c_json_encoder, compact_json_encoder

__all__ = [
    "BulkCommandEncoder",
    "c_json_encoder",
    "compact_json_encoder",
    "Command",
    "CustomerIds",
    "JSONObject",
    "Timestamp",
    "capture_properties",
    "capture_properties_json",
    "capture_properties_written",
    "check_command_id",
    "check_command_size",
    "LargeCustomerIds",
    "check_event_type",
    "customer_ids",
    "escapes_lone_surrogate",
    "new_command_id",
    "properties_room",
    "timestamp_seconds",
]

JSONObject = Dict[str, Any]
CustomerIds = Dict[str, str]
#: A tracking command as a buffered client queues it: ``(path, customer ids, event type or None,
#: properties, timestamp, command_id)``. A tuple is cheaper to make and to keep than the body's dict.
#: The ``command_id`` is made on the caller's thread, so that ``track``/``update`` can return it.
#: A buffered client encodes each command before ``track`` returns, so its properties are already
#: their JSON (``capture_properties_written``: text, or bytes from ``orjson``) rather than a copy;
#: the encoder and ``as_dict`` take any of them.
Command = Tuple[str, CustomerIds, Optional[str], Union[JSONObject, str, bytes], float, str]

#: How deep properties may nest; deeper is refused (it is almost always a cycle).
MAX_DEPTH = 32

_INFINITY = math.inf
_SHORT_REPR = 60


def _short(value: Any) -> str:
    """A repr of ``value`` cut to a readable length, for error messages."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    """``text`` cut to a readable length, for error messages."""
    return text if len(text) <= _SHORT_REPR else text[: _SHORT_REPR - 3] + "..."


def _where(path: str, key: Any) -> str:
    return f"{path}[{key!r}]"


def capture_properties(properties: Any, path: str = "properties") -> Tuple[JSONObject, int]:
    """Check ``properties``; return a private copy in plain JSON types and its approximate JSON size.

    ``None`` means no properties. Raises ``TypeError`` or ``ValueError`` naming the bad value, and
    ``ValueError`` when the properties would clearly not fit in one command (100 KiB of JSON).
    """
    if properties is None:
        return {}, 2
    if type(properties) is not dict:
        if not isinstance(properties, Mapping):
            raise TypeError(f"{path} must be a dict, not {type(properties).__name__} {_short(properties)}")
    copy: JSONObject = {}
    size = 2
    for key, value in properties.items():
        if type(key) is not str or not key.isascii():
            key = _capture_key(key, path)
        kind = type(value)
        if kind is str:
            size += len(key) + (len(value) if value.isascii() else _utf8_length(value, _where(path, key))) + 6
        elif kind is bool or value is None or (kind is int and -_BIG_INT < value < _BIG_INT):
            size += len(key) + 24
        elif kind is float:
            if value != value or value == _INFINITY or value == -_INFINITY:
                raise ValueError(f"{_where(path, key)}: float {value!r} is not valid JSON")
            size += len(key) + 28
        else:
            value, nested = _capture_value(value, _where(path, key), 1)
            size += len(key) + nested + 4
        copy[key] = value
    if size > MAX_COMMAND_BYTES:
        raise ValueError(
            f"{path} take about {size} bytes as JSON; a command may take at most {MAX_COMMAND_BYTES}"
        )
    return copy, size


#: Integers in (-_BIG_INT, _BIG_INT) take the fast path; others are checked for what JSON can write.
_BIG_INT = 1 << 63


def capture_properties_json(properties: Any, path: str = "properties") -> Tuple[str, int]:
    """Check ``properties`` exactly as :func:`capture_properties` does, and return their compact
    JSON text and its length, instead of a copy (see :func:`capture_properties_written`)."""
    text = capture_properties_written(properties, path)[0].decode()
    return text, len(text)


def capture_properties_written(properties: Any, path: str = "properties") -> Tuple[bytes, int]:
    """Check ``properties`` exactly as :func:`capture_properties` does, and return their compact
    JSON as UTF-8 bytes and its length, instead of a copy.

    For a buffered client, which makes each command the bytes it sends before ``track`` returns:
    the JSON is what goes into the command, so a copy would only be thrown away. A flat dict of
    strings, numbers, booleans and None is checked in one loop and written by ``orjson`` when it
    is installed, else by that loop itself; anything else goes through :func:`capture_properties`
    and the writer, and raises the same errors.
    """
    if type(properties) is dict:
        dumps = _FAST_DUMPS
        data = _whole_here("", properties, "", _WRITTEN_HERE_BYTES) if dumps is None else _flat_by_orjson(properties, dumps)
        if data is not None and len(data) <= _WRITTEN_HERE_BYTES:
            return data, len(data)
    return _capture_json_carefully(properties, path)


def _flat_by_orjson(properties: JSONObject, dumps: Callable[[Any], bytes]) -> Optional[bytes]:
    """``orjson``'s JSON of a flat dict of plain values; None for any other dict (the careful path
    then checks it). ``BulkCommandEncoder.encode`` has this inline."""
    # orjson writes the dict once this loop found only values JSON takes as they are. It looks at
    # values only: what else a flat dict may hold that the checks refuse, orjson refuses too (a key
    # that is not a string, an integer outside 64 bits, a lone surrogate), and the careful path
    # then names it.
    for value in properties.values():
        if type(value) in _PLAIN_TYPES or (type(value) is float and not value - value):  # not NaN nor infinite
            continue
        return None
    try:
        return dumps(properties)
    except TypeError:  # orjson.JSONEncodeError
        return None


def _whole_here(head: str, properties: JSONObject, tail: str, most: int) -> Optional[bytes]:
    """``head``, the JSON of a flat dict of plain values and ``tail``, as UTF-8 bytes, written by
    the standard library as it checks the values; None when the dict holds anything else, or a
    lone surrogate, or the whole is longer than ``most`` bytes (the careful path then checks, and
    perhaps refuses, the properties)."""
    keys = tuple(properties)
    writers = _SHAPES.get(keys)
    if writers is None:
        writers = _shape_writers(keys, properties)
    text = writers[0](head, tail, *properties.values())
    if text is None:  # values of other types than the shape's first: the general loop
        text = _looped(head, properties, tail)
        if text is None:
            return None
    try:
        whole = text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return None
    return whole if len(whole) <= most else None


def _looped(head: str, properties: JSONObject, tail: str) -> Optional[str]:
    """``_whole_here``'s text, one value after another; None as there."""
    text = ""
    for key, value in properties.items():
        try:
            item = _KEY_JSON[key]  # ',"amount":'; only strings are kept, so another key is never found
        except KeyError:
            if type(key) is not str:
                return None
            item = "," + _encode_string(key) + ":"
            if len(key) <= _KEY_KEPT_LENGTH and len(_KEY_JSON) < _KEYS_KEPT:
                _KEY_JSON[key] = item
        kind = type(value)
        if kind is str:
            text += f"{item}{_encode_string(value)}"
        elif kind is int:
            if not _LEAST_INT < value < _BIG_INT:  # the careful path counts its digits
                return None
            text += f"{item}{value}"
        elif kind is float:
            if value - value:  # NaN or an infinity (for any other float, 0.0)
                return None
            text += f"{item}{value!r}"
        elif kind is bool:
            text += item + ("true" if value else "false")
        elif value is None:
            text += item + "null"
        else:
            return None
    return f"{head}{{{text[1:]}}}{tail}"


#: The writers of the shapes of properties seen (their keys, in order: most call sites pass the same
#: keys every time), each made for the types of values it first saw (see _shape_writers).
_SHAPES: Dict[Tuple[Any, ...], Tuple[Callable[..., Optional[str]], Callable[..., Optional[str]]]] = {}
_SHAPES_KEPT = 256
_SHAPE_KEYS_MOST = 32


def _no_shape(*_: Any) -> Optional[str]:
    return None


_NO_SHAPE = (_no_shape, _no_shape)


def _shape_writers(
    keys: Tuple[Any, ...], properties: JSONObject
) -> Tuple[Callable[..., Optional[str]], Callable[..., Optional[str]]]:
    """Two functions that check and write, in one f-string, properties with ``keys`` and values of
    the types ``properties`` has now (None for values of other types, or that JSON refuses):
    ``(head, tail, *values) -> text``, and ``(head, timestamp, command_id, *values) -> text`` which
    writes the rest of a bulk command after them (see ``BulkCommandEncoder.encode``). Made from code
    that names only its own variables (keys and types are bound as values), and kept up to a bound;
    ``_no_shape`` for keys or values they do not take."""
    if (  # past the bound, or keys not kept: the general loop (a long key is not kept for ever)
        len(_SHAPES) >= _SHAPES_KEPT or len(keys) > _SHAPE_KEYS_MOST
        or not all(type(key) is str and len(key) <= _KEY_KEPT_LENGTH for key in keys)
    ):
        return _NO_SHAPE
    types = tuple(map(type, properties.values()))
    if not _WRITTEN_TYPES.issuperset(types):  # nested values, say: the general loop, which sends them on
        writers = _NO_SHAPE
    else:
        names: Dict[str, Any] = {"_encode": _encode_string, "_least": _LEAST_INT, "_big": _BIG_INT}
        refused, parts = [], []
        for number, (key, kind) in enumerate(zip(keys, types)):
            names[f"k{number}"], names[f"t{number}"] = ("," if number else "") + _encode_string(key) + ":", kind
            refused.append(f"type(v{number}) is not t{number}")
            if kind is float:
                refused.append(f"v{number} - v{number}")  # NaN or an infinity
            elif kind is int:
                refused.append(f"not _least < v{number} < _big")  # the careful path counts its digits
            parts.append("{k%d}" % number + _SHAPE_VALUE[kind].replace("V", f"v{number}"))
        arguments = "".join(f", v{number}" for number in range(len(keys)))
        check = f"    if {' or '.join(refused) or 'False'}:\n        return None\n"
        written = "{head}{{" + "".join(parts) + "}}"
        # The rest of a command as encode's tail writes it (the command id needs no escaping).
        rest = ',\\"timestamp\\":{round(timestamp * 1e6)}e-6,\\"command_id\\":\\"{command_id}\\"}}}}'
        source = (
            f"def write(head, tail{arguments}):\n{check}    return f\"{written}{{tail}}\"\n"
            f"def write_command(head, timestamp, command_id{arguments}):\n{check}    return f\"{written}{rest}\"\n"
        )
        exec(source, names)  # noqa: S102 - the source holds no value passed in, only the names above
        writers = (names["write"], names["write_command"])
    _SHAPES[keys] = writers
    return writers


#: How a shape's f-string writes a value of each type (V stands for the value's variable).
_SHAPE_VALUE = {str: "{_encode(V)}", int: "{V}", float: "{V!r}", bool: "{'true' if V else 'false'}", type(None): "null"}
_WRITTEN_TYPES = frozenset(_SHAPE_VALUE)


#: The longest JSON of properties the fast paths return. Whether properties are too large is decided
#: on capture_properties' estimate of their size, which is at most 4.8 times the JSON's length (an
#: entry ``"":0,`` of 5 bytes counts 24): JSON of up to a fifth of the limit is always under it,
#: and longer JSON goes the careful way.
_WRITTEN_HERE_BYTES = MAX_COMMAND_BYTES // 5
_LEAST_INT = -_BIG_INT
#: The types of values a flat dict's fast path writes as they are (exactly these: no subclass).
_PLAIN_TYPES = frozenset((str, int, bool, type(None)))
#: JSON of property keys seen, after a comma and with the colon (``',"amount":'``): keys of at
#: most _KEY_KEPT_LENGTH characters, until there are _KEYS_KEPT of them.
_KEY_JSON: Dict[str, str] = {}
_KEYS_KEPT = 1024
_KEY_KEPT_LENGTH = 64


def _capture_json_carefully(properties: Any, path: str) -> Tuple[bytes, int]:
    """``capture_properties_written`` for anything but a flat dict of plain values: check and copy,
    then write the copy."""
    copy, _ = capture_properties(properties, path)
    data = _WRITER.data(copy) if copy else b"{}"
    return data, len(data)


#: The most digits of an int written as JSON: Python's own default limit for int-to-str.
MAX_INT_DIGITS = 4300
#: Any int of more bits has more than ``MAX_INT_DIGITS`` digits (4300 / log10(2) is 14284.3).
_MAX_INT_BITS = 14286


def _capture_int(value: int, path: str) -> Tuple[int, int]:
    """An int JSON can write (at most 4300 digits: Python's own limit for int-to-str)."""
    if -_BIG_INT < value < _BIG_INT:
        return value, 20
    try:
        if value.bit_length() > _MAX_INT_BITS:  # refused without writing it, whatever the interpreter's limit
            raise ValueError
        text = str(value)
        if len(text) > MAX_INT_DIGITS + (value < 0):
            raise ValueError
    except ValueError:
        raise ValueError(f"{path}: int with more than {MAX_INT_DIGITS} digits is not a valid JSON number here") from None
    return value, len(text)


def _utf8_length(text: str, path: str) -> int:
    """Bytes of ``text`` in UTF-8; ``ValueError`` for a lone surrogate, which UTF-8 cannot carry."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{path}: string {_short(text)} has a lone surrogate and is not valid UTF-8") from None


def _capture_key(key: Any, path: str) -> str:
    """A property key as JSON writes it: a str (an Enum key with a str value stands for that value)."""
    if isinstance(key, enum.Enum) and isinstance(key.value, str):
        key = key.value
    if not isinstance(key, str):
        raise TypeError(f"{path}: key {_short(key)} is {type(key).__name__}; keys must be strings")
    text: str = str.__str__(key)
    if not text.isascii():
        _utf8_length(text, f"{path}: key")
    return text


def _capture_value(value: Any, path: str, depth: int) -> Tuple[Any, int]:
    """Check and copy one nested value; returns ``(JSON value, approximate size)``."""
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels (is there a cycle?)")
    if value is None or value is True or value is False:
        return value, 5
    if isinstance(value, enum.Enum):
        return _capture_value(value.value, path, depth + 1)
    if isinstance(value, str):
        text = str.__str__(value)
        return text, (len(text) if text.isascii() else _utf8_length(text, path)) + 2
    if isinstance(value, int):
        return _capture_int(int(value), path)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: float {value!r} is not valid JSON")
        return float(value), 24
    if isinstance(value, Mapping):
        copy: JSONObject = {}
        size = 2
        for key, item in value.items():
            key = _capture_key(key, path)
            copy[key], item_size = _capture_value(item, _where(path, key), depth + 1)
            size += len(key) + item_size + 4
        return copy, size
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        listed = []
        size = 2
        for index, item in enumerate(items):
            captured, item_size = _capture_value(item, f"{path}[{index}]", depth + 1)
            listed.append(captured)
            size += item_size + 1
        return listed, size
    return _capture_other(value, path)


def _capture_other(value: Any, path: str) -> Tuple[Any, int]:
    """``_capture_value`` of anything but JSON's own types and enums: moments, decimals, UUIDs,
    and the refusal of everything else."""
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        if isinstance(value, _dt.datetime) and value.utcoffset() is None:
            raise ValueError(_naive_message(value, path))
        text = value.isoformat()
        return text, len(text) + 2
    # Decimal and UUID values can only exist if their modules were imported, so look there rather
    # than importing them ourselves (the command line starts faster).
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{path}: Decimal {value} is not valid JSON")
        # adjusted() is the power of ten of the first digit: read before any conversion, since
        # making an int or a float of Decimal('1e1000000') holds the interpreter's lock for seconds.
        if value and value.adjusted() >= MAX_INT_DIGITS:
            raise ValueError(
                f"{path}: Decimal {_cut(str(value))} has more than {MAX_INT_DIGITS} digits before the point;"
                " it is too large for a JSON number here"
            )
        if value == value.to_integral_value():
            return _capture_int(int(value), path)
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{path}: Decimal {_short(value)} is too large for a JSON number")
        return number, 24
    uuid = sys.modules.get("uuid")
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value), 38
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{path}: {type(value).__name__} {_short(value)} is not valid JSON; decode it to str first")
    raise TypeError(f"{path}: {type(value).__name__} {_short(value)} is not valid JSON")


def customer_ids(customer: Any, path: str = "customer") -> CustomerIds:
    """Turn a customer (a string id or a dict of id types to ids) into the wire's ids object.

    A plain string ``"john123"`` means ``{"registered": "john123"}``. Raises ``TypeError`` or
    ``ValueError`` naming the bad value.
    """
    if isinstance(customer, str):
        if not customer:
            raise ValueError(f"{path} must be a non-empty string or a dict of id types to ids, not ''")
        ids = {DEFAULT_ID_TYPE: _plain_string(customer, path)}
        return ids if len(customer) <= _SMALL_STRING_ID else _large_ids(ids, path)
    if isinstance(customer, Mapping):
        if not customer:
            raise ValueError(f"{path} must name at least one id, not an empty dict")
        ids = {}
        characters = 0
        for id_type, id_value in customer.items():
            if not isinstance(id_type, str) or not id_type:
                raise TypeError(f"{path}: id type {_short(id_type)} must be a non-empty string")
            if not isinstance(id_value, str) or not id_value:
                raise TypeError(f"{path}[{id_type!r}]: id {_short(id_value)} must be a non-empty string")
            ids[_plain_string(id_type, f"{path}: id type")] = _plain_string(id_value, f"{path}[{id_type!r}]")
            characters += len(id_type) + len(id_value) + 1
        return ids if characters <= SMALL_IDS_CHARACTERS else _large_ids(ids, path)
    if customer is None:
        raise ValueError(
            "no customer identified: pass customer= to SevenSegments(...) or to this call, or call identify() first"
        )
    raise TypeError(
        f"{path} must be a string id or a dict of id types to ids, not {type(customer).__name__} {_short(customer)}"
    )


#: A JSON escape of a UTF-16 surrogate (\\ud800 to \\udfff), whole or lone.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def escapes_lone_surrogate(text: bytes, value: Any) -> bool:
    """Whether the JSON ``text``, decoded as ``value``, escapes a lone surrogate (``"\\ud800"``): valid
    JSON, but no text (UTF-8 cannot carry it; ``track`` refuses it). Checked only where such an
    escape is; half of a pair is whole again once decoded."""
    if _SURROGATE_ESCAPE.search(text) is None:
        return False
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# Command size ------------------------------------------------------------------------------------
# The server refuses (413) a command whose data (company_id, ids, type, properties, timestamp,
# command_id) takes more than MAX_COMMAND_BYTES as compact UTF-8 JSON; the client refuses it at the
# call instead. Measuring that exactly means writing the JSON, so the call first compares cheap upper
# bounds: a character of a string takes at most 6 bytes as JSON (an escape such as \u0000), and the
# size ``capture_properties`` counts for properties is at least a sixth of their JSON's.

#: Customer ids of at most this many characters (each id type and id, plus one per pair) are small:
#: with them, properties up to ``properties_room`` surely fit. Larger ones are ``LargeCustomerIds``.
SMALL_IDS_CHARACTERS = 1024
#: At most what small customer ids take as JSON.
_SMALL_IDS_BYTES = 2 + 6 * SMALL_IDS_CHARACTERS
#: The longest string customer (the id of the default id type) whose ids are small.
_SMALL_STRING_ID = SMALL_IDS_CHARACTERS - len(DEFAULT_ID_TYPE) - 1
#: What a command's data takes besides its values: field names and punctuation, by path.
_FRAME = {
    PATH_EVENTS: len('{"company_id":,"customer_ids":,"type":,"properties":,"timestamp":,"command_id":""}'),
    PATH_CUSTOMERS: len('{"company_id":,"ids":,"properties":,"timestamp":,"command_id":""}'),
}
#: The least a command's data takes besides its customer ids.
_LEAST_BESIDES_IDS = len('{"company_id":"t","ids":,"properties":{},"timestamp":0,"command_id":"c"}')
#: At most what a command takes besides its company id, customer ids and properties: the frame, an
#: event type of 256 escaped characters, a timestamp as the server writes it, a command id of 64.
_MOST_BESIDES_VALUES = _FRAME[PATH_EVENTS] + 6 * MAX_EVENT_TYPE_LENGTH + 2 + 24 + MAX_COMMAND_ID_LENGTH


class LargeCustomerIds(Dict[str, str]):
    """Customer ids of more than ``SMALL_IDS_CHARACTERS`` characters, as ``customer_ids`` returns
    them, with the bytes they take as JSON (``json_bytes``): every command for them is checked
    against the server's limit (see ``properties_room``). They are no command's alone: a copy of
    them for ``on_error`` or ``before_send`` is a plain dict."""

    __slots__ = ("json_bytes",)

    def __init__(self, ids: CustomerIds, json_bytes: int) -> None:
        super().__init__(ids)
        self.json_bytes = json_bytes


def _json_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _large_ids(ids: CustomerIds, path: str) -> LargeCustomerIds:
    """``ids`` measured; ``ValueError`` when no command can carry them, whatever else it holds."""
    size = _json_bytes(_write_plain(ids))
    if size + _LEAST_BESIDES_IDS > MAX_COMMAND_BYTES:
        raise ValueError(
            f"{path}: the ids take {size} bytes as JSON, more than any command can carry"
            f" (a command may take at most {MAX_COMMAND_BYTES})"
        )
    return LargeCustomerIds(ids, size)


def properties_room(company_id: str, ids_bytes: int = _SMALL_IDS_BYTES) -> int:
    """The largest size ``capture_properties`` may count for properties that surely fit in one
    command with customer ids of at most ``ids_bytes`` bytes of JSON (by default, any small ids)
    and any event type, timestamp and command id. Past it, :func:`check_command_size` measures."""
    return (MAX_COMMAND_BYTES - _MOST_BESIDES_VALUES - 6 * len(company_id) - 2 - ids_bytes) // 6


def check_command_size(command: Command, company_id: str) -> int:
    """The bytes of ``command``'s data as compact UTF-8 JSON, as the server measures them;
    ``ValueError`` naming the largest part when that is more than a command may take."""
    path, ids, kind, properties, timestamp, command_id = command
    parts = {"the customer ids": ids.json_bytes if type(ids) is LargeCustomerIds else _json_bytes(_write_plain(ids))}
    # The longer of the two spellings: the server's (the standard library's) and the one sent
    # (orjson's, when installed: 0.00006103515625 where the standard library writes 6.103515625e-05,
    # but 1e-7 where it writes 1e-07). JSON written at the call is read back for the server's.
    if type(properties) is bytes or type(properties) is str:
        sent = len(properties) if type(properties) is bytes else _json_bytes(cast(str, properties))
        properties = json.loads(properties)
    else:
        sent = len(_WRITER.data(properties)) if properties else 2
    parts["the properties"] = max(_json_bytes(_join(_write_tree(properties, 0))), sent) if properties else 2
    if kind is not None:
        parts["the event type"] = _json_bytes(_encode_string(kind))
    parts["the company token"] = _json_bytes(_encode_string(company_id))
    # The timestamp as the server writes it again, or as the bulk encoder writes it (``...e-6``):
    # the longer, so that the pump, which measures what it sends, never refuses what passed here.
    written = max(len(repr(float(timestamp))), len(str(round(timestamp * 1e6))) + 3)
    parts["the other fields"] = _FRAME[path] + written + len(command_id)
    size = sum(parts.values())
    if size > MAX_COMMAND_BYTES:
        (largest, largest_size), *others = sorted(parts.items(), key=lambda part: -part[1])
        raise ValueError(
            f"{largest} take {largest_size} bytes as JSON, too many for one command: with "
            + ", ".join(f"{name[4:]} ({part_size})" for name, part_size in others)
            + f" the command would take {size}; a command may take at most {MAX_COMMAND_BYTES}"
        )
    return size


def check_event_type(value: Any) -> str:
    """Check an event type: a non-empty string of at most 256 characters."""
    if not isinstance(value, str):
        raise TypeError(f"event type must be a string, not {type(value).__name__} {_short(value)}")
    if not value or len(value) > MAX_EVENT_TYPE_LENGTH:
        raise ValueError(
            f"event type must be 1 to {MAX_EVENT_TYPE_LENGTH} characters, not {len(value)} ({_short(value)})"
        )
    return value if type(value) is str and value.isascii() else _plain_string(value, "event type")


def _plain_string(text: str, path: str) -> str:
    """``text`` as a plain str (a subclass's ``__str__`` is not trusted) that UTF-8 can carry."""
    plain: str = str.__str__(text)
    if not plain.isascii():
        _utf8_length(plain, path)
    return plain


def check_command_id(value: Any) -> str:
    """Check a caller's ``command_id``: 1 to 64 characters of ``[A-Za-z0-9_-]`` (docs/protocol.md)."""
    if not isinstance(value, str):
        raise TypeError(f"command_id must be a string, not {type(value).__name__} {_short(value)}")
    text: str = value if type(value) is str else str.__str__(value)
    if COMMAND_ID_RE.fullmatch(text) is None:
        if not text or len(text) > MAX_COMMAND_ID_LENGTH:
            what = f"{len(text)} characters"
        else:
            what = "a character outside [A-Za-z0-9_-]"
        raise ValueError(
            f"command_id {_short(text)} has {what}; it must be 1 to {MAX_COMMAND_ID_LENGTH} characters of [A-Za-z0-9_-]"
        )
    return text


#: Timestamps at or after this (3000-01-01T00:00:00Z) are refused: they are almost always milliseconds.
MAX_TIMESTAMP = 32503680000.0


def _naive_message(moment: _dt.datetime, path: str) -> str:
    return (
        f"{path} {moment.isoformat()} has no time zone; pass an aware datetime "
        "(for example datetime.now(timezone.utc) or moment.replace(tzinfo=timezone.utc))"
        + (" or seconds since the epoch" if path == "timestamp" else "")
    )


def timestamp_seconds(timestamp: Optional[Timestamp]) -> float:
    """Seconds since the epoch for ``timestamp``; ``None`` means now (following a frozen clock in tests).

    Refused: negative (before 1970), not finite, a naive ``datetime``, and the year 3000 or later
    (a number that large is almost always milliseconds, such as JavaScript's ``Date.now()``).
    """
    if timestamp is None:
        return time.time()
    kind = type(timestamp)
    if kind is float or kind is int:
        try:
            seconds = float(timestamp)  # type: ignore[arg-type]
        except OverflowError:
            raise ValueError(f"timestamp {_short(timestamp)} is too large to be seconds since the epoch") from None
    elif isinstance(timestamp, _dt.datetime):
        if timestamp.utcoffset() is None:
            raise ValueError(_naive_message(timestamp, "timestamp"))
        seconds = timestamp.timestamp()
        if seconds < 0:
            raise ValueError(f"timestamp {timestamp.isoformat()} is before 1970; it must be a non-negative number of seconds")
    elif isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        try:
            seconds = float(timestamp)
        except OverflowError:
            raise ValueError(f"timestamp {_short(timestamp)} is too large to be seconds since the epoch") from None
    else:
        raise TypeError(
            f"timestamp must be seconds since the epoch or an aware datetime, not {kind.__name__} {_short(timestamp)}"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"timestamp {timestamp!r} must be a finite, non-negative number of seconds since the epoch")
    if seconds >= MAX_TIMESTAMP:
        if isinstance(timestamp, _dt.datetime):
            raise ValueError(f"timestamp {timestamp.isoformat()} is in the year 3000 or later")
        raise ValueError(
            f"timestamp {_short(timestamp)} is in the year 3000 or later: it looks like milliseconds; "
            f"pass seconds since the epoch (here {seconds / 1000!r})"
        )
    return seconds


_getpid = current_pid


class _CommandIds:
    """Unique command ids: a random per-process prefix and a counter, renewed in a forked child.

    The prefix and its counter live in one tuple, read once per id, so two threads that both notice
    a fork (uwsgi skips ``os.register_at_fork`` hooks) can never mix one prefix with another's count.
    No lock is taken: a lock held by another thread at ``fork()`` would deadlock the child.
    """

    def __init__(self) -> None:
        self._pid = 0
        self._state: Tuple[str, Iterator[int]] = ("", count(1))
        self.reseed()

    def reseed(self) -> None:
        """Start a new prefix (called in a forked child)."""
        prefix = base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")  # 16 characters of [A-Za-z0-9_-]
        self._state = (prefix + "-", count(1))
        self._pid = os.getpid()

    def source(self) -> Tuple[str, Iterator[int]]:
        """``(prefix, counter)``: ids are ``prefix + str(next(counter))``; for loops that make many."""
        if self._pid != os.getpid():
            self.reseed()
        return self._state

    def __call__(self, pid: int = 0) -> str:
        """A new id; ``pid`` is the current process id when the caller has just read it (0: read it here)."""
        # source() inlined: this runs on the caller's thread in every track/update.
        if self._pid != (pid or _getpid()):
            self.reseed()
        prefix, counter = self._state
        return prefix + str(next(counter))


#: ``new_command_id()`` returns an id unique across processes and forks, valid for docs/protocol.md.
new_command_id = _CommandIds()


def _reseed_after_fork() -> None:
    new_command_id.reseed()


if hasattr(os, "register_at_fork"):
    # Looked up at fork time, so that a test can stand in for a server that skips the hooks (uwsgi).
    os.register_at_fork(after_in_child=lambda: _reseed_after_fork())


_join = "".join
#: ``value -> compact JSON text`` of a plain tree (what ``capture_properties`` returns), with the
#: standard library: for the ids' JSON, kept and reused (see BulkCommandEncoder).
_write_plain = compact_json_encoder()
#: The C encoder itself, called as ``_write_tree(value, 0)`` for the parts of the text.
_write_tree: Callable[[Any, int], Any] = c_json_encoder() or (lambda value, _level: (_write_plain(value),))
#: What writes the checked properties: ``orjson`` when installed, else the standard library. Read
#: at each call (a test puts either in place with ``_use_writer``).
_WRITER: JsonWriter = json_writer.WRITER
#: ``orjson.dumps`` when it writes, for ``capture_properties_json``'s flat dicts and the pump's
#: properties, which handle its refusals themselves; else None.
_FAST_DUMPS: Optional[Callable[[Any], bytes]] = _WRITER.fast_dumps


def _use_writer(writer: JsonWriter) -> JsonWriter:
    """Write with ``writer`` from now on; returns the one used until now (for tests and benchmarks)."""
    global _WRITER, _FAST_DUMPS
    previous, _WRITER, _FAST_DUMPS = _WRITER, writer, writer.fast_dumps
    return previous


#: The company token of an encoded command: the JSON string after ``"company_id":``.
_COMPANY_ID = re.compile(rb'"company_id"\s*:\s*("[^"\\]*(?:\\.[^"\\]*)*")')  # unrolled: no alternation per character



@functools.lru_cache(maxsize=64)
def _company_token(text: bytes) -> Optional[str]:
    """The token a JSON string holds (the commands of a spool share a few: decoded once each)."""
    try:
        token = json.loads(text)
    except ValueError:
        return None
    return token if isinstance(token, str) else None


def _tail(timestamp: float, command_id: str) -> bytes:
    """What follows a bulk command's properties. The command id is checked to [A-Za-z0-9_-]: it
    needs no escaping. (Inline where every call writes it.)"""
    return f',"timestamp":{round(timestamp * 1e6)}e-6,"command_id":"{command_id}"}}}}'.encode()


#: The length of the shortest tail (see ``_tail``).
_LEAST_REST = len(_tail(0.0, "x"))


class BulkCommandEncoder:
    """Turns ``Command`` tuples into the JSON of one ``bulk`` command, for one company token.

    A buffered client's engine encodes each command on the caller's thread, before ``track``
    returns. ``track`` and ``update`` hand it the caller's own properties dict when nothing else
    needs checking first (no ``command_id``, ``timestamp`` or ``before_send``): the encoder checks,
    writes and measures them in one pass, raising what :func:`capture_properties_written` and
    :func:`check_command_size` raise; otherwise it gets their JSON (written by
    ``capture_properties_written`` or ``capture_properties_json``) or a checked copy.

    The token is encoded once, the JSON of the last customer ids and event type is reused (for the
    same object, or for equal ids: the client passes one ids object for a run of calls for one
    customer). One encoder serves every thread of a client: what it keeps is replaced whole, one
    tuple at a time, never changed in place. The timestamp is written with microsecond precision as a JSON number in exponent
    form (``1700000000123456e-6``), which costs a fifth of writing the float itself.
    """

    def __init__(self, token: str) -> None:
        self._token = token
        self._company = _encode_string(token)
        #: The longest JSON of properties that surely fits a command with small ids (see
        #: properties_room; a fifth of the limit at most, see _WRITTEN_HERE_BYTES): longer JSON, or
        #: LargeCustomerIds, go the careful way, which measures the command.
        self._room = min(properties_room(token), _WRITTEN_HERE_BYTES)
        # What comes before the properties, for the last ids (and event type) seen: each kept in one
        # tuple replaced whole, so that threads sharing the encoder never read one customer's ids
        # with another's text. Events: (ids, type, text, UTF-8); updates: (ids, text, UTF-8).
        self._ids_json: Tuple[Any, str] = (None, "")
        self._event: Tuple[Any, Any, str, bytes] = (None, None, "", b"")
        self._customer: Tuple[Any, str, bytes] = (None, "", b"")

    def _json_of_ids(self, ids: CustomerIds) -> str:
        known, text = self._ids_json
        if ids is not known and ids != known:
            text = _write_plain(ids)
            self._ids_json = (ids, text)
        return text

    def _event_start(self, ids: CustomerIds, kind: str) -> Tuple[str, bytes]:
        text = (
            '{"name":"' + PATH_EVENTS + '","data":{"company_id":' + self._company + ',"customer_ids":'
            + self._json_of_ids(ids) + ',"type":' + _encode_string(kind) + ',"properties":'
        )
        head = text.encode()
        self._event = (ids, kind, text, head)
        return text, head

    def _customer_start(self, ids: CustomerIds) -> Tuple[str, bytes]:
        text = (
            '{"name":"' + PATH_CUSTOMERS + '","data":{"company_id":' + self._company + ',"ids":'
            + self._json_of_ids(ids) + ',"properties":'
        )
        head = text.encode()
        self._customer = (ids, text, head)
        return text, head

    def encode(self, command: Command) -> bytes:
        """``{"name": path, "data": {...}}`` as UTF-8 JSON bytes (``command`` is exactly a ``Command``).
        Safe to call from several threads at once."""
        path, ids, kind, properties, timestamp, command_id = command
        if path == PATH_EVENTS:
            known_ids, known_kind, text, head = self._event
            # The same ids object, or equal ids, write the same JSON.
            if ids is not known_ids and ids != known_ids or kind is not known_kind:
                text, head = self._event_start(ids, cast(str, kind))
        else:
            known_ids, text, head = self._customer
            if ids is not known_ids and ids != known_ids:
                text, head = self._customer_start(ids)
        if type(properties) is dict and type(ids) is not LargeCustomerIds:
            # A flat dict of plain values is checked and written here (capture_properties_written,
            # inline: this runs in every track) and, shorter than the room, surely fits a command.
            dumps = _FAST_DUMPS
            if dumps is None:
                # _whole_here, its shape's writer inline, with the rest of the command. At most the
                # room besides the head and the shortest rest (which take at least as many bytes as
                # characters): the properties take at most the room.
                most = self._room + len(text) + _LEAST_REST
                writers = _SHAPES.get(tuple(properties))
                if writers is not None:
                    written = writers[1](text, timestamp, command_id, *properties.values())
                    if written is not None:
                        try:
                            encoded = written.encode()
                        except UnicodeEncodeError:  # a lone surrogate: the careful path names it
                            encoded = b""
                        if 0 < len(encoded) <= most:
                            return encoded
                        return head + self._written(command) + _tail(timestamp, command_id)
                whole = _whole_here(text, properties, _tail(timestamp, command_id).decode(), most)
                if whole is not None:
                    return whole
            else:
                for value in properties.values():
                    if type(value) in _PLAIN_TYPES or (type(value) is float and not value - value):
                        continue
                    break
                else:
                    try:
                        data = dumps(properties)
                    except TypeError:  # orjson.JSONEncodeError: the careful path names what it refused
                        pass
                    else:
                        if len(data) <= self._room:  # _tail, inline
                            tail = f',"timestamp":{round(timestamp * 1e6)}e-6,"command_id":"{command_id}"}}}}'
                            return head + data + tail.encode()
        elif type(properties) is bytes:  # written by capture_properties_written
            return head + properties + _tail(timestamp, command_id)
        return head + self._written(command) + _tail(timestamp, command_id)

    def _written(self, command: Command) -> bytes:
        """The JSON of ``command``'s properties, checked as the client checks them at the call
        (``ValueError`` when the command is larger than the server takes)."""
        path, ids, kind, properties, timestamp, command_id = command
        if type(properties) is str:  # written by capture_properties_json
            return properties.encode()
        written, size = capture_properties_written(properties)
        if size > self._room or type(ids) is LargeCustomerIds:
            if type(ids) is not LargeCustomerIds or size > properties_room(self._token, ids.json_bytes):
                check_command_size((path, ids, kind, written, timestamp, command_id), self._token)
        return written

    @staticmethod
    def company_of(payload: bytes) -> Optional[str]:
        """The company token an encoded command carries (``data.company_id``), or None when it has none.

        Found by a search rather than by decoding the whole command, so that a client replaying a
        spool written with another token can keep that token out of what it quotes, cheaply.
        """
        match = _COMPANY_ID.search(payload)
        return None if match is None else _company_token(match.group(1))

    @staticmethod
    def as_dict(command: Command) -> Dict[str, Any]:
        """The command as ``{"name": path, "data": {...}}`` for ``on_error``: everything needed to
        send it again (``command_id`` included) except the company token, which it never carries."""
        path, ids, kind, properties, timestamp, command_id = command[:6]
        # A copy: the ids object is shared by the commands of one customer, and on_error may change it.
        data: Dict[str, Any] = {"customer_ids" if path == PATH_EVENTS else "ids": dict(ids)}
        if path == PATH_EVENTS:
            data["type"] = kind
        data["properties"] = json.loads(properties) if isinstance(properties, (str, bytes)) else properties
        data["timestamp"] = timestamp
        data["command_id"] = command_id
        return {"name": path, "data": data}

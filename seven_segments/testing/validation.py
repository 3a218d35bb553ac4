"""Validation of tracking commands, as the local server does it (strictly, naming the field).

Every ``validate_*`` function takes the decoded JSON ``data`` of one command and returns either a
normalised, ready-to-store value or a list of human-readable errors, each naming the offending field
(``customer_ids.registered must be a non-empty string``, ``properties.cart[2] must be a finite number``).
"""

from __future__ import annotations

import functools
import json
import json.encoder
import math
import operator
import sys
from itertools import chain, compress, repeat
from typing import AbstractSet, Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..serialization import c_json_encoder, compact_json_encoder
from ..protocol import COMMAND_ID_RE, MAX_COMMAND_BYTES, MAX_EVENT_TYPE_LENGTH, PATH_EVENTS

_ENCODE = compact_json_encoder()
#: Canonical encoder for customer id objects (the identity of a customer).
_CANONICAL = compact_json_encoder(sort_keys=True)

EVENT_FIELDS = frozenset({"company_id", "customer_ids", "type", "properties", "timestamp", "command_id"})
CUSTOMER_FIELDS = frozenset({"company_id", "ids", "properties", "timestamp", "command_id"})
HTML_FIELDS = frozenset({"company_id", "customer_ids", "html_campaign_name"})

_COMMAND_ID_MATCH = COMMAND_ID_RE.fullmatch
MSG_COMMAND_ID = "command_id must be 1 to 64 characters of [A-Za-z0-9_-]"
MSG_TYPE = f"type must be a non-empty string of at most {MAX_EVENT_TYPE_LENGTH} characters"


class EventRow(NamedTuple):
    """A valid ``crm/events`` command, normalised for storage."""

    company_id: str
    customer_key: str  # canonical JSON of customer_ids
    type: str
    properties_json: str
    timestamp: float
    command_id: Optional[str]


class CustomerUpdate(NamedTuple):
    """A valid ``crm/customers`` command, normalised for storage."""

    company_id: str
    customer_key: str
    properties: Dict[str, str]  # property name -> JSON-encoded value
    timestamp: float
    command_id: Optional[str]


class HtmlRequest(NamedTuple):
    """A valid ``campaigns/html/get`` request."""

    company_id: str
    customer_key: str
    campaign: str


def canonical_ids(ids: Dict[str, str]) -> str:
    """The canonical JSON text of a customer id object: the customer's identity in the store."""
    return _CANONICAL(ids)


def encode_json(value: Any) -> str:
    """Compact JSON of ``value`` (``ValueError`` on NaN or Infinity)."""
    return _ENCODE(value)


_MAX_FLOAT = sys.float_info.max


def _is_number(value: Any) -> bool:
    """A finite int or float (not bool) that ``float()`` can represent (NaN fails the comparison)."""
    return type(value) in (int, float) and -_MAX_FLOAT <= value <= _MAX_FLOAT


def _unknown_fields(data: Dict[str, Any], allowed: frozenset) -> List[str]:  # type: ignore[type-arg]
    return [f"{key} is not a known field" for key in sorted(set(data) - allowed)]


def _check_company(data: Dict[str, Any], errors: List[str]) -> None:
    company = data.get("company_id")
    if not isinstance(company, str) or not company:
        errors.append("company_id must be a non-empty string")


def _check_ids(data: Dict[str, Any], field: str, errors: List[str]) -> Optional[str]:
    ids = data.get(field)
    if not isinstance(ids, dict) or not ids:
        errors.append(f"{field} must be a non-empty object of id type to id")
        return None
    ok = True
    for key, value in ids.items():
        if not key:
            errors.append(f"{field} id types must be non-empty strings")
            ok = False
        elif not isinstance(value, str) or not value:
            errors.append(f"{field}.{key} must be a non-empty string")
            ok = False
    return canonical_ids(ids) if ok else None


def _non_finite_paths(value: Any, path: str, out: List[str]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        out.append(f"{path} must be a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            _non_finite_paths(item, f"{path}.{key}", out)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _non_finite_paths(item, f"{path}[{index}]", out)


def _check_properties(data: Dict[str, Any], errors: List[str]) -> Optional[Dict[str, Any]]:
    properties = data.get("properties", {})
    if not isinstance(properties, dict):
        errors.append("properties must be a JSON object")
        return None
    return properties


def _encode_properties(properties: Dict[str, Any], errors: List[str]) -> Optional[str]:
    try:
        return _ENCODE(properties)
    except ValueError:
        _non_finite_paths(properties, "properties", errors)
        return None


def _check_timestamp(data: Dict[str, Any], now: float, errors: List[str]) -> float:
    if "timestamp" not in data:
        return now
    timestamp = data["timestamp"]
    if not _is_number(timestamp) or timestamp < 0:
        errors.append("timestamp must be a finite, non-negative number of seconds since the epoch")
        return now
    return float(timestamp)


def _check_command_id(data: Dict[str, Any], errors: List[str]) -> Optional[str]:
    if "command_id" not in data:
        return None
    command_id = data["command_id"]
    if not isinstance(command_id, str) or not COMMAND_ID_RE.fullmatch(command_id):
        errors.append(MSG_COMMAND_ID)
        return None
    return command_id


_MISSING: Any = object()
#: ``EventRow(...)`` without the Python-level ``__new__`` frame (a measurable cost at 50,000 events/s).
_new_event: Callable[[Tuple[Any, ...]], EventRow] = functools.partial(tuple.__new__, EventRow)
_NUMBER_TYPES = (int, float)
_encode_string = json.encoder.encode_basestring


def _fast_event(data: Dict[str, Any], now: float) -> Optional[EventRow]:
    """The common, valid case quickly; ``None`` when anything is unusual (the full check then explains)."""
    get = data.get
    company = get("company_id")
    ids = get("customer_ids")
    event_type = get("type")
    if not (
        type(company) is str and company
        and type(ids) is dict and len(ids) == 1
        and type(event_type) is str and 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH
        and data.keys() <= EVENT_FIELDS
    ):
        return None
    properties = get("properties", _MISSING)
    timestamp = get("timestamp", _MISSING)
    command_id = get("command_id", _MISSING)
    ((id_type, id_value),) = ids.items()
    if not (id_type and type(id_value) is str and id_value):
        return None
    if timestamp is _MISSING:
        timestamp = now
    elif not (type(timestamp) in _NUMBER_TYPES and 0 <= timestamp <= _MAX_FLOAT):
        return None
    if command_id is _MISSING:
        command_id = None
    elif not (type(command_id) is str and _COMMAND_ID_MATCH(command_id)):
        return None
    if properties is _MISSING:
        properties_json = "{}"
    elif type(properties) is dict:
        try:
            properties_json = _ENCODE(properties)
        except ValueError:
            return None
    else:
        return None
    key = "{" + _encode_string(id_type) + ":" + _encode_string(id_value) + "}"
    return _new_event((company, key, event_type, properties_json, float(timestamp), command_id))


def validate_event(data: Any, now: float) -> Union[EventRow, List[str]]:
    """Validate one ``crm/events`` command; ``now`` is the receive time used without ``timestamp``."""
    if not isinstance(data, dict):
        return ["data must be a JSON object"]
    fast = _fast_event(data, now)
    if fast is not None:
        return fast
    errors = _unknown_fields(data, EVENT_FIELDS) if data.keys() - EVENT_FIELDS else []
    _check_company(data, errors)
    key = _check_ids(data, "customer_ids", errors)
    event_type = data.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_EVENT_TYPE_LENGTH:
        errors.append(MSG_TYPE)
    properties = _check_properties(data, errors)
    properties_json = _encode_properties(properties, errors) if properties is not None else None
    timestamp = _check_timestamp(data, now, errors)
    command_id = _check_command_id(data, errors)
    if errors:
        return errors
    assert key is not None and properties_json is not None
    return EventRow(data["company_id"], key, event_type, properties_json, timestamp, command_id)  # type: ignore[arg-type]


def validate_customer(data: Any, now: float) -> Union[CustomerUpdate, List[str]]:
    """Validate one ``crm/customers`` command; ``now`` is the receive time used without ``timestamp``."""
    if not isinstance(data, dict):
        return ["data must be a JSON object"]
    errors = _unknown_fields(data, CUSTOMER_FIELDS) if data.keys() - CUSTOMER_FIELDS else []
    _check_company(data, errors)
    key = _check_ids(data, "ids", errors)
    properties = _check_properties(data, errors)
    encoded: Dict[str, str] = {}
    if properties is not None:
        for name, value in properties.items():
            try:
                encoded[name] = _ENCODE(value)
            except ValueError:
                _non_finite_paths(value, f"properties.{name}", errors)
    timestamp = _check_timestamp(data, now, errors)
    command_id = _check_command_id(data, errors)
    if errors:
        return errors
    assert key is not None
    return CustomerUpdate(data["company_id"], key, encoded, timestamp, command_id)


def validate_html(data: Any) -> Union[HtmlRequest, List[str]]:
    """Validate a ``campaigns/html/get`` request."""
    if not isinstance(data, dict):
        return ["data must be a JSON object"]
    errors = _unknown_fields(data, HTML_FIELDS)
    _check_company(data, errors)
    key = _check_ids(data, "customer_ids", errors)
    name = data.get("html_campaign_name")
    if not isinstance(name, str) or not name:
        errors.append("html_campaign_name must be a non-empty string")
    if errors:
        return errors
    assert key is not None
    return HtmlRequest(data["company_id"], key, name)  # type: ignore[arg-type]


def command_size(data: Any) -> int:
    """Size in bytes of ``data`` as compact UTF-8 JSON (NaN and Infinity spelled as Python does)."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def split_command(command: Any) -> Tuple[Optional[str], Any, List[str]]:
    """Split one bulk command ``{"name": ..., "data": ...}`` into name and data, or errors."""
    if not isinstance(command, dict):
        return None, None, ["command must be a JSON object with name and data"]
    errors = [f"{key} is not a known field of a bulk command" for key in sorted(set(command) - {"name", "data"})]
    name = command.get("name")
    if not isinstance(name, str):
        errors.append("name must be crm/events or crm/customers")
        name = None
    if "data" not in command:
        errors.append("data must be a JSON object")
    return name, command.get("data"), errors


class EventBatch(NamedTuple):
    """A ``bulk`` body of valid ``crm/events`` commands only, checked as a whole by :func:`validate_event_bulk`."""

    companies: AbstractSet[str]  # the distinct company_id values
    keys: List[Tuple[str, str]]  # (company_id, command_id) of every command, in order
    rows: Optional[List[EventRow]]  # ready to store (None when asked not to build them)


_get_name = operator.itemgetter("name")
_get_data = operator.itemgetter("data")
_EVENT_FIELD_GETTERS = tuple(
    operator.itemgetter(name) for name in ("company_id", "customer_ids", "type", "properties", "timestamp", "command_id")
)
_ONLY_DICT = {dict}
_TWO = {2}
_SIX = {len(EVENT_FIELDS)}
_ONE = {1}
_NUMBER_TYPE_SET = frozenset(_NUMBER_TYPES)
#: Types of a flat property value (no object or array inside).
_FLAT_TYPES = frozenset({str, int, float, bool, type(None)})
_COMMAND_ID_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_COMMAND_ID_MAX = 64
assert all(COMMAND_ID_RE.fullmatch(chr(c)) for c in _COMMAND_ID_CHARS) and COMMAND_ID_RE.fullmatch("a" * 64)
assert not COMMAND_ID_RE.fullmatch("a" * 65)
#: UTF-8 bytes that JSON strings hold as they are (all but control characters, quote and backslash).
_UNESCAPED_BYTES = bytes(byte for byte in range(0x20, 0x100) if byte not in b'"\\')
#: Compact JSON of an event's data beyond its strings and properties: the six field names, quotes, braces,
#: commas and colons (80 bytes), a command_id (at most 66), a float timestamp (at most 24); rounded up.
_EVENT_OVERHEAD = 256
#: The longest int timestamp accepted (``<= sys.float_info.max``) has 309 digits.
_INT_TIMESTAMP_EXTRA = 320
#: The longest ``repr`` of a float.
_FLOAT_JSON_MAX = 24
_ID_KEY = "{%s:%s}".__mod__
_join = "".join
_is = operator.is_


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _string_bytes(text: str) -> int:
    """An upper bound of the bytes of ``text``'s characters inside a compact, UTF-8 JSON string (quotes apart)."""
    encoded = text.encode("utf-8", "surrogatepass")
    return len(encoded) + 5 * len(encoded.translate(None, _UNESCAPED_BYTES))  # an escape is 2 or 6 bytes


def _flat_properties_size(properties: Sequence[Dict[str, Any]]) -> Optional[int]:
    """An upper bound of the size of every one of ``properties`` as compact UTF-8 JSON, without encoding them
    (a float's ``repr`` costs the most), when they are all flat and their numbers finite; else ``None``.

    The bound is the size of all of them together. Every pass is a C-level builtin over all values at once.
    """
    values = list(chain.from_iterable(map(dict.values, properties)))
    value_types = list(map(type, values))
    kinds = set(value_types)
    if not kinds <= _FLAT_TYPES:
        return None
    size = 2 * len(properties) + 4 * len(values)  # braces; name quotes, colon and comma
    size += _string_bytes(_join(chain.from_iterable(properties)))
    others = len(values)  # true, false, null: 5 bytes at most
    if str in kinds:
        strings = list(compress(values, map(_is, value_types, repeat(str))))
        size += _string_bytes(_join(strings)) + 2 * len(strings)
        others -= len(strings)
    if float in kinds:
        floats = list(compress(values, map(_is, value_types, repeat(float))))
        total = sum(floats)
        if total - total != 0:  # NaN or an infinity among them (or a sum too large: then measured otherwise)
            return None
        size += _FLOAT_JSON_MAX * len(floats)
        others -= len(floats)
    if int in kinds:
        ints = list(compress(values, map(_is, value_types, repeat(int))))
        size += len(ints) * max(len(str(max(ints))), len(str(min(ints))))
        others -= len(ints)
    return size + 5 * others


def validate_event_bulk(commands: Sequence[Any], now: float, body_size: int, rows: bool) -> Optional[EventBatch]:
    """The whole ``commands`` list of a bulk body at once, when every command is a valid ``crm/events`` command
    with all six fields and none can be over ``MAX_COMMAND_BYTES``; else ``None`` (check command by command).

    The checks run column by column with C-level builtins (``map``, ``set``, ``min``, ``str.join``...) rather
    than field by field in Python: several times cheaper for the 1000 commands of a full bulk. ``body_size`` is
    the uncompressed body size (no command can be larger). ``rows``: build the :class:`EventRow` values
    (properties encoded for storage); without it only what counting needs is checked and returned.
    """
    if not commands:
        return None
    columns = _event_columns(commands)
    if columns is None or not _strings_valid(columns):
        return None
    timestamp_types = _timestamp_types(columns.timestamps)
    if timestamp_types is None:
        return None
    customers = _customer_columns(columns.ids)
    if customers is None:
        return None
    fixed = _size_besides_properties(columns, customers, timestamp_types, body_size)
    keys = list(zip(columns.companies, columns.command_ids))
    if not rows:
        if not _properties_fit_uncoded(columns.properties, fixed, body_size):
            return None  # one command might be too large: measured one by one
        return EventBatch(columns.company_set, keys, None)
    events = _event_rows(columns, customers, timestamp_types, fixed, body_size)
    return None if events is None else EventBatch(columns.company_set, keys, events)


class _EventColumns(NamedTuple):
    """The six fields of every command of a bulk, a list per field, and the sets and joins checked."""

    companies: List[Any]
    ids: List[Any]
    types: List[Any]
    properties: List[Any]
    timestamps: List[Any]
    command_ids: List[Any]
    company_set: AbstractSet[str]
    type_set: AbstractSet[Any]
    joined_ids: str


class _CustomerColumns(NamedTuple):
    """The customer ids of every command: how many each has, their types and their values."""

    counts: AbstractSet[int]
    types: AbstractSet[Any]
    values: List[Any]


def _event_columns(commands: Sequence[Any]) -> Optional[_EventColumns]:
    """The fields as columns, when every command is a ``crm/events`` command with exactly the six fields."""
    try:
        # Only a dict has a length and gives a value for a string key (TypeError for numbers, strings, lists...).
        if set(map(len, commands)) != _TWO:
            return None
        names = list(map(_get_name, commands))  # KeyError: another field than name and data
        if names.count(PATH_EVENTS) != len(names):
            return None
        datas = list(map(_get_data, commands))
        if set(map(len, datas)) != _SIX:
            return None
        companies, ids, types, properties, timestamps, command_ids = [list(map(get, datas)) for get in _EVENT_FIELD_GETTERS]
        company_set = set(companies)  # TypeError: an unhashable value (not a string then)
        type_set = set(types)
        joined = _join(command_ids)  # TypeError: not a string
    except (KeyError, TypeError):
        return None
    return _EventColumns(companies, ids, types, properties, timestamps, command_ids, company_set, type_set, joined)


def _strings_valid(columns: _EventColumns) -> bool:
    """Whether the company tokens, event types and command ids are valid, and every properties a dict."""
    # Equal values of different types are only numbers in JSON: checking one string of each value is enough.
    for company in columns.company_set:
        if type(company) is not str or not company:
            return False
    for event_type in columns.type_set:
        if type(event_type) is not str or not 0 < len(event_type) <= MAX_EVENT_TYPE_LENGTH:
            return False
    id_lengths = set(map(len, columns.command_ids))
    if min(id_lengths) < 1 or max(id_lengths) > _COMMAND_ID_MAX:
        return False
    joined = columns.joined_ids
    if not joined.isascii() or joined.encode("ascii").translate(None, _COMMAND_ID_CHARS):
        return False
    return set(map(type, columns.properties)) == _ONLY_DICT


def _timestamp_types(timestamps: List[Any]) -> Optional[AbstractSet[type]]:
    """The types of the timestamps when all are valid (numbers, finite, from 0 to the largest float); else None."""
    timestamp_types = set(map(type, timestamps))
    if not timestamp_types <= _NUMBER_TYPE_SET:  # bool is not a number here
        return None
    try:
        # A NaN makes the sum NaN (min and max are only meaningful without one).
        total = sum(timestamps)
        if total != total or min(timestamps) < 0 or max(timestamps) > _MAX_FLOAT:
            return None
    except OverflowError:  # an int too large for a float
        return None
    return timestamp_types


def _customer_columns(ids: List[Any]) -> Optional[_CustomerColumns]:
    """The customer ids as columns, when every command has at least one, all non-empty strings; else None."""
    if set(map(type, ids)) != _ONLY_DICT:
        return None
    id_counts = set(map(len, ids))
    id_values: List[Any]
    if id_counts == _ONE:
        (id_type,) = ids[0]
        try:
            id_values = list(map(operator.itemgetter(id_type), ids))
        except KeyError:  # several id types
            id_values = list(chain.from_iterable(map(dict.values, ids)))
            id_types = set(chain.from_iterable(ids))
        else:
            id_types = {id_type}
    else:
        if 0 in id_counts:
            return None
        id_values = list(chain.from_iterable(map(dict.values, ids)))
        id_types = set(chain.from_iterable(ids))
    try:
        if not all(id_values) or "" in id_types or not _join(id_values):  # TypeError: not a string
            return None
    except TypeError:
        return None
    return _CustomerColumns(id_counts, id_types, id_values)


def _size_besides_properties(
    columns: _EventColumns, customers: _CustomerColumns, timestamp_types: AbstractSet[type], body_size: int
) -> int:
    """An upper bound of every command's size as compact UTF-8 JSON, without its properties: at most 6 bytes
    per character of a raw string (an escape such as \\u0000). Bounded by the fields only when the body
    itself could hold a command too large."""
    fixed = _EVENT_OVERHEAD + (_INT_TIMESTAMP_EXTRA if int in timestamp_types else 0)
    if body_size > MAX_COMMAND_BYTES:
        fixed += 6 * (max(map(len, columns.company_set)) + max(map(len, columns.type_set)))
        longest_id = max(map(len, customers.types)) + max(map(len, customers.values))
        fixed += max(customers.counts) * (6 * longest_id + 6) + 2
    return fixed


def _properties_fit_uncoded(properties: List[Any], fixed: int, body_size: int) -> bool:
    """Counting only: whether no command can be too large. Flat properties are bounded without encoding
    them; others encoded as a whole (which refuses NaN and Infinity too: False)."""
    bound = _flat_properties_size(properties)
    if bound is None:
        try:
            bound = _utf8_size(_ENCODE(properties))
        except ValueError:
            return False
    return not (body_size > MAX_COMMAND_BYTES and fixed + bound > MAX_COMMAND_BYTES)


def _event_rows(
    columns: _EventColumns, customers: _CustomerColumns, timestamp_types: AbstractSet[type], fixed: int,
    body_size: int,
) -> Optional[List[EventRow]]:
    """The rows to store (properties encoded: at most 4 bytes per character of JSON text); None when the
    properties hold NaN or Infinity, or when a command might be too large."""
    limit = MAX_COMMAND_BYTES
    try:
        if _C_ENCODE_PROPERTIES is not None:
            properties_json = list(map(_join, map(_C_ENCODE_PROPERTIES, columns.properties, repeat(0))))
        else:  # pragma: no cover - Python without the C accelerator
            properties_json = list(map(_ENCODE, columns.properties))
    except ValueError:
        return None
    if body_size > limit and fixed + 4 * max(map(len, properties_json)) > limit:
        if fixed + max(map(_utf8_size, properties_json)) > limit:
            return None
    if customers.counts == _ONE and len(customers.types) == 1:
        (id_type,) = customers.types
        customer_keys = list(map(_ID_KEY, zip(repeat(_encode_string(id_type)), map(_encode_string, customers.values))))
    else:
        customer_keys = list(map(_CANONICAL, columns.ids))
    timestamps = columns.timestamps
    floats = list(map(float, timestamps)) if int in timestamp_types else timestamps
    fields = zip(columns.companies, customer_keys, columns.types, properties_json, floats, columns.command_ids)
    return list(map(_new_event, fields))


_C_ENCODE_PROPERTIES: Any = c_json_encoder()

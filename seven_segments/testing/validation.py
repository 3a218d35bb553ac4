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
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

from ..protocol import COMMAND_ID_RE, MAX_EVENT_TYPE_LENGTH



def _encoder(sort_keys: bool) -> Callable[[Any], str]:
    """A reusable compact JSON encoder refusing NaN / Infinity (``ValueError``), thread-safe.

    The C encoder is built once (``json.dumps`` builds one per call, which costs more than the encoding).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - Python without the C accelerator
        return json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False, sort_keys=sort_keys).encode
    encode = make(None, None, json.encoder.encode_basestring, None, ":", ",", sort_keys, False, False)

    def encode_json(value: Any) -> str:
        if isinstance(value, str):
            return json.encoder.encode_basestring(value)
        return "".join(encode(value, 0))

    return encode_json


#: Compact, strict JSON encoder used both to store values and to detect NaN / Infinity.
_ENCODE = _encoder(sort_keys=False)
#: Canonical encoder for customer id objects (the identity of a customer).
_CANONICAL = _encoder(sort_keys=True)

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


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


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
_INF = float("inf")
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
    elif not (type(timestamp) in _NUMBER_TYPES and 0 <= timestamp < _INF):
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

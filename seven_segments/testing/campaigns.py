"""HTML campaigns of the local server and the small condition language they (and analyses) use.

Campaigns map a name to HTML, optionally shown only when a condition on the customer's merged
properties holds::

    {"Banner left": "<img src=\\"/my-awesome-banner-1.png\\" />",
     "VIP banner": {"html": "<b>VIP</b>", "condition": {"property": "vip", "equals": true}}}

Conditions (JSON objects, exactly one form each):

- ``{"property": P, "equals": V}``: the property exists and equals ``V`` (JSON equality: ``true`` is not ``1``);
- ``{"property": P, "in": [V, ...]}``: the property exists and equals one of the values;
- ``{"property": P, "exists": true|false}``: the property is (or is not) set;
- ``{"all": [C, ...]}``, ``{"any": [C, ...]}``, ``{"not": C}``: combinations.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Union

Source = Union[Mapping[str, Any], str, "os.PathLike[str]", None]


class Campaign(NamedTuple):
    """One HTML campaign: its HTML and an optional condition."""

    html: str
    condition: Optional[Dict[str, Any]]


def load_mapping(source: Source, what: str) -> Dict[str, Any]:
    """A JSON object given as a mapping, or as the path of a JSON file (``None``: empty).

    ``ValueError`` naming the file and the problem when it cannot be read, is not JSON or holds no object.
    """
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"{what} must be a mapping or the path of a JSON file, not {type(source).__name__}")
    path = os.fspath(source)
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = json.load(handle)
    except OSError as error:
        raise ValueError(f"{what} file {path!r} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {path!r} is not UTF-8 text") from None
    except ValueError as error:
        raise ValueError(f"{what} file {path!r} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{what} file {path!r} must hold a JSON object")
    return loaded


def in_file(source: Source, what: str, error: ValueError) -> ValueError:
    """``error`` prefixed with the file it comes from when ``source`` is a path (``what``: campaigns, analyses)."""
    if source is None or isinstance(source, Mapping):
        return error
    return ValueError(f"{what} file {os.fspath(source)!r}: {error}")


def json_equal(left: Any, right: Any) -> bool:
    """Equality of JSON values, telling booleans from numbers."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return type(left) is type(right) and bool(left == right)


def check_condition(condition: Any, where: str = "condition") -> None:
    """Raise ``ValueError`` naming ``where`` if ``condition`` is not a valid condition."""
    if not isinstance(condition, dict):
        raise ValueError(f"{where} must be a JSON object")
    if set(condition) in ({"all"}, {"any"}):
        items = next(iter(condition.values()))
        if not isinstance(items, list):
            raise ValueError(f"{where}.{next(iter(condition))} must be a list of conditions")
        for index, item in enumerate(items):
            check_condition(item, f"{where}.{next(iter(condition))}[{index}]")
        return
    if set(condition) == {"not"}:
        check_condition(condition["not"], f"{where}.not")
        return
    if not isinstance(condition.get("property"), str):
        raise ValueError(f"{where} must have a string 'property' (or be all / any / not)")
    tests = set(condition) - {"property"}
    if len(tests) != 1 or not tests <= {"equals", "in", "exists"}:
        raise ValueError(f"{where} must have exactly one of equals / in / exists")
    if "in" in condition and not isinstance(condition["in"], list):
        raise ValueError(f"{where}.in must be a list")
    if "exists" in condition and not isinstance(condition["exists"], bool):
        raise ValueError(f"{where}.exists must be true or false")


def matches(condition: Optional[Mapping[str, Any]], properties: Mapping[str, Any]) -> bool:
    """Whether ``properties`` satisfy ``condition`` (``None`` always matches)."""
    if condition is None:
        return True
    if "all" in condition:
        return all(matches(item, properties) for item in condition["all"])
    if "any" in condition:
        return any(matches(item, properties) for item in condition["any"])
    if "not" in condition:
        return not matches(condition["not"], properties)
    name = condition["property"]
    if "exists" in condition:
        return (name in properties) == bool(condition["exists"])
    if name not in properties:
        return False
    value = properties[name]
    if "equals" in condition:
        return json_equal(value, condition["equals"])
    return any(json_equal(value, candidate) for candidate in condition["in"])


def load_campaigns(source: Source) -> Dict[str, Campaign]:
    """Campaigns from a mapping or JSON file; ``ValueError`` naming the bad campaign."""
    specs = load_mapping(source, "campaigns")
    try:
        return _check_campaigns(specs)
    except ValueError as error:
        raise in_file(source, "campaigns", error) from None


def _check_campaigns(specs: Mapping[str, Any]) -> Dict[str, Campaign]:
    campaigns: Dict[str, Campaign] = {}
    for name, spec in specs.items():
        if not isinstance(name, str):
            raise ValueError(f"campaign name {name!r} must be a string")
        if isinstance(spec, str):
            campaigns[name] = Campaign(spec, None)
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("html"), str) or set(spec) - {"html", "condition"}:
            raise ValueError(f"campaign {name!r} must be HTML text or an object with html and an optional condition")
        condition = spec.get("condition")
        if condition is not None:
            check_condition(condition, f"campaign {name!r} condition")
        campaigns[name] = Campaign(spec["html"], condition)
    return campaigns

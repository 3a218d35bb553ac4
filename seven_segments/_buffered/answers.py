"""What a ``bulk`` answer means for each command of the batch: a pure reading of its ``results``."""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, List, Optional, Tuple

from ..protocol import RESULT_ERROR, RESULT_OK


def _fast_loads() -> Optional[Callable[[bytes], Any]]:
    """``orjson.loads``, or None when ``orjson`` cannot be imported (it is an extra)."""
    try:
        import orjson
    except ImportError:  # pragma: no cover - depends on the install
        return None
    return orjson.loads


#: Read at each call (a test puts None in place to read as without orjson).
_orjson_loads = _fast_loads()

__all__ = ["ALL_OK", "Verdict", "answer_reader", "decode_answer", "read_results"]


class _AllOk:
    """The ``results`` of an answer that :func:`answer_reader` recognised as "every command applied"."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ALL_OK"


#: The one :class:`_AllOk`: ``read_results`` checks for it by identity.
ALL_OK = _AllOk()


class Verdict:
    """The commands of a batch by result: indexes into the batch."""

    __slots__ = ("ok", "retry", "errors", "all_ok")

    def __init__(self, ok: List[int], retry: List[int], errors: List[Tuple[int, Tuple[str, ...]]], all_ok: bool) -> None:
        self.ok = ok
        self.retry = retry
        self.errors = errors
        self.all_ok = all_ok

    @property
    def progress(self) -> bool:
        """True when at least one command was settled (applied or refused)."""
        return self.all_ok or bool(self.ok) or bool(self.errors)


@functools.lru_cache(maxsize=4)
def _all_ok_spellings(count: int) -> Tuple[bytes, bytes]:
    """The usual answer to ``count`` commands, exactly, as servers write it: compact, and with the
    spaces of Python's ``json.dumps`` defaults."""
    compact = b'{"success":true,"results":[' + b",".join([b'{"status":"ok"}'] * count) + b"]}"
    spaced = b'{"success": true, "results": [' + b", ".join([b'{"status": "ok"}'] * count) + b"]}"
    return compact, spaced


def answer_reader(count: int) -> Callable[[bytes], Any]:
    """Decodes the answer to a bulk request of ``count`` commands.

    An answer that is, byte for byte, the usual "every command applied" (see
    :func:`_all_ok_spellings`) is recognised without decoding 1,000 result objects: its ``results``
    is :data:`ALL_OK`. Anything else is decoded as JSON (see :func:`decode_answer`) and read entry
    by entry.
    """

    def read(content: bytes) -> Any:
        if content in _all_ok_spellings(count):
            return {"success": True, "results": ALL_OK}
        return decode_answer(content)

    return read


def decode_answer(content: bytes) -> Any:
    """The JSON value of an answer's body, as ``json.loads`` reads it; ``ValueError`` when it is not JSON.

    ``orjson`` reads it when installed (a server that spells the usual answer its own way sends
    1,000 result objects per request). What ``orjson`` refuses, ``json.loads`` reads or refuses as
    before (``NaN``, a lone surrogate escaped, UTF-16), so the value is the same either way.
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(content)
        except ValueError:
            pass
    return json.loads(content)


def read_results(results: Any, count: int) -> Verdict:
    """Read ``results`` of a success answer for a batch of ``count`` commands.

    ``ok`` is applied (or a duplicate); ``error`` refused for good (with the server's reasons);
    ``retry``, an unknown status, a malformed entry or a missing one mean "send it again".
    """
    if results is ALL_OK:
        return Verdict([], [], [], True)
    if not isinstance(results, list):
        results = []
    if len(results) == count and [
        result.get("status") if type(result) is dict else None for result in results
    ].count(RESULT_OK) == count:
        return Verdict([], [], [], True)  # the usual answer, read with C-level builtins
    ok: List[int] = []
    retry: List[int] = []
    errors: List[Tuple[int, Tuple[str, ...]]] = []
    for index in range(count):
        result = results[index] if index < len(results) else None
        status = result.get("status") if isinstance(result, dict) else None
        if status == RESULT_OK:
            ok.append(index)
        elif status == RESULT_ERROR:
            reasons = result.get("errors") if isinstance(result, dict) else None
            errors.append((index, tuple(str(reason) for reason in reasons) if isinstance(reasons, list) else ()))
        else:
            retry.append(index)
    return Verdict(ok, retry, errors, False)

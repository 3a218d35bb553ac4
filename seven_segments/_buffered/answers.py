"""What a ``bulk`` answer means for each command of the batch: a pure reading of its ``results``."""

from __future__ import annotations

from typing import Any, List, Tuple

from ..protocol import RESULT_ERROR, RESULT_OK

__all__ = ["Verdict", "read_results"]


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


def read_results(results: Any, count: int) -> Verdict:
    """Read ``results`` of a success answer for a batch of ``count`` commands.

    ``ok`` is applied (or a duplicate); ``error`` refused for good (with the server's reasons);
    ``retry``, an unknown status, a malformed entry or a missing one mean "send it again".
    """
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

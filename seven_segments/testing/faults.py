"""Fault injection for the local server: failing, slow and dropped requests, and per-command results.

Request faults wait in one FIFO queue; every POST to an API path (never to ``/_local/``) takes the next
one. ``fail_next(2); delay_next(1, 0.1)`` therefore fails two requests and delays the third.
Command faults (``command_results``) are a second queue taken by ``bulk`` commands, one per command.
When both queues are empty and a random fault rate is set, each API request draws a fault with
that probability from a seeded generator (deterministic for a given sequence of requests).
"""

from __future__ import annotations

import random as _random
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

#: Kinds of request fault.
STATUS = "status"
DELAY = "delay"
DROP_BEFORE = "drop_before"
DROP_AFTER = "drop_after"
TRICKLE = "trickle"
REDIRECT = "redirect"
#: Per-command fault kinds (bulk only).
COMMAND_RETRY = "command_retry"
COMMAND_ERROR = "command_error"

#: What ``random()`` mixes by default.
RANDOM_KINDS = ("500", "503", "429", DROP_BEFORE, DROP_AFTER, COMMAND_RETRY)

RetryAfter = Union[float, int, str, None]


class RequestFault:
    """One injected request fault: ``kind`` plus ``status``/``retry_after``, ``seconds`` or ``location``.

    For the ``command_retry`` kind (random faults only), ``retry_fraction`` of the bulk request's
    commands, chosen by ``rng``, answer ``retry``.
    """

    def __init__(
        self,
        kind: str,
        status: int = 503,
        retry_after: RetryAfter = None,
        seconds: float = 0.0,
        rng: Optional[_random.Random] = None,
        location: Optional[str] = None,
    ) -> None:
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.seconds = seconds
        self.rng = rng
        self.location = location

    def __repr__(self) -> str:
        where = f", location={self.location!r}" if self.location is not None else ""
        return (f"RequestFault({self.kind!r}, status={self.status}, retry_after={self.retry_after!r},"
                f" seconds={self.seconds}{where})")

    def describe(self) -> Dict[str, Any]:
        """JSON-friendly description."""
        described: Dict[str, Any] = {"kind": self.kind, "status": self.status, "retry_after": self.retry_after, "seconds": self.seconds}
        if self.location is not None:
            described["location"] = self.location
        return described


def format_retry_after(value: RetryAfter) -> Optional[str]:
    """The ``Retry-After`` header text: whole seconds as an integer, fractions as a decimal, strings verbatim."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Faults:
    """Thread-safe fault plan of one :class:`~seven_segments.testing.LocalServer` (``server.faults``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Deque[RequestFault] = deque()
        self._commands: Deque[str] = deque()
        self._rate = 0.0
        self._rng = _random.Random(0)
        self._random_retry_after: RetryAfter = 0.0
        self._random_kinds: Sequence[str] = RANDOM_KINDS
        self.injected: Dict[str, int] = {}

    # -- planning ----------------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 503, retry_after: RetryAfter = None) -> None:
        """The next ``n`` API requests answer ``status`` (with ``Retry-After`` when given), applying nothing."""
        self._add(n, RequestFault(STATUS, status=int(status), retry_after=retry_after))

    def delay_next(self, n: int = 1, seconds: float = 0.1) -> None:
        """The next ``n`` API requests wait ``seconds`` before being handled normally."""
        self._add(n, RequestFault(DELAY, seconds=float(seconds)))

    def trickle_next(self, n: int = 1, seconds: float = 0.2) -> None:
        """The next ``n`` API requests are applied, then answered one byte every ``seconds``.

        A server that trickles: each byte comes well within a per-read timeout, the whole answer
        takes far longer. (Stopping the server, or the client hanging up, ends the trickle.)
        """
        self._add(n, RequestFault(TRICKLE, seconds=float(seconds)))

    def drop_next(self, n: int = 1, after_apply: bool = False) -> None:
        """The next ``n`` API requests get their connection closed without any answer.

        With ``after_apply`` the request is applied first (events are stored), then dropped.
        """
        self._add(n, RequestFault(DROP_AFTER if after_apply else DROP_BEFORE))

    def redirect_next(self, n: int = 1, location: str = "", status: int = 307) -> None:
        """The next ``n`` API requests answer ``status`` (a 3xx) with ``Location: <location><path>``,
        applying nothing: the request's path and query (``/analytics/funnel?company=...``) appended
        to ``location`` (such as ``http://127.0.0.1:8081``), as an API moved to another host
        answers. The protocol has no redirects: a client must not follow one."""
        if not isinstance(status, int) or isinstance(status, bool) or not 300 <= status <= 399:
            raise ValueError(f"status must be a redirect status from 300 to 399, not {status!r}")
        if not isinstance(location, str) or not location.startswith(("http://", "https://")):
            raise ValueError(f"location must be an http:// or https:// URL, not {location!r}")
        self._add(n, RequestFault(REDIRECT, status=status, location=location.rstrip("/")))

    def command_results(self, n: int = 1, result: str = "retry") -> None:
        """The next ``n`` bulk commands answer ``result`` (``"retry"`` or ``"error"``) and are not applied."""
        if result not in ("retry", "error"):
            raise ValueError(f"result must be 'retry' or 'error', not {result!r}")
        self._check_n(n)
        with self._lock:
            self._commands.extend([COMMAND_RETRY if result == "retry" else COMMAND_ERROR] * n)

    def random(
        self,
        rate: float,
        seed: int = 0,
        retry_after: RetryAfter = 0.0,
        kinds: Optional[Sequence[str]] = None,
    ) -> None:
        """Give every API request probability ``rate`` of a random fault (``rate=0`` turns it off).

        The mix (``kinds``, default all) is ``"500"``, ``"503"``, ``"429"`` (with ``Retry-After:
        retry_after``), ``"drop_before"``, ``"drop_after"`` and ``"command_retry"`` (half of a bulk
        request's commands answer ``retry``; a non-bulk request draws another kind instead).
        """
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, not {rate!r}")
        chosen = tuple(kinds) if kinds is not None else RANDOM_KINDS
        unknown = [kind for kind in chosen if kind not in RANDOM_KINDS]
        if unknown or not chosen:
            raise ValueError(f"kinds must be a non-empty selection of {RANDOM_KINDS}, not {list(chosen)!r}")
        with self._lock:
            self._rate = float(rate)
            self._rng = _random.Random(seed)
            self._random_retry_after = retry_after
            self._random_kinds = chosen

    def clear(self) -> None:
        """Drop every planned fault and turn random faults off (the ``injected`` counts stay)."""
        with self._lock:
            self._requests.clear()
            self._commands.clear()
            self._rate = 0.0

    def reset(self) -> None:
        """``clear()`` and forget the ``injected`` counts."""
        with self._lock:
            self._requests.clear()
            self._commands.clear()
            self._rate = 0.0
            self.injected = {}

    def pending(self) -> Dict[str, Any]:
        """What is planned: queued request faults, queued command results, random rate."""
        with self._lock:
            return {
                "requests": [fault.describe() for fault in self._requests],
                "commands": [kind.replace("command_", "") for kind in self._commands],
                "random_rate": self._rate,
            }

    def apply_json(self, spec: Any) -> None:
        """Plan faults from JSON: ``{"action": "fail_next", "n": 2, "status": 503}``, or a list of such.

        ``action`` is one of ``fail_next``, ``delay_next``, ``drop_next``, ``redirect_next``,
        ``command_results``, ``random``, ``clear``; the other keys are the method's keyword arguments. ``ValueError`` or
        ``TypeError`` when invalid.
        """
        specs = spec if isinstance(spec, list) else [spec]
        methods: Dict[str, Callable[..., None]] = {
            "fail_next": self.fail_next,
            "delay_next": self.delay_next,
            "drop_next": self.drop_next,
            "redirect_next": self.redirect_next,
            "command_results": self.command_results,
            "random": self.random,
            "clear": self.clear,
        }
        for item in specs:
            if not isinstance(item, dict) or item.get("action") not in methods:
                raise ValueError(f"each fault must be an object with action one of {sorted(methods)}")
            kwargs = {key: value for key, value in item.items() if key != "action"}
            methods[item["action"]](**kwargs)

    # -- taking ------------------------------------------------------------------------------------

    def take_request(self, is_bulk: bool) -> Optional[RequestFault]:
        """The fault for the API request being handled now, or ``None``."""
        with self._lock:
            if self._requests:
                fault = self._requests.popleft()
            elif self._rate > 0.0 and self._rng.random() < self._rate:
                fault = self._draw(is_bulk)
            else:
                return None
            self._count(fault.kind)
            return fault

    def commands_faulted(self, fault: Optional[RequestFault]) -> bool:
        """Whether some command of a bulk request taking request fault ``fault`` may get a command fault."""
        return bool(self._commands) or (fault is not None and fault.kind == COMMAND_RETRY)

    def take_commands(self, count: int, fault: Optional[RequestFault]) -> List[Optional[str]]:
        """Per-command faults for the ``count`` commands of one bulk request (``None``: no fault)."""
        result: List[Optional[str]] = [None] * count
        with self._lock:
            if not self.commands_faulted(fault):
                return result
            for index in range(count):
                if self._commands:
                    result[index] = self._commands.popleft()
                elif fault is not None and fault.kind == COMMAND_RETRY and fault.rng is not None:
                    if fault.rng.random() < 0.5:
                        result[index] = COMMAND_RETRY
                if result[index] is not None and (fault is None or fault.kind != COMMAND_RETRY):
                    self._count(str(result[index]))
        return result

    def _draw(self, is_bulk: bool) -> RequestFault:
        kinds = [kind for kind in self._random_kinds if is_bulk or kind != COMMAND_RETRY]
        if not kinds:
            kinds = ["503"]
        kind = self._rng.choice(kinds)
        if kind == "429":
            return RequestFault(STATUS, status=429, retry_after=self._random_retry_after)
        if kind in ("500", "503"):
            return RequestFault(STATUS, status=int(kind))
        if kind == COMMAND_RETRY:
            return RequestFault(COMMAND_RETRY, rng=_random.Random(self._rng.random()))
        return RequestFault(kind)

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    def _add(self, n: int, fault: RequestFault) -> None:
        self._check_n(n)
        with self._lock:
            self._requests.extend([fault] * n)

    @staticmethod
    def _check_n(n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"n must be a non-negative integer, not {n!r}")

    def total_injected(self) -> int:
        """How many faults were injected since start or reset (request faults plus command faults)."""
        with self._lock:
            return sum(self.injected.values())

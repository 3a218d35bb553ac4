"""What the local server keeps about the requests it answered: the recent requests themselves (for
``LocalServer.requests()``) and the counters of ``stats()``, under one lock."""

from __future__ import annotations

import collections
import json
import threading
from typing import Deque, List, Mapping, Optional

from ..protocol import MAX_BULK_BYTES, RESULT_ERROR, RESULT_OK, RESULT_RETRY
from .wire import Exchange, JSONDict, Refusal, basic_credentials, gunzip

__all__ = ["Recorder", "DEFAULT_MAX_RECORDED", "MAX_RECORDED_BYTES"]

#: How many requests ``requests()`` keeps (the most recent).
DEFAULT_MAX_RECORDED = 10_000
#: At most this many body bytes (as received) are kept for ``requests()``.
MAX_RECORDED_BYTES = 64 * 1024 * 1024


def _fresh_counters() -> JSONDict:
    return {
        "requests": 0,
        "bulk_requests": 0,
        "statuses": {},
        "commands": {RESULT_OK: 0, RESULT_RETRY: 0, RESULT_ERROR: 0},
        "tls_refused": 0,
    }


class Recorder:
    """The recent requests (at most ``max_requests``, their bodies at most ``MAX_RECORDED_BYTES``;
    none with ``keep=False``) and the request counters."""

    def __init__(self, max_requests: int, keep: bool = True) -> None:
        #: How many requests are kept at most (the most recent).
        self.max_requests = max_requests
        self._keep = keep
        self._lock = threading.Lock()
        self._recorded: Deque[JSONDict] = collections.deque()
        self._recorded_bytes = 0
        self._counters = _fresh_counters()

    def record(
        self, exchange: Exchange, path: str, query: str, raw: bytes, gzipped: bool, received: float
    ) -> Optional[JSONDict]:
        """Keep one API request (its ``Authorization`` value redacted); the record, whose ``status``
        the caller sets once it is known, or None when nothing is kept."""
        if not self._keep:
            return None
        headers = {}
        user: Optional[str] = None
        for name, value in exchange.headers.items():
            if name.lower() == "authorization":
                scheme = value.split(" ", 1)[0]
                user = basic_credentials(value)[0] if scheme.lower() == "basic" else None
                value = f"{scheme} <redacted>"
            headers[name] = value
        record: JSONDict = {
            "method": exchange.command,
            "path": path + ("?" + query if query else ""),
            "headers": headers,
            "user": user,
            "raw": raw,
            "gzipped": gzipped,
            "status": None,
            "time": received,
        }
        with self._lock:
            self._recorded.append(record)
            self._recorded_bytes += len(raw)
            while self._recorded and (
                len(self._recorded) > self.max_requests or self._recorded_bytes > MAX_RECORDED_BYTES
            ):
                self._recorded_bytes -= len(self._recorded.popleft()["raw"])
        return record

    def requests(self) -> List[JSONDict]:
        """The kept requests, oldest first, each with its body decoded (``None`` if not JSON)."""
        with self._lock:
            records = [dict(record) for record in self._recorded]
        for record in records:
            raw = record.pop("raw")
            try:
                text = gunzip(raw, MAX_BULK_BYTES) if record["gzipped"] else raw
                record["body"] = json.loads(text.decode("utf-8")) if text else None
            except (Refusal, ValueError):
                record["body"] = None
        return records

    def counters(self) -> JSONDict:
        """A copy of the counters: requests, bulk_requests, statuses, commands, tls_refused."""
        with self._lock:
            counters: JSONDict = dict(self._counters)
            counters["statuses"] = dict(counters["statuses"])
            counters["commands"] = dict(counters["commands"])
        return counters

    def count_request(self, bulk: bool) -> None:
        """One more API request (a ``bulk`` one with ``bulk``)."""
        with self._lock:
            self._counters["requests"] += 1
            if bulk:
                self._counters["bulk_requests"] += 1

    def count(self, status: Optional[int], results: Optional[Mapping[str, int]] = None) -> None:
        """One more answer with ``status`` (``None``: dropped), and the results of its commands."""
        with self._lock:
            key = "dropped" if status is None else str(status)
            self._counters["statuses"][key] = self._counters["statuses"].get(key, 0) + 1
            if results:
                commands = self._counters["commands"]
                for result, count in results.items():
                    commands[result] += count

    def count_refused_handshake(self) -> None:
        """One more TLS handshake that failed."""
        with self._lock:
            self._counters["tls_refused"] += 1

    def reset(self) -> None:
        """Forget the kept requests and the counters."""
        with self._lock:
            self._recorded.clear()
            self._recorded_bytes = 0
            self._counters = _fresh_counters()

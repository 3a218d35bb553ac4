"""The ``/_local/`` side of the local server: inspection and control over HTTP (never delayed,
faulted nor recorded). ``GET /_local/`` lists the routes (:data:`INDEX`)."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple
from urllib.parse import parse_qs

from ..protocol import MAX_BULK_BYTES
from .faults import Faults
from .wire import Exchange, JSONDict, Refusal, gunzip, refuse

__all__ = ["LocalRoutes", "LOCAL", "INDEX", "INDEX_PATHS"]

LOCAL = "/_local/"

#: ``GET /`` and ``GET /_local/``: what this server answers (never delayed, faulted nor recorded).
INDEX_PATHS = frozenset(("/", "/_local", "/_local/"))
INDEX: JSONDict = {
    "success": True,
    "server": "seven-segments local 7SEGMENTS server",
    "docs": "docs/local-server.md",
    "api": [
        "POST /crm/events", "POST /crm/customers", "POST /campaigns/html/get", "POST /bulk",
        "POST /analytics/{funnel,report,retention,segmentation}",
    ],
    "local": {
        "GET /_local/": "this index",
        "GET /_local/events[?company=TOKEN]": "stored events, in arrival order",
        "GET /_local/customers[?company=TOKEN]": "known customers with merged properties",
        "GET /_local/requests": "recorded API requests, oldest first",
        "GET /_local/stats": "counters",
        "GET /_local/wait_for_events?n=N&timeout=S": "wait until N events are stored",
        "GET /_local/faults": "planned faults",
        "POST /_local/faults": "plan faults: {\"action\": \"fail_next\", \"n\": 2, \"status\": 503} or a list",
        "GET /_local/latency": "seconds every API answer waits",
        "POST /_local/latency": "set it: {\"seconds\": 0.05}",
        "POST /_local/reset": "forget data, counters and faults",
    },
}

_Params = Dict[str, List[str]]
#: A route: the query's parameters, the body and the exchange -> the JSON answer (status 200).
_Route = Callable[[_Params, bytes, Exchange], Mapping[str, Any]]


class Inspected(Protocol):
    """What the routes inspect and control: the ``LocalServer``."""

    faults: Faults
    latency: float

    def events(self, company_id: Optional[str] = None) -> List[JSONDict]:
        """Stored events."""

    def customers(self, company_id: Optional[str] = None) -> List[JSONDict]:
        """Known customers."""

    def requests(self) -> List[JSONDict]:
        """Recorded requests."""

    def stats(self) -> JSONDict:
        """Counters."""

    def reset(self) -> None:
        """Forget everything."""

    def wait_for_events(self, n: int, timeout: Optional[float] = 5.0) -> bool:
        """Wait until ``n`` events are stored."""


class LocalRoutes:
    """Answers ``/_local/...``: a route per (method, name); 405 for a known name with another method."""

    def __init__(self, server: Inspected) -> None:
        self._server = server
        self._routes: Dict[Tuple[str, str], _Route] = {
            ("GET", ""): lambda params, raw, exchange: INDEX,
            ("HEAD", ""): lambda params, raw, exchange: INDEX,
            ("GET", "events"): lambda params, raw, exchange: {"events": server.events(_company(params))},
            ("GET", "customers"): lambda params, raw, exchange: {"customers": server.customers(_company(params))},
            ("GET", "requests"): lambda params, raw, exchange: {"requests": server.requests()},
            ("GET", "stats"): lambda params, raw, exchange: {"stats": server.stats()},
            ("GET", "faults"): lambda params, raw, exchange: {"faults": server.faults.pending()},
            ("GET", "latency"): lambda params, raw, exchange: {"latency": server.latency},
            ("GET", "wait_for_events"): self._wait_for_events,
            ("POST", "latency"): self._set_latency,
            ("POST", "reset"): self._reset,
            ("POST", "faults"): self._plan_faults,
        }

    def handle(self, exchange: Exchange, path: str, query: str) -> int:
        """Answer one request for ``path`` (which starts with ``/_local/``); the status sent."""
        name = path[len(LOCAL):]
        try:
            raw = exchange.read_raw_body()
            route = self._routes.get((exchange.command, name))
            if route is None:
                if any(known == name for _, known in self._routes):
                    raise Refusal(405, [f"{path} does not accept {exchange.command}"])
                raise Refusal(404, [f"unknown path {path}"])
            answer = route(parse_qs(query), raw, exchange)
            exchange.send_json(200, answer if answer is INDEX else {"success": True, **answer})
            return 200
        except Refusal as refusal:
            return refuse(exchange, refusal)

    def _wait_for_events(self, params: _Params, raw: bytes, exchange: Exchange) -> JSONDict:
        try:
            n = int(params.get("n", ["1"])[-1])
            timeout = float(params.get("timeout", ["5"])[-1])
        except ValueError:
            raise Refusal(400, ["n must be an integer and timeout a number"]) from None
        reached = self._server.wait_for_events(n, min(timeout, 60.0))
        return {"reached": reached, "events": self._server.stats()["events"]}

    def _set_latency(self, params: _Params, raw: bytes, exchange: Exchange) -> JSONDict:
        try:
            self._server.latency = json.loads(raw.decode("utf-8") or "null").get("seconds")
        except (ValueError, AttributeError) as error:
            raise Refusal(400, [f'the body must be {{"seconds": S}}: {error}']) from None
        return {"latency": self._server.latency}

    def _reset(self, params: _Params, raw: bytes, exchange: Exchange) -> JSONDict:
        self._server.reset()
        return {}

    def _plan_faults(self, params: _Params, raw: bytes, exchange: Exchange) -> JSONDict:
        try:
            gzipped = "gzip" in exchange.headers.get("Content-Encoding", "").lower()
            spec = json.loads(gunzip(raw, MAX_BULK_BYTES) if gzipped else raw.decode("utf-8"))
            self._server.faults.apply_json(spec)
        except (ValueError, TypeError) as error:
            raise Refusal(400, [f"invalid fault: {error}"]) from None
        return {"faults": self._server.faults.pending()}


def _company(params: _Params) -> Optional[str]:
    return params.get("company", [None])[-1]

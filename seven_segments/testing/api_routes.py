"""The API side of the local server: ``/crm/events``, ``/crm/customers``, ``/campaigns/html/get``,
``/bulk`` and ``/analytics/{type}``, with the planned faults, recording and counting of each request."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs

from ..protocol import (
    ANALYSIS_TYPES,
    MAX_BULK_BYTES,
    MAX_BULK_COMMANDS,
    MAX_COMMAND_BYTES,
    PATH_ANALYTICS_PREFIX,
    PATH_BULK,
    PATH_CUSTOMERS,
    PATH_EVENTS,
    PATH_HTML,
    RESULT_ERROR,
    RESULT_OK,
    RESULT_RETRY,
)
from ..serialization import escapes_lone_surrogate
from . import analyses as _analyses
from .campaigns import matches
from .faults import (
    COMMAND_ERROR,
    COMMAND_RETRY,
    DELAY,
    DROP_AFTER,
    DROP_BEFORE,
    REDIRECT,
    STATUS,
    TRICKLE,
    Faults,
    RequestFault,
    format_retry_after,
)
from .recording import Recorder
from .settings import Settings
from .store import Command, Store
from .validation import (
    CustomerUpdate,
    EventRow,
    HtmlRequest,
    command_size,
    split_command,
    validate_customer,
    validate_event,
    validate_event_bulk,
    validate_html,
)
from .wire import Drop, Encoded, Exchange, JSONDict, Refusal, all_ok, basic_credentials, gunzip, refuse

__all__ = ["ApiRoutes", "API_PATHS", "ANALYTICS"]

_EVENTS = "/" + PATH_EVENTS
_CUSTOMERS = "/" + PATH_CUSTOMERS
_HTML = "/" + PATH_HTML
_BULK = "/" + PATH_BULK
#: The API paths (as requested, with the leading slash), and the prefix of the analyses'.
API_PATHS = frozenset((_EVENTS, _CUSTOMERS, _HTML, _BULK))
ANALYTICS = "/" + PATH_ANALYTICS_PREFIX

_TOKEN_ERROR = "company_id is not a known company token"

#: What ``validate_*`` made of one command of a bulk: the row to store, or why it is refused.
_Validated = Union[EventRow, CustomerUpdate, List[str]]


class ApiRoutes:
    """Answers the API's requests: planned faults first, then validation, storage and the answer;
    each request is recorded (its status once known) and counted before it is answered."""

    def __init__(
        self, settings: Settings, store: Store, faults: Faults, recorder: Recorder, stopping: threading.Event,
        counting_only: bool,
    ) -> None:
        self._settings = settings
        self._store = store
        self._faults = faults
        self._recorder = recorder
        self._stopping = stopping
        self._counting_only = counting_only

    def handle(self, handler: Exchange, path: str, query: str) -> Optional[int]:
        """Answer one API request; the status sent (``Drop`` raised when the connection is to be dropped)."""
        self._recorder.count_request(path == _BULK)
        if handler.command != "POST":
            self._recorder.count(405)
            return refuse(handler, Refusal(405, [f"{path} accepts POST only"], {"Allow": "POST"}), drain=True)
        record: Optional[JSONDict] = None
        received = time.time()
        fault: Optional[RequestFault] = None
        status: Optional[int] = None
        results: Dict[str, int] = {}
        counted = False
        try:
            try:
                raw = handler.read_raw_body()
                gzipped = "gzip" in handler.headers.get("Content-Encoding", "").lower()
                record = self._recorder.record(handler, path, query, raw, gzipped, received)
                fault = self._faults.take_request(path == _BULK)
                if fault is not None:
                    self._pre_fault(fault, handler.path)
                body, size = _decode(handler, raw, MAX_BULK_BYTES if path == _BULK else MAX_COMMAND_BYTES)
                answer, extra_headers = self._process(handler, path, query, body, size, received, fault, results)
                status = 200
            except Refusal as refusal:
                status = refusal.status
                answer, extra_headers = {"success": False, "errors": refusal.errors}, refusal.headers
            if fault is not None and fault.kind == DROP_AFTER:
                raise Drop()
            if record is not None:
                record["status"] = status
            # Count before answering, so that a client reading stats() after the answer sees it.
            self._recorder.count(status, results)
            counted = True
            if fault is not None and fault.kind == TRICKLE:
                handler.trickle = (self._stopping, fault.seconds)
            handler.send_json(status, answer, extra_headers)
            return status
        except Drop:
            status = None
            raise
        finally:
            if not counted:
                self._recorder.count(status, results)  # before the handler drops the connection

    def _pre_fault(self, fault: RequestFault, target: str) -> None:
        if fault.kind == REDIRECT:
            raise Refusal(
                fault.status, [f"injected fault: HTTP {fault.status} redirect"], {"Location": f"{fault.location}{target}"}
            )
        if fault.kind == STATUS:
            retry_after = format_retry_after(fault.retry_after)
            raise Refusal(
                fault.status,
                [f"injected fault: HTTP {fault.status}"],
                {"Retry-After": retry_after} if retry_after is not None else None,
            )
        if fault.kind == DELAY:
            if self._stopping.wait(fault.seconds):
                raise Drop()  # stopped while delaying: go away without applying
        elif fault.kind == DROP_BEFORE:
            raise Drop()

    def _process(
        self,
        handler: Exchange,
        path: str,
        query: str,
        body: JSONDict,
        size: int,
        received: float,
        fault: Optional[RequestFault],
        results: Dict[str, int],
    ) -> Tuple[Union[JSONDict, Encoded], Optional[Dict[str, str]]]:
        if path == _BULK:
            return self._bulk(body, size, received, fault, results), None
        if path == _EVENTS or path == _CUSTOMERS:
            command = validate_event(body, received) if path == _EVENTS else validate_customer(body, received)
            if isinstance(command, list):
                results[RESULT_ERROR] = 1
                raise Refusal(400, command)
            if not self._settings.token_ok(command.company_id):
                results[RESULT_ERROR] = 1
                raise Refusal(401, [_TOKEN_ERROR])
            self._store.apply([command])
            results[RESULT_OK] = 1
            return {"success": True}, None
        if path == _HTML:
            return self._html(body), None
        return self._analytics(handler, path[len(ANALYTICS):], query, body), None

    def _bulk(
        self, body: JSONDict, size: int, received: float, fault: Optional[RequestFault], counts: Dict[str, int]
    ) -> Union[JSONDict, Encoded]:
        commands = _bulk_commands(body)
        tokens = self._settings.tokens
        if not self._faults.commands_faulted(fault):
            # The usual bulk, all valid events, checked as a whole; anything else command by command below.
            batch = validate_event_bulk(commands, received, size, rows=not self._counting_only)
            if batch is not None and (tokens is None or batch.companies <= tokens):
                self._store.apply_events(batch.keys, batch.rows)
                counts[RESULT_OK] = len(commands)
                return all_ok(len(commands))
        validated = [_validate_command(command, received) for command in commands]
        if size > MAX_COMMAND_BYTES:
            _check_command_sizes(commands, validated)
        injected = self._faults.take_commands(len(commands), fault)
        results: List[JSONDict] = []
        valid: List[Command] = []
        ok = {"status": RESULT_OK}
        for index, item in enumerate(validated):
            kind = injected[index]
            if kind == COMMAND_RETRY:
                results.append({"status": RESULT_RETRY})
            elif kind == COMMAND_ERROR:
                results.append({"status": RESULT_ERROR, "errors": ["injected fault: command refused"]})
            elif type(item) is list:
                results.append({"status": RESULT_ERROR, "errors": item})
            elif tokens is not None and item.company_id not in tokens:  # type: ignore[union-attr]
                results.append({"status": RESULT_ERROR, "errors": [_TOKEN_ERROR]})
            else:
                valid.append(item)  # type: ignore[arg-type]
                results.append(ok)
        self._store.apply(valid)
        for result in results:
            status = result["status"]
            counts[status] = counts.get(status, 0) + 1
        return {"success": True, "results": results}

    def _html(self, body: JSONDict) -> JSONDict:
        request = validate_html(body)
        if isinstance(request, list):
            raise Refusal(400, request)
        assert isinstance(request, HtmlRequest)
        if not self._settings.token_ok(request.company_id):
            raise Refusal(401, [_TOKEN_ERROR])
        campaign = self._settings.campaigns.get(request.campaign)
        if campaign is None:
            raise Refusal(404, [f"no campaign named {request.campaign!r}"])
        if campaign.condition is not None:
            properties = self._store.customer_properties(request.company_id, request.customer_key)
            if not matches(campaign.condition, properties):
                return {"success": True, "data": ""}
        return {"success": True, "data": campaign.html}

    def _analytics(self, handler: Exchange, analysis_type: str, query: str, body: JSONDict) -> JSONDict:
        if analysis_type not in ANALYSIS_TYPES:
            raise Refusal(404, [f"unknown analysis type {analysis_type!r}; one of {sorted(ANALYSIS_TYPES)}"])
        name, password = basic_credentials(handler.headers.get("Authorization", ""))
        if name is None or not self._settings.user_ok(name, password or ""):
            raise Refusal(
                401, ["HTTP Basic credentials of an export API user are required" if name is None
                      else "the username or password is not that of an export API user"],
                {"WWW-Authenticate": 'Basic realm="7SEGMENTS export API", charset="UTF-8"'},
            )
        analysis_id = body.get("analysis_id")
        if not isinstance(analysis_id, str) or not analysis_id:
            raise Refusal(400, ["analysis_id must be a non-empty string"])
        analysis = self._settings.analyses.get(analysis_id)
        if analysis is None or analysis["type"] != analysis_type:
            raise Refusal(404, [f"no {analysis_type} analysis with id {analysis_id!r}"])
        company = self._pick_company(parse_qs(query).get("company", []))
        result = _analyses.compute(analysis, self._store, company)
        answer: JSONDict = {"success": True}
        answer.update(result)
        return answer

    def _pick_company(self, given: List[str]) -> str:
        tokens = self._settings.tokens
        if given:
            company = given[-1]
            if not company:
                raise Refusal(400, ["company must be a non-empty company token"])
            if tokens is not None and company not in tokens:
                raise Refusal(403, ["this user has no access to that company"])
            return company
        choices = sorted(tokens) if tokens is not None else self._store.companies()
        if len(choices) == 1:
            return choices[0]
        if not choices:
            return ""
        raise Refusal(400, [f"this user can reach {len(choices)} companies; pick one with ?company=TOKEN"])


def _decode(handler: Exchange, raw: bytes, limit: int) -> Tuple[JSONDict, int]:
    """The JSON object of the body (after gunzip) and its uncompressed size; refusals as ``Refusal``."""
    content_type = handler.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise Refusal(400, ["Content-Type must be application/json"])
    encoding = handler.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "gzip":
        raw = gunzip(raw, limit)
    elif encoding not in ("identity", ""):
        raise Refusal(400, [f"Content-Encoding {encoding} is not supported (use gzip or none)"])
    if len(raw) > limit:
        raise Refusal(413, [f"the body is {len(raw)} bytes, more than {limit}"])
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refusal(400, ["the body is not UTF-8"]) from None
    except ValueError as error:
        raise Refusal(400, [f"the body is not valid JSON: {error}"]) from None
    if not isinstance(body, dict):
        raise Refusal(400, ["the body must be a JSON object"])
    if escapes_lone_surrogate(raw, body):  # neither stored nor measured as UTF-8
        raise Refusal(400, ["the body holds an escaped lone surrogate (\\ud800 to \\udfff), which is not text"])
    return body, len(raw)


def _bulk_commands(body: JSONDict) -> List[Any]:
    """The commands of a bulk body; a ``Refusal`` when the body is not one."""
    commands = body.get("commands")
    if not isinstance(commands, list):
        raise Refusal(400, ["the body must be a JSON object with a commands list"])
    extra = sorted(set(body) - {"commands"})
    if extra:
        raise Refusal(400, [f"{name} is not a known field of a bulk body" for name in extra])
    if len(commands) > MAX_BULK_COMMANDS:
        raise Refusal(413, [f"a bulk request holds at most {MAX_BULK_COMMANDS} commands, not {len(commands)}"])
    return commands


def _validate_command(command: Any, received: float) -> _Validated:
    """One command of a bulk, validated: its row, or why it is refused."""
    # Fast path for the usual shape; split_command reports anything else.
    errors: List[str]
    if type(command) is dict and len(command) == 2 and "data" in command:
        name, data, errors = command.get("name"), command["data"], []
    else:
        name, data, errors = split_command(command)
    if errors:
        return errors
    if name == PATH_EVENTS:
        return validate_event(data, received)
    if name == PATH_CUSTOMERS:
        return validate_customer(data, received)
    return [f"name must be {PATH_EVENTS} or {PATH_CUSTOMERS}"]


def _check_command_sizes(commands: List[Any], validated: List[_Validated]) -> None:
    """413 if any command's data is over ``MAX_COMMAND_BYTES`` as JSON (exact size only when it may be)."""
    for index, item in enumerate(validated):
        # At most 4 bytes per character of JSON text in UTF-8, 6 per character of a raw string (\u0000),
        # plus the other fields' names, syntax, command_id and timestamp.
        if isinstance(item, EventRow):
            estimate = 4 * (len(item.properties_json) + len(item.customer_key))
            estimate += 6 * (len(item.type) + len(item.company_id))
        elif isinstance(item, CustomerUpdate):
            estimate = 4 * sum(len(value) for value in item.properties.values())
            estimate += 6 * sum(len(key) + 1 for key in item.properties) + 4 * len(item.customer_key)
            estimate += 6 * len(item.company_id)
        else:
            estimate = MAX_COMMAND_BYTES  # refused anyway: measure exactly
        if estimate + 512 > MAX_COMMAND_BYTES:
            command = commands[index]
            if isinstance(command, dict) and "data" in command:
                size = command_size(command["data"])
                if size > MAX_COMMAND_BYTES:
                    raise Refusal(
                        413, [f"commands[{index}].data is {size} bytes as JSON, more than {MAX_COMMAND_BYTES}"]
                    )

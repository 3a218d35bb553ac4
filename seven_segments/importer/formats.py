"""The line formats of ``seven-segments import``: JSON Lines and CSV, each line to one tracking call.

A line becomes a :class:`Call`: ``track`` or ``update`` with the arguments the client checks. This
module checks only the line's *shape* (a JSON object, known keys, a customer, a timestamp); the
values are checked by the client itself, inside ``track``/``update``, so that a line is refused for
exactly the reasons (and with the messages) a call in code would be.

JSON Lines, one command a line::

    {"type": "purchase", "customer": "john123", "properties": {"amount": 5}, "timestamp": 1700000000}
    {"update": {"first_name": "John"}, "customer": {"registered": "john123"}, "timestamp": "2023-11-14T22:13:20Z"}

A line with ``"type"`` is an event (``properties`` optional), a line with ``"update"`` (an object of
customer properties) is a customer update; both take ``customer`` (a registered id, or an object of
id types to ids), ``timestamp`` (seconds since the epoch, or ISO 8601 text with a time zone) and,
optionally, ``command_id``. Other keys are refused, so that a misspelt key is not silently dropped.

CSV: a header row, then one command a row. The columns ``type``, ``customer``, ``customer.<id type>``,
``timestamp`` and ``command_id`` are the command's; every other column is a property, its cell read
like the command line's ``KEY=VALUE`` (JSON when it parses as JSON, else text) and left out when
empty. A file with a ``type`` column holds events; without one, customer updates.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from typing import IO, Any, Dict, Iterator, List, Tuple

__all__ = ["Call", "LineError", "JSON_LINES", "CSV", "FORMATS", "MAX_LINE", "parse_json_line", "CsvRows", "timestamp_value"]

JSON_LINES = "jsonl"
CSV = "csv"
FORMATS = (JSON_LINES, CSV)

EVENT_KEYS = frozenset(("type", "customer", "properties", "timestamp", "command_id"))
UPDATE_KEYS = frozenset(("update", "customer", "timestamp", "command_id"))
#: CSV columns that are not properties.
CSV_FIELDS = ("type", "customer", "timestamp", "command_id")
CSV_ID_PREFIX = "customer."
#: A line longer than this is refused unread (a command takes at most 100 KiB as the API counts it;
#: escapes, quotes and spaces may make its line longer, never this much): bytes of a JSON line,
#: characters of a CSV one.
MAX_LINE = 4 << 20
#: ``json.loads`` of text without its checks of the argument's type and encoding.
_decode = json.JSONDecoder().decode
_BOM = b"\xef\xbb\xbf"


class LineError(ValueError):
    """A line that is not a command of the format (its shape, not its values)."""


#: One tracking call a line asks for: ``(event_type, properties, customer, timestamp, command_id)``,
#: ``event_type`` None for a customer update (a plain tuple: made once a line, it must be cheap).
Call = Tuple[Any, Any, Any, Any, Any]


def timestamp_value(value: Any) -> Any:
    """A line's timestamp as the client takes it: numbers as they are, text as seconds or ISO 8601.

    ISO text without a time zone becomes a naive ``datetime``, which the client refuses with its
    own message; text that is neither raises ``LineError``.
    """
    if type(value) is not str:
        return value
    try:
        return float(value)
    except ValueError:
        pass
    text = value.strip()
    if text[-1:] in ("Z", "z"):  # fromisoformat takes "Z" only from Python 3.11
        text = text[:-1] + "+00:00"
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise LineError(
            f"timestamp {value[:80]!r} is neither seconds since the epoch nor ISO 8601 (2023-11-14T22:13:20Z)"
        ) from None


def _describe_keys(keys: Any) -> str:
    return ", ".join(sorted(repr(key)[:60] for key in keys))


def parse_json_line(raw: bytes) -> Call:
    """The call one JSON Lines line asks for; ``LineError`` (a ``ValueError``) when it is none."""
    try:
        line = _decode(raw.decode())
    except UnicodeDecodeError:
        raise LineError("the line is not valid UTF-8") from None
    except ValueError as error:
        if raw.startswith(_BOM):  # a byte order mark before the first line
            return parse_json_line(raw[len(_BOM):])
        raise LineError(f"the line is not JSON: {error}") from None
    if type(line) is not dict:
        raise LineError(f"the line must be a JSON object, not {type(line).__name__}")
    keys = line.keys()
    if "type" in line:
        if not keys <= EVENT_KEYS:
            if "update" in line:
                raise LineError('the line has both "type" (an event) and "update" (a customer update)')
            raise LineError(f"unknown key(s) {_describe_keys(keys - EVENT_KEYS)}; an event has {_describe_keys(EVENT_KEYS)}")
        event_type = line["type"]
        properties = line.get("properties")
    elif "update" in line:
        if not keys <= UPDATE_KEYS:
            raise LineError(
                f"unknown key(s) {_describe_keys(keys - UPDATE_KEYS)}; a customer update has {_describe_keys(UPDATE_KEYS)}"
            )
        event_type = None
        properties = line["update"]
        if type(properties) is not dict:
            raise LineError(f'"update" must be an object of customer properties, not {type(properties).__name__}')
    else:
        raise LineError('the line has neither "type" (an event) nor "update" (a customer update)')
    if "customer" not in line:
        raise LineError('the line has no "customer"')
    if "timestamp" not in line:
        raise LineError('the line has no "timestamp" (a backfill keeps the time each command happened)')
    timestamp = line["timestamp"]
    if type(timestamp) is str:
        timestamp = timestamp_value(timestamp)
    return event_type, properties, line["customer"], timestamp, line.get("command_id")


class _BoundedLines:
    """The lines of a text for ``csv.reader``, each read in at most ``MAX_LINE`` characters: a longer
    one is read past to its end and raised as ``csv.Error`` (its row is rejected, the next rows
    read), so that a file without line breaks takes bounded memory."""

    def __init__(self, text: IO[str]) -> None:
        self._readline = text.readline

    def __iter__(self) -> "_BoundedLines":
        return self

    def __next__(self) -> str:
        line = self._readline(MAX_LINE)
        if not line:
            raise StopIteration
        if len(line) == MAX_LINE and not line.endswith(("\n", "\r")):
            piece = line
            while len(piece) == MAX_LINE and not piece.endswith(("\n", "\r")):
                piece = self._readline(MAX_LINE)
            raise csv.Error(f"the line is longer than {MAX_LINE} characters: no command is that large")
        return line


class CsvRows:
    """The calls of a CSV file's rows, read from a binary stream (UTF-8, a BOM allowed).

    Each item is ``(row number, call or LineError, the row as a dict of its cells)``; row 1 is the
    header, so the first command is row 2 (the file's line 2 unless a cell spans lines).
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        self._reader = csv.reader(_BoundedLines(self._text))
        try:
            header = next(self._reader)
        except StopIteration:
            header = []
        except (csv.Error, UnicodeDecodeError) as error:
            raise LineError(f"the CSV header cannot be read: {error}") from None
        self.header = [name.strip() for name in header]
        if not self.header:
            raise LineError("the CSV file has no header row")
        duplicates = sorted({name for name in self.header if self.header.count(name) > 1})
        if duplicates:
            raise LineError(f"the CSV header names {', '.join(map(repr, duplicates))} more than once")
        self.events = "type" in self.header
        id_columns = [name for name in self.header if name.startswith(CSV_ID_PREFIX)]
        if "customer" not in self.header and not id_columns:
            raise LineError("the CSV header has no 'customer' column nor any 'customer.<id type>' column")
        if "timestamp" not in self.header:
            raise LineError("the CSV header has no 'timestamp' column (a backfill keeps the time each command happened)")
        self._ids: List[Tuple[int, str]] = [(i, name[len(CSV_ID_PREFIX):]) for i, name in enumerate(self.header)
                                            if name.startswith(CSV_ID_PREFIX)]
        self._properties: List[Tuple[int, str]] = [
            (i, name) for i, name in enumerate(self.header) if name not in CSV_FIELDS and not name.startswith(CSV_ID_PREFIX)
        ]
        self._at = {name: i for i, name in enumerate(self.header)}

    def __iter__(self) -> Iterator[Tuple[int, Any, Dict[str, str]]]:
        try:
            yield from self._rows()
        finally:
            self.detach()

    def detach(self) -> None:
        """Let the binary stream go without closing it (standard input stays usable)."""
        try:
            self._text.detach()
        except ValueError:  # detached already
            pass

    def _rows(self) -> Iterator[Tuple[int, Any, Dict[str, str]]]:
        row_number = 1
        while True:
            try:
                row = next(self._reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as error:
                row_number += 1
                yield row_number, LineError(f"the row cannot be read: {error}"), {}
                continue
            row_number += 1
            cells = dict(zip(self.header, row))
            if not any(cell.strip() for cell in row):
                yield row_number, None, cells  # a blank row
                continue
            try:
                yield row_number, self._call(row), cells
            except LineError as error:
                yield row_number, error, cells

    def _call(self, row: List[str]) -> Call:
        from ..cli import parse_value

        if len(row) != len(self.header):
            raise LineError(f"the row has {len(row)} cells; the header has {len(self.header)}")
        at = self._at
        customer: Any
        ids = {id_type: row[i] for i, id_type in self._ids if row[i] != ""}
        if "customer" in at and row[at["customer"]] != "":
            if ids:
                raise LineError("the row gives both 'customer' and 'customer.<id type>' cells")
            customer = row[at["customer"]]
        elif ids:
            customer = ids
        else:
            raise LineError("the row has no customer")
        timestamp = row[at["timestamp"]]
        if not timestamp.strip():
            raise LineError("the row has no timestamp")
        properties = {name: parse_value(row[i]) for i, name in self._properties if row[i] != ""}
        command_id = row[at["command_id"]] if "command_id" in at and row[at["command_id"]] != "" else None
        event_type = row[at["type"]] if self.events else None
        if self.events and event_type == "":
            raise LineError("the row has no event type")
        return event_type, properties, customer, timestamp_value(timestamp), command_id

"""Storage of the local server: events, merged customer properties and ``command_id`` dedupe, in SQLite.

One :class:`Store` owns one ``sqlite3`` connection (in memory by default, or a file that survives a
restart) behind a lock. Deduplication uses an in-memory set of ``(company_id, command_id)``, loaded
from the ``command_ids`` table when a file is used. Customer properties are stored one row per
property with the ``timestamp`` of the update that set it; an update only overwrites a property when
its timestamp is the same or later, so out-of-order delivery converges to the latest value.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from .validation import CustomerUpdate, EventRow

logger = logging.getLogger(__name__)

Command = Union[EventRow, CustomerUpdate]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    company_id TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    type TEXT NOT NULL,
    properties TEXT NOT NULL,
    timestamp REAL NOT NULL,
    command_id TEXT
);
CREATE TABLE IF NOT EXISTS customers (
    company_id TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    PRIMARY KEY (company_id, customer_key)
);
CREATE TABLE IF NOT EXISTS customer_properties (
    company_id TEXT NOT NULL,
    customer_key TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (company_id, customer_key, name)
);
CREATE TABLE IF NOT EXISTS command_ids (
    company_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    PRIMARY KEY (company_id, command_id)
);
"""

_MERGE = (
    "INSERT INTO customer_properties (company_id, customer_key, name, value, timestamp) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (company_id, customer_key, name) DO UPDATE SET value = excluded.value, timestamp = excluded.timestamp "
    "WHERE excluded.timestamp >= customer_properties.timestamp"
)


class Store:
    """Events, customers and dedupe state of the local server (thread-safe).

    ``db`` is a SQLite file path (``None``: in memory). With ``counting_only`` nothing is stored:
    commands are deduplicated and counted only.
    """

    def __init__(self, db: Optional[str] = None, counting_only: bool = False) -> None:
        self.counting_only = counting_only
        self._lock = threading.Lock()
        self._events_changed = threading.Condition(self._lock)
        self._persist_ids = db is not None
        conn: Optional[sqlite3.Connection] = None
        try:
            conn = sqlite3.connect(db or ":memory:", check_same_thread=False, isolation_level=None)
            if db is not None:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            else:  # nothing to keep across a crash: no fsync, rollback journal in memory (ROLLBACK still works)
                conn.execute("PRAGMA journal_mode=MEMORY")
                conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
            self._seen: Set[Tuple[str, str]] = set(
                (str(row[0]), str(row[1])) for row in conn.execute("SELECT company_id, command_id FROM command_ids")
            )
            stored = int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        except sqlite3.Error as error:
            if conn is not None:
                conn.close()
            raise ValueError(f"db {db!r} cannot be used as an SQLite database: {error}") from None
        self._conn = conn
        #: Events accepted since start or reset, plus (with a db file) those the file held already.
        self.events_accepted = stored
        self.customer_updates = 0
        self.duplicates = 0

    # -- writing ---------------------------------------------------------------------------------

    def apply(self, commands: Sequence[Command]) -> List[bool]:
        """Apply valid commands in order in one transaction; per command ``True`` if applied, ``False`` if a duplicate."""
        applied: List[bool] = []
        events: List[EventRow] = []
        updates: List[CustomerUpdate] = []
        with self._lock:
            seen = self._seen
            new_ids: List[Tuple[str, str]] = []
            for command in commands:
                if command.command_id is not None:
                    key = (command.company_id, command.command_id)
                    if key in seen:
                        applied.append(False)
                        continue
                    seen.add(key)
                    new_ids.append(key)
                applied.append(True)
                if type(command) is EventRow:
                    events.append(command)
                else:
                    updates.append(command)  # type: ignore[arg-type]
            if not self.counting_only and (events or updates):
                try:
                    self._write(events, updates, new_ids)
                except BaseException:
                    seen.difference_update(new_ids)  # not applied: a retry must not count as a duplicate
                    raise
            self.events_accepted += len(events)
            self.customer_updates += len(updates)
            self.duplicates += len(applied) - len(events) - len(updates)
            if events:
                self._events_changed.notify_all()
        return applied

    def apply_events(self, keys: List[Tuple[str, str]], rows: Optional[List[EventRow]]) -> int:
        """Apply valid events that all carry a ``command_id``, in order in one transaction; how many were applied
        (the others are duplicates).

        ``keys`` are the ``(company_id, command_id)`` of the events, ``rows`` the events themselves (``None``
        when counting only). The usual case, no duplicate at all, is checked with set operations.
        """
        with self._lock:
            seen = self._seen
            if len(set(keys)) == len(keys) and seen.isdisjoint(keys):
                new_ids = keys
                fresh = rows
                seen.update(keys)
            else:
                new_ids = []
                indexes: List[int] = []
                for index, key in enumerate(keys):
                    if key not in seen:
                        seen.add(key)
                        new_ids.append(key)
                        indexes.append(index)
                fresh = [rows[index] for index in indexes] if rows is not None else None
            if fresh and not self.counting_only:
                try:
                    self._write(fresh, [], new_ids)
                except BaseException:
                    seen.difference_update(new_ids)  # not applied: a retry must not count as a duplicate
                    raise
            self.events_accepted += len(new_ids)
            self.duplicates += len(keys) - len(new_ids)
            if new_ids:
                self._events_changed.notify_all()
        return len(new_ids)

    def _write(self, events: List[EventRow], updates: List[CustomerUpdate], new_ids: List[Tuple[str, str]]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            if events:
                conn.executemany(
                    "INSERT INTO events (company_id, customer_key, type, properties, timestamp, command_id) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    events,
                )
            if updates:
                conn.executemany(
                    "INSERT OR IGNORE INTO customers (company_id, customer_key) VALUES (?, ?)",
                    [(u.company_id, u.customer_key) for u in updates],
                )
                conn.executemany(
                    _MERGE,
                    [
                        (u.company_id, u.customer_key, name, value, u.timestamp)
                        for u in updates
                        for name, value in u.properties.items()
                    ],
                )
            if self._persist_ids and new_ids:
                conn.executemany("INSERT OR IGNORE INTO command_ids (company_id, command_id) VALUES (?, ?)", new_ids)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def reset(self) -> None:
        """Forget every event, customer, command id and counter."""
        with self._lock:
            self._conn.executescript(
                "BEGIN; DELETE FROM events; DELETE FROM customers; DELETE FROM customer_properties; "
                "DELETE FROM command_ids; COMMIT;"
            )
            self._seen.clear()
            self.events_accepted = self.customer_updates = self.duplicates = 0
            self._events_changed.notify_all()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    def wait_for_events(self, count: int, timeout: Optional[float]) -> bool:
        """Block until at least ``count`` events are stored (counted when counting only); ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._events_changed:
            while self.events_accepted < count:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._events_changed.wait(remaining)
            return True

    # -- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any] = ()) -> List[Tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def events(self, company_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Stored events in arrival order, each with exactly the stored fields."""
        sql = "SELECT company_id, customer_key, type, properties, timestamp, command_id FROM events"
        rows = self._query(sql + " WHERE company_id = ? ORDER BY id", (company_id,)) if company_id is not None \
            else self._query(sql + " ORDER BY id")
        return [
            {
                "company_id": company,
                "customer_ids": json.loads(key),
                "type": event_type,
                "properties": json.loads(properties),
                "timestamp": timestamp,
                "command_id": command_id,
            }
            for company, key, event_type, properties, timestamp, command_id in rows
        ]

    def event_rows(self, company_id: str) -> List[Tuple[str, str, Dict[str, Any], float]]:
        """``(customer_key, type, properties, timestamp)`` of a company's events, by timestamp then arrival."""
        rows = self._query(
            "SELECT customer_key, type, properties, timestamp FROM events WHERE company_id = ? ORDER BY timestamp, id",
            (company_id,),
        )
        return [(key, event_type, json.loads(props), ts) for key, event_type, props, ts in rows]

    def customer_properties(self, company_id: str, customer_key: str) -> Dict[str, Any]:
        """Merged properties of one customer (empty when unknown)."""
        rows = self._query(
            "SELECT name, value FROM customer_properties WHERE company_id = ? AND customer_key = ? ORDER BY name",
            (company_id, customer_key),
        )
        return {name: json.loads(value) for name, value in rows}

    def customers(self, company_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Every known customer (updated, or seen in an event): company, ids and merged properties."""
        keys = self._query(
            "SELECT company_id, customer_key FROM customers UNION SELECT company_id, customer_key FROM events "
            "ORDER BY 1, 2"
        )
        props: Dict[Tuple[str, str], Dict[str, Any]] = {}
        for company, key, name, value in self._query(
            "SELECT company_id, customer_key, name, value FROM customer_properties ORDER BY name"
        ):
            props.setdefault((company, key), {})[name] = json.loads(value)
        return [
            {"company_id": company, "ids": json.loads(key), "properties": props.get((company, key), {})}
            for company, key in keys
            if company_id is None or company == company_id
        ]

    def customer_property_table(self, company_id: str) -> Dict[str, Dict[str, Any]]:
        """Every known customer of a company (by canonical customer key) with its merged properties."""
        table: Dict[str, Dict[str, Any]] = {
            str(row[0]): {}
            for row in self._query(
                "SELECT customer_key FROM customers WHERE company_id = ? "
                "UNION SELECT customer_key FROM events WHERE company_id = ?",
                (company_id, company_id),
            )
        }
        for key, name, value in self._query(
            "SELECT customer_key, name, value FROM customer_properties WHERE company_id = ? ORDER BY name", (company_id,)
        ):
            table.setdefault(key, {})[name] = json.loads(value)
        return table

    def companies(self) -> List[str]:
        """Companies that have stored events or customers, sorted."""
        rows = self._query("SELECT company_id FROM events UNION SELECT company_id FROM customers ORDER BY 1")
        return [str(row[0]) for row in rows]

    def event_count(self) -> int:
        """Number of events stored (including those from an earlier run on the same file)."""
        return int(self._query("SELECT COUNT(*) FROM events")[0][0])

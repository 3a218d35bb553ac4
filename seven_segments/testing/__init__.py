"""A local 7SEGMENTS-compatible HTTP server, for the project's tests, users' test suites and the demo.

::

    from seven_segments.testing import LocalServer

    with LocalServer() as server:            # 127.0.0.1, a free port, in-memory SQLite
        client = SevenSegments("token", target=server.url)
        ...
        assert server.wait_for_events(1, timeout=5)
        print(server.events(), server.customers(), server.stats())

It speaks PROTOCOL.md strictly (``POST /crm/events``, ``/crm/customers``, ``/campaigns/html/get``,
``/bulk``, ``/analytics/{type}``). The pytest fixture ``seven_segments_server`` comes from
:mod:`seven_segments.testing.pytest_plugin`; the command line from :mod:`seven_segments.testing.serve`.

Python API
----------

``LocalServer(host="127.0.0.1", port=0, *, db=None, campaigns=None, analyses=None, users=None, tokens=None,
counting_only=False, verbose=False, max_recorded_requests=10000)``; ``start()``, ``stop()``, ``close()``,
context manager, ``url``, ``port``, ``running``; inspection ``events(company_id=None)``,
``customers(company_id=None)``, ``customer(ids, company_id=None)``, ``requests()``, ``stats()``, ``reset()``,
``wait_for_events(n, timeout=5.0)``; faults on ``server.faults``: ``fail_next(n=1, status=503,
retry_after=None)``, ``delay_next(n=1, seconds=0.1)``, ``drop_next(n=1, after_apply=False)``,
``command_results(n=1, result="retry")``, ``random(rate, seed=0, retry_after=0.0, kinds=None)``, ``clear()``,
``pending()``.

Inspection over HTTP (reserved prefix ``/_local/``; never faulted, never recorded)
------------------------------------------------------------------------------

- ``GET /_local/events[?company=TOKEN]`` -> ``{"success": true, "events": [...]}``
- ``GET /_local/customers[?company=TOKEN]`` -> ``{"success": true, "customers": [...]}``
- ``GET /_local/requests`` -> ``{"success": true, "requests": [...]}``
- ``GET /_local/stats`` -> ``{"success": true, "stats": {...}}``
- ``GET /_local/faults`` -> ``{"success": true, "faults": {"requests": [...], "commands": [...], "random_rate": R}}``
- ``POST /_local/faults`` with ``{"action": "fail_next", "n": 2, "status": 503, "retry_after": 1}`` (or a list of
  such; actions ``fail_next``, ``delay_next``, ``drop_next``, ``command_results``, ``random``, ``clear``; the other
  keys are the Python method's keyword arguments) -> the pending faults; 400 when invalid.
- ``POST /_local/reset`` -> ``{"success": true}``
- ``GET /_local/wait_for_events?n=N&timeout=S`` -> ``{"success": true, "reached": bool, "events": count}``

Choices where PROTOCOL.md is silent
-----------------------------------

Requests and bodies

- HTTP/1.1 with keep-alive; one thread per connection; ``stop()`` closes idle keep-alive connections too.
- ``Content-Type`` other than ``application/json`` (parameters such as ``charset=utf-8`` allowed) -> **400**
  (not 415: PROTOCOL's status table has 400 for an invalid request). ``Content-Encoding`` other than
  ``gzip`` or ``identity`` -> 400. A body that is not UTF-8 JSON, or not a JSON object -> 400.
- gzip bodies are inflated with a bound (the path's limit + 1 byte), so a gzip bomb costs nothing: -> 413.
- Size limits apply to the uncompressed body: ``bulk`` 5 MiB; the single-command endpoints
  (``crm/events``, ``crm/customers``, ``campaigns/html/get``, ``analytics/*``) 100 KiB. Bodies
  announced above 5 MiB are read and discarded (up to 64 MiB, else the connection is closed) before 413.
  Chunked request bodies are accepted.
- A command's data size is measured as compact UTF-8 JSON (``separators=(",", ":")``, ``ensure_ascii=False``).
- Unknown path -> 404 (``/analytics/unknown`` too). Any method but POST on an API path -> 405 with
  ``Allow: POST`` and a JSON body. Every answer is JSON with ``success`` (also 404/405/501 and malformed requests).

Tracking commands

- Strict: unknown fields are refused (``foo is not a known field``); each error names the field
  (``customer_ids.registered must be a non-empty string``, ``properties.cart[2] must be a finite number``,
  ``type must be a non-empty string of at most 256 characters``,
  ``command_id must be 1 to 64 characters of [A-Za-z0-9_-]``, ``company_id must be a non-empty string``,
  ``timestamp must be a finite, non-negative number of seconds since the epoch``); all errors of a
  command are listed, not just the first.
- ``properties`` is optional (default ``{}``); ``timestamp`` optional (default: the time the request was
  received); ``command_id`` optional (no dedupe without it).
- A customer is the exact ``customer_ids`` / ``ids`` object: ``{"registered": "a"}`` and
  ``{"registered": "a", "cookie": "x"}`` are two customers (no identity merging).
- Customer properties merge property by property; the update with the later ``timestamp`` wins; with equal
  timestamps the later arrival wins. A property cannot be deleted (``null`` is a value).
- ``tokens=None`` accepts any non-empty company token. With ``tokens`` set, an unknown token gets 401 on the
  single endpoints, and in ``bulk`` a per-command ``error`` (``company_id is not a known company token``) while
  the other commands are applied. Error texts never contain a token or a password.
- ``bulk``: a body with fields other than ``commands`` -> 400; a command other than ``crm/events`` or
  ``crm/customers`` -> per-command ``error``; more than 1000 commands, body over 5 MiB, or any command data over
  100 KiB -> 413 with nothing applied; an empty ``commands`` list -> 200 with ``"results": []``.
  The commands of one ``bulk`` are applied in order in one transaction.
- Dedupe per (company_id, command_id) covers single endpoints and ``bulk`` alike, within one request too; a
  duplicate answers ``ok``, is not applied and is counted in ``stats()["duplicates"]``. Refused commands
  (``error``, ``retry``) do not consume their ``command_id``. With a ``db`` file the ids survive a restart.

Campaigns (``campaigns/html/get``)

- File/dict: ``{"Banner left": "<html>", "VIP banner": {"html": "...", "condition": C}}``; conditions
  ``{"property": P, "equals": V}``, ``{"property": P, "in": [V...]}``, ``{"property": P, "exists": bool}``,
  ``{"all": [C...]}``, ``{"any": [C...]}``, ``{"not": C}``, matched against the customer's merged properties
  (``true`` does not equal ``1``). Campaigns are the same for every company. Unknown name -> 404; condition false
  -> ``"data": ""`` (an unknown customer has no properties: ``exists: false`` holds, ``equals`` does not).

Export API (``analytics/{type}``)

- Checks in order: unknown type -> 404; HTTP Basic against ``users`` -> 401 with ``WWW-Authenticate`` (``users=None``
  accepts any non-empty user name with any password); ``analysis_id`` missing -> 400 (other body fields are
  ignored); unknown id, or an id of another type -> 404; company; result.
- Every user reaches every company. ``?company=TOKEN`` picks it (with ``tokens`` set and TOKEN not among them ->
  403). Without it: the only company in ``tokens`` if exactly one, else the only company with stored data; no
  company at all -> the analysis over no data (zero counts); several -> 400
  ``this user can reach N companies; pick one with ?company=TOKEN`` (tokens are not listed).
- Definitions and results (events in timestamp order, arrival order for equal timestamps):

  - funnel ``{"type": "funnel", "name": N, "steps": ["First visit", ...], "metric": {"step": 2, "property": "price"}}``
    (a step is an event type, or ``{"name": N, "event": TYPE, "condition": C}`` with C on the event's
    properties). Each customer's steps are matched greedily: step i is the customer's first event of that type
    after the event matched for step i-1. ``counts[i]``: customers who reached step i.
    ``times`` has ``len(steps) + 1`` entries: ``times[0] = -1``; ``times[i]`` (1 <= i < len(steps)) the
    **median** seconds from step i-1 to step i among customers who reached step i; the last entry the median
    seconds from the first to the last step among customers who completed the funnel; -1 where nobody did.
    ``total.metric``: sum of the numeric ``metric.property`` of the events matched at ``metric.step`` (other
    values count 0); without ``metric`` both ``metric`` and ``total.metric`` are ``null``.
    ``drill_down`` is always ``{"type": "none", "series": []}``.
  - report ``{"type": "report", "name": N, "event": TYPE or [TYPE...], "property": P, "sum": P2}`` (all but type
    optional) -> ``{"name", "group_by": "type" | {"property": P}, "rows": [{"key": value, "events": n,
    "customers": m[, "sum": s]}], "total": {"events", "customers"[, "sum"]}}``; events (of those types) grouped by
    type, or by the value of event property P (missing: null); rows by events descending, then key.
  - retention ``{"type": "retention", "name": N, "event": TYPE or [TYPE...], "days": 7}`` -> ``{"name", "days",
    "cohorts": [{"date": "YYYY-MM-DD", "size": n, "counts": [c0...], "retention": [c0/n...]}]}``; a customer's
    cohort is the UTC day of its first (matching) event; ``counts[k]``: members with a (matching) event on
    cohort day + k, k < days (so ``counts[0] == size``).
  - segmentation ``{"type": "segmentation", "name": N, "property": P}`` -> ``{"name", "property", "segments":
    [{"value": v, "customers": n}], "total": N}``; every customer of the company (updated or seen in an event)
    by the value of its merged property P (missing: null); segments by size descending, then value.

Faults (``server.faults`` / ``POST /_local/faults``)

- Only POST requests to API paths take faults, after the body is read: first from a FIFO queue of request
  faults (``fail_next``, ``delay_next``, ``drop_next`` add n entries each; each request takes one), then with
  the random rate. A status fault answers ``{"success": false, "errors": ["injected fault: HTTP 503"]}`` (with
  ``Retry-After``: whole seconds as an integer, fractions like ``0.05`` as a decimal, a string verbatim) and
  applies nothing. A delay sleeps, then handles the request normally. A drop closes the connection without any
  answer, before applying, or after applying (the events are stored and the command ids consumed).
- ``command_results(n, "retry" | "error")``: the next n ``bulk`` commands answer that result and are not applied.
- ``random(rate, seed)``: each API request draws a fault with probability ``rate`` from a generator seeded with
  ``seed``, kinds uniformly among 500, 503, 429 (``Retry-After: retry_after``), drop before, drop after, and
  per-command retry (each command of a bulk request answers ``retry`` with probability 1/2; a non-bulk
  request draws another kind).
- ``clear()`` drops planned faults and turns random faults off; ``reset()`` of the server also clears them.

Inspection

- ``events()``: dicts with exactly ``company_id, customer_ids, type, properties, timestamp, command_id``
  (``command_id`` ``None`` when not sent; ``timestamp`` the given or receive time), in arrival order.
- ``customers()``: ``{"company_id", "ids", "properties"}`` for every customer updated or seen in an event.
- ``requests()``: API requests (not ``/_local/``), oldest first, at most the last 10,000 and 64 MiB of bodies;
  none with ``counting_only``. Each ``{"method", "path" (with query), "headers", "user", "body" (JSON after
  gunzip, None if not JSON), "gzipped", "status" (None: dropped or not answered yet), "time"}``; the
  ``Authorization`` header value is redacted (``Basic <redacted>``), ``user`` is the Basic user name.
- ``stats()``: ``{"requests": API requests, "bulk_requests", "statuses": {"200": n, "dropped": n, ...},
  "commands": {"ok", "retry", "error"} (tracking commands, single and bulk), "events": events accepted,
  "customer_updates": updates accepted, "duplicates", "faults": {kind: n}, "faults_injected": total}``, all since
  start or ``reset()``. With ``counting_only`` the counts are the same but nothing is stored.
- ``wait_for_events(n, timeout)``: waits (condition variable) until ``stats()["events"] >= n``.
- ``reset()`` forgets events, customers, command ids, recorded requests, counters and planned faults (the
  configuration: campaigns, analyses, users, tokens, stays). Data stays readable after ``stop()``; a stopped
  server started again listens on the same port. With ``db``, data and command ids survive a new server.

Throughput (measured on this project's 2-core machine, in-memory SQLite, bulks of 1000 events)
----------------------------------------------------------------------------------------------

``python -m seven_segments.testing.loadtest [--counting-only] [--gzip]``: 200,000 events in bulks of 1000
(about 300 KB of JSON each; ``--gzip``: level 1, as the client sends them) over 2 keep-alive connections from
2 sender processes. Medians of 3 runs while other jobs kept the machine's load average at 1.5-2 (wall-clock
figures are noisy; the server process was busy all along, so events/s and events per server CPU second agree):

- counting only: 124,000-127,000 events/s (about 7.7 us of server CPU per event; up to 150,000 in quiet runs);
- validated and stored: 61,000-64,000 events/s (about 16 us of server CPU per event).

Without HTTP (the same bodies decoded and checked in one thread) the best runs reach about 200,000 events per
CPU second counting only and 130,000 stored. Half of the remaining cost is ``json.loads`` of the body (and the
garbage collections its objects trigger). A bulk of valid events only, all with the six fields, is checked as a
whole, column by column with C-level builtins (:func:`~seven_segments.testing.validation.validate_event_bulk`);
counting only does not encode flat properties at all (a float's ``repr`` is the dearest part of encoding); any
other bulk is checked command by command, with the same error messages.
"""

from __future__ import annotations

from .faults import Faults
from .server import LocalServer

__all__ = ["Faults", "LocalServer"]

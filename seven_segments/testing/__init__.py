"""A local 7SEGMENTS-compatible HTTP server, for the project's tests, users' test suites and the demo.

::

    from seven_segments.testing import LocalServer

    with LocalServer() as server:            # 127.0.0.1, a free port, in-memory SQLite
        client = SevenSegments("token", target=server.url)
        ...
        assert server.wait_for_events(1, timeout=5)
        print(server.events(), server.customers(), server.stats())

It speaks the API as ``docs/protocol.md`` describes it (``POST /crm/events``, ``/crm/customers``,
``/campaigns/html/get``, ``/bulk``, ``/analytics/{type}``). The pytest fixtures
``seven_segments_server`` and ``seven_segments_server_factory`` come from
:mod:`seven_segments.testing.pytest_plugin`; the command line ``serve`` from
:mod:`seven_segments.testing.serve`.

The manual, with every choice the server makes where the protocol is silent (status codes of odd
requests, the campaign condition language, the analyses' results, faults, latency, inspection over
``/_local/``), is ``docs/local-server.md`` in the source repository; a running server
also lists its ``/_local/`` endpoints at ``GET /_local/``.
"""

from __future__ import annotations

from .faults import Faults
from .server import LocalServer

__all__ = ["Faults", "LocalServer"]

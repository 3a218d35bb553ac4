"""pytest plugin: the ``seven_segments_server`` fixture, a fresh :class:`LocalServer` per test.

Loaded automatically once the package is installed (``pytest11`` entry point ``seven_segments``), or
explicitly with ``pytest -p seven_segments.testing.pytest_plugin``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from .server import LocalServer


@pytest.fixture
def seven_segments_server() -> Iterator[LocalServer]:
    """A started :class:`~seven_segments.testing.LocalServer` (in memory, any token); stopped after the test.

    Use ``seven_segments_server.url`` as the client's target and its inspection helpers
    (``events()``, ``customers()``, ``requests()``, ``stats()``, ``faults``...) in assertions.
    """
    server = LocalServer()
    server.start()
    try:
        yield server
    finally:
        server.close()

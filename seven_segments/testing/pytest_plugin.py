"""pytest plugin: the ``seven_segments_server`` fixture (a fresh :class:`LocalServer` per test) and its factory.

Loaded automatically once the package is installed (``pytest11`` entry point ``seven_segments``), or
explicitly with ``pytest -p seven_segments.testing.pytest_plugin``.

- ``seven_segments_server``: a started server, in memory, any token. Configure it per test with the
  marker ``@pytest.mark.seven_segments_server(campaigns={...}, users={...}, tokens=[...], latency=0.05)``
  (any :class:`LocalServer` keyword argument).
- ``seven_segments_server_factory``: call it with :class:`LocalServer` keyword arguments to start as
  many servers as a test needs; all are closed after the test.

See ``docs/local-server.md``.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List

import pytest

from .server import LocalServer

MARKER = "seven_segments_server"


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``seven_segments_server`` marker."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**kwargs): LocalServer keyword arguments (campaigns, analyses, users, tokens, db, "
        "counting_only, latency...) for the seven_segments_server fixture",
    )


class ServerFactory:
    """Starts :class:`LocalServer` instances for one test and closes them all at its end."""

    def __init__(self) -> None:
        self.servers: List[LocalServer] = []

    def __call__(self, **kwargs: Any) -> LocalServer:
        """A started ``LocalServer(**kwargs)``; ``TypeError``/``ValueError`` naming a bad argument."""
        server = LocalServer(**kwargs)
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        """Close every server this factory started."""
        while self.servers:
            self.servers.pop().close()


@pytest.fixture
def seven_segments_server_factory() -> Iterator[ServerFactory]:
    """A callable: ``seven_segments_server_factory(campaigns={...}, users={...}, ...)`` -> a started server.

    Takes :class:`~seven_segments.testing.LocalServer`'s keyword arguments; every server it started
    is closed after the test.
    """
    factory = ServerFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def seven_segments_server(
    request: pytest.FixtureRequest, seven_segments_server_factory: ServerFactory
) -> LocalServer:
    """A started :class:`~seven_segments.testing.LocalServer` (in memory, any token); stopped after the test.

    Use ``seven_segments_server.url`` as the client's target and its inspection helpers
    (``events()``, ``customers()``, ``requests()``, ``stats()``, ``faults``...) in assertions. The
    marker ``@pytest.mark.seven_segments_server(**kwargs)`` passes ``LocalServer`` keyword arguments
    (markers closer to the test win per keyword).
    """
    kwargs: Dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers(MARKER))):
        if marker.args:
            raise TypeError(f"@pytest.mark.{MARKER} takes keyword arguments only (LocalServer's), not {marker.args!r}")
        kwargs.update(marker.kwargs)
    return seven_segments_server_factory(**kwargs)

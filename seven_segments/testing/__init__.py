"""A local 7SEGMENTS-compatible HTTP server, for tests, users' test suites and the demo.

(Full documentation of choices below is filled in by the module docstring.)
"""

from __future__ import annotations

from .faults import Faults
from .server import LocalServer

__all__ = ["Faults", "LocalServer"]

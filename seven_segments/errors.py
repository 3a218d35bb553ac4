"""The exceptions the client raises. None of them ever carries a token or a password.

Importing this module (as every import of ``seven_segments`` does) also checks that the runtime
dependencies are installed, so that a missing one fails at once with one clear line rather than at
the first retry (tenacity is imported only when a request must be retried).
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Sequence, Tuple

#: The runtime dependencies (setup.py's ``install_requires``).
REQUIRED = ("requests", "tenacity")


def _check_requirements() -> None:
    # find_spec looks the name up on sys.path without running the module: a fraction of a
    # millisecond, where importing tenacity would cost tens of milliseconds at every start.
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"seven_segments needs {' and '.join(missing)}: pip install {' '.join(missing)}", name=missing[0])


_check_requirements()


class SevenSegmentsError(Exception):
    """Base class of every error the 7SEGMENTS API or the client reports.

    ``status`` is the HTTP status of the answer (``None`` when there was no answer, such as a
    connection error), ``errors`` the server's ``errors`` list (empty when it gave none).
    """

    def __init__(self, message: str, *, status: Optional[int] = None, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.errors: Tuple[str, ...] = tuple(str(error) for error in errors)

    def __str__(self) -> str:
        text = self.message
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.errors:
            text += ": " + "; ".join(self.errors)
        return text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, errors={list(self.errors)!r})"


class InvalidRequest(SevenSegmentsError):
    """The API refused the request or command for good (400, 404, 413, or an ``error`` bulk result)."""


class AuthenticationError(SevenSegmentsError):
    """Bad token or credentials (401), or no access to that company (403)."""


class ServiceUnavailable(SevenSegmentsError):
    """A passing failure (connection error, timeout, 429, 5xx) that outlasted the retries."""


class ClientClosedError(SevenSegmentsError, RuntimeError):
    """The client was closed; it takes no more commands."""


class QueueFull(SevenSegmentsError):
    """A buffered client's queue was full, so commands were dropped (reported to ``on_error``)."""

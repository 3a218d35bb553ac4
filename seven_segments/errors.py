"""The exceptions the client raises. None of them ever carries a token or a password."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple


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

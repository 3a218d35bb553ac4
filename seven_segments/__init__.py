"""Python client of the 7SEGMENTS tracking and export API.

>>> from seven_segments import SevenSegments
>>> client = SevenSegments('12345678-90ab-cdef-1234-567890abcdef', customer='john123')  # doctest: +SKIP
>>> client.track('purchase', properties={'product': 'bottle', 'amount': 5})  # doctest: +SKIP
"""

from ._version import __version__
from .client import AuthenticatedSevenSegments, SevenSegments
from .errors import (
    AuthenticationError,
    ClientClosedError,
    InvalidRequest,
    QueueFull,
    ServiceUnavailable,
    SevenSegmentsError,
)
from .health import Health
from .types import AnalysisType, BeforeSend, CommandDict, Customer, ErrorCallback, Timestamp

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .aio import AsyncAuthenticatedSevenSegments, AsyncSevenSegments


def __getattr__(name: str) -> Any:
    """The asyncio clients, from :mod:`seven_segments.aio`, imported on first use (asyncio loads only then)."""
    if name in ("AsyncSevenSegments", "AsyncAuthenticatedSevenSegments"):
        from . import aio

        return getattr(aio, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnalysisType",
    "AsyncAuthenticatedSevenSegments",
    "AsyncSevenSegments",
    "AuthenticatedSevenSegments",
    "AuthenticationError",
    "BeforeSend",
    "ClientClosedError",
    "CommandDict",
    "Customer",
    "ErrorCallback",
    "Health",
    "InvalidRequest",
    "QueueFull",
    "ServiceUnavailable",
    "SevenSegments",
    "SevenSegmentsError",
    "Timestamp",
    "__version__",
]

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
from .types import AnalysisType, BeforeSend, CommandDict, Customer, ErrorCallback, Timestamp

__all__ = [
    "AnalysisType",
    "AuthenticatedSevenSegments",
    "AuthenticationError",
    "BeforeSend",
    "ClientClosedError",
    "CommandDict",
    "Customer",
    "ErrorCallback",
    "InvalidRequest",
    "QueueFull",
    "ServiceUnavailable",
    "SevenSegments",
    "SevenSegmentsError",
    "Timestamp",
    "__version__",
]

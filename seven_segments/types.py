"""The public types of ``seven_segments``, for annotating code that uses the client.

>>> from seven_segments import AnalysisType, Customer, SevenSegments, Timestamp
>>> def buy(client: SevenSegments, who: Customer, when: Timestamp) -> str:  # doctest: +SKIP
...     return client.track("purchase", {"amount": 5}, customer=who, timestamp=when)

With these, ``mypy --strict`` on user code catches ``customer=12345`` (a number is not a customer)
and ``export_analysis("funnell", ...)`` (not an analysis type).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Union

from .errors import SevenSegmentsError

__all__ = ["AnalysisType", "BeforeSend", "CommandDict", "Customer", "ErrorCallback", "Timestamp"]

#: A customer: a string id (meaning ``{"registered": id}``) or a mapping of id types to ids.
Customer = Union[str, Mapping[str, str]]

#: A moment: seconds since the epoch (not milliseconds) or an aware ``datetime``.
Timestamp = Union[int, float, _dt.datetime]

#: The analysis types that ``AuthenticatedSevenSegments.export_analysis`` exports.
AnalysisType = Literal["funnel", "report", "retention", "segmentation"]

#: One tracking command as a plain dict, the way ``before_send`` and ``on_error`` see it:
#: ``name`` (``"crm/events"`` or ``"crm/customers"``), the customer ids (``customer_ids`` for an
#: event, ``ids`` for an update, as the wire names them), ``type`` (events only), ``properties``,
#: ``timestamp`` (seconds since the epoch) and ``command_id``. It never holds the company token.
CommandDict = Dict[str, Any]

#: ``on_error(error, commands)``: told about commands that were not delivered and never will be;
#: each command is ``{"name": path, "data": {...}}`` without the company token, ``command_id`` kept.
#: For commands a ``bulk`` answer refused (``InvalidRequest``, ``status`` 200), or that were refused
#: alone after their batch was refused as a whole and split (``status`` 400 or 413),
#: ``error.errors[i]`` is the server's reason for ``commands[i]``.
ErrorCallback = Callable[[SevenSegmentsError, List[Dict[str, Any]]], None]

#: ``before_send(command) -> command or None``: sees each tracking command (a ``CommandDict``) on
#: the caller's thread before it is queued or sent; returns the command to send (changed or not),
#: or ``None`` to drop it.
BeforeSend = Callable[[CommandDict], Optional[Mapping[str, Any]]]

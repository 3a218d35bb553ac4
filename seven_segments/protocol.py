"""Constants of the 7SEGMENTS wire contract (see docs/protocol.md), shared by client and local server."""

from __future__ import annotations

import re
from typing import Final, FrozenSet

from ._version import __version__

#: The hosted API; every client talks to it unless given another ``target``.
DEFAULT_TARGET: Final = "https://api.7segments.com"

#: ``User-Agent`` sent with every request.
USER_AGENT: Final = f"seven-segments-python/{__version__}"

PATH_EVENTS: Final = "crm/events"
PATH_CUSTOMERS: Final = "crm/customers"
PATH_HTML: Final = "campaigns/html/get"
PATH_BULK: Final = "bulk"
PATH_ANALYTICS_PREFIX: Final = "analytics/"

#: The analysis types that ``POST analytics/{type}`` accepts.
ANALYSIS_TYPES: Final[FrozenSet[str]] = frozenset({"funnel", "report", "retention", "segmentation"})

#: The id type a plain string customer stands for.
DEFAULT_ID_TYPE: Final = "registered"

MAX_BULK_COMMANDS: Final = 1000
MAX_BULK_BYTES: Final = 5 * 1024 * 1024
MAX_COMMAND_BYTES: Final = 100 * 1024
MAX_EVENT_TYPE_LENGTH: Final = 256
MAX_COMMAND_ID_LENGTH: Final = 64
COMMAND_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")

#: Whole-request statuses that mean "try again later".
TRANSIENT_STATUSES: Final[FrozenSet[int]] = frozenset({429, 500, 502, 503, 504})

#: Per-command statuses inside a ``bulk`` answer.
RESULT_OK: Final = "ok"
RESULT_RETRY: Final = "retry"
RESULT_ERROR: Final = "error"

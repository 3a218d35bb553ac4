"""The command line: ``./seven_segments.py``, ``seven-segments`` and ``python -m seven_segments``.

Exit status: 0 on success, 1 when the API refused or failed (one line on stderr, no traceback,
no secret), 2 on a usage error (including bad values, named in the message).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from ._version import __version__
from .protocol import ANALYSIS_TYPES, DEFAULT_TARGET

__all__ = ["main", "parse_properties"]

TARGET_ENV = "SEVEN_SEGMENTS_TARGET"
PASSWORD_ENV = "SEVEN_SEGMENTS_PASSWORD"

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument: exit status 2."""


def parse_value(text: str) -> Any:
    """A property value: JSON when it parses as JSON (``5``, ``true``, ``[1,2]``), else the string."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite_float)
    except ValueError:
        return text


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large for a JSON number")  # kept as a string
    return number


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")  # NaN, Infinity: kept as strings


def parse_properties(pairs: Sequence[str]) -> Dict[str, Any]:
    """``["product=bottle", "amount=5"]`` -> ``{"product": "bottle", "amount": 5}``."""
    properties: Dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise UsageError(f"property {pair!r} must be KEY=VALUE")
        properties[key] = parse_value(value)
    return properties


def parse_customer(text: str) -> Any:
    """A customer: a JSON object of id types to ids when it is one, else a registered id."""
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise UsageError(f"customer {text!r} starts with '{{' but is not a JSON object") from None
    return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get(TARGET_ENV) or DEFAULT_TARGET,
        help=f"base URL of the API (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default: 10)")
    parser.add_argument("--verbose", action="store_true", help="log requests and retries to stderr")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of every command.

    The options of ``serve`` and ``demo`` (whose modules take a while to import) are added only when
    ``command`` is one of them, or is ``None`` (everything)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "seven_segments.py"
    if program in ("__main__.py", "-c", ""):
        program = "python -m seven_segments"
    parser = argparse.ArgumentParser(
        prog=program,
        description="Track events, update customers, get campaign HTML and export analyses with 7SEGMENTS.",
    )
    parser.add_argument("--version", action="version", version=f"seven-segments {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    track = commands.add_parser("track", help="track an event", description="Track an event for a customer.")
    track.add_argument("token", metavar="COMPANY_TOKEN")
    track.add_argument("customer", metavar="CUSTOMER", help="registered id, or a JSON object of id types to ids")
    track.add_argument("event_type", metavar="EVENT_TYPE")
    track.add_argument(
        "--properties", nargs="*", default=[], metavar="KEY=VALUE", help="event properties; values are JSON or strings"
    )
    track.add_argument("--timestamp", type=float, help="seconds since the epoch (default: now)")
    _add_common(track)

    update = commands.add_parser("update", help="update customer properties", description="Update a customer's properties.")
    update.add_argument("token", metavar="COMPANY_TOKEN")
    update.add_argument("customer", metavar="CUSTOMER", help="registered id, or a JSON object of id types to ids")
    update.add_argument("properties", nargs="+", metavar="KEY=VALUE", help="values are JSON or strings")
    update.add_argument("--timestamp", type=float, help="seconds since the epoch (default: now)")
    _add_common(update)

    html = commands.add_parser("get_html", help="print a campaign's HTML", description="Print a campaign's HTML.")
    html.add_argument("token", metavar="COMPANY_TOKEN")
    html.add_argument("customer", metavar="CUSTOMER", help="registered id, or a JSON object of id types to ids")
    html.add_argument("campaign", metavar="CAMPAIGN_NAME")
    _add_common(html)

    export = commands.add_parser(
        "export",
        help="export an analysis as JSON",
        description=f"Export an analysis. The password comes from ${PASSWORD_ENV} or a prompt, never an argument.",
    )
    export.add_argument("analysis_type", metavar="ANALYSIS_TYPE", help=", ".join(sorted(ANALYSIS_TYPES)))
    export.add_argument("data", metavar="JSON", help='the request, e.g. \'{"analysis_id": "..."}\'')
    export.add_argument("--username", required=True, help="a user with export access")
    export.add_argument("--token", help="company token, when the user can reach several companies")
    _add_common(export)

    serve = commands.add_parser(
        "serve", help="run the local 7SEGMENTS server", description="Run the local 7SEGMENTS server until interrupted."
    )
    if command in (None, "serve"):
        from .testing.serve import add_arguments as add_serve_arguments

        add_serve_arguments(serve)

    demo = commands.add_parser(
        "demo",
        help="run the demo on the local server",
        description="Start a local server, track events from several threads through a buffered client while the "
        "server injects faults, and print what arrived. Exits 0 only when nothing was lost.",
    )
    if command in (None, "demo"):
        from .demo import add_arguments as add_demo_arguments

        add_demo_arguments(demo)
    return parser


def _password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin or not sys.stdin.isatty():
        raise UsageError(f"no password: set ${PASSWORD_ENV} or run in a terminal to be prompted")
    return getpass.getpass("7SEGMENTS password: ")


def _run_track(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    with SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout) as client:
        client.track(args.event_type, parse_properties(args.properties), timestamp=args.timestamp)
    return EXIT_OK


def _run_update(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    with SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout) as client:
        client.update(parse_properties(args.properties), timestamp=args.timestamp)
    return EXIT_OK


def _run_get_html(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    with SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout) as client:
        sys.stdout.write(client.get_html(args.campaign) + "\n")
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    from .client import AuthenticatedSevenSegments

    try:
        data = json.loads(args.data)
    except ValueError as error:
        raise UsageError(f"JSON {args.data!r} does not parse: {error}") from None
    if not isinstance(data, dict):
        raise UsageError(f"JSON {args.data!r} must be an object")
    if args.analysis_type not in ANALYSIS_TYPES:
        raise UsageError(f"analysis type {args.analysis_type!r} is not one of {', '.join(sorted(ANALYSIS_TYPES))}")
    with AuthenticatedSevenSegments(args.username, _password(), target=args.target, timeout=args.timeout) as client:
        result = client.export_analysis(args.analysis_type, data, token=args.token)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return EXIT_OK


def _run_serve(args: argparse.Namespace) -> int:
    from .testing.serve import run

    return run(args)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "track": _run_track,
    "update": _run_update,
    "get_html": _run_get_html,
    "export": _run_export,
    "serve": _run_serve,
    "demo": _run_demo,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    words = sys.argv[1:] if argv is None else argv
    command = next((word for word in words if not word.startswith("-")), None)
    parser = build_parser(command if command in _COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "verbose", False):
        # Our own loggers only: urllib3's debug lines show request URLs, which may hold ?company=TOKEN.
        logging.getLogger("seven_segments").setLevel(logging.DEBUG)
    from .errors import SevenSegmentsError

    try:
        return _COMMANDS[args.command](args)
    except UsageError as error:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {error}\n")
    except (TypeError, ValueError) as error:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.command}: error: {error}\n")
    except SevenSegmentsError as error:
        sys.stderr.write(f"{parser.prog} {args.command}: {type(error).__name__}: {error}\n")
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    return EXIT_OK

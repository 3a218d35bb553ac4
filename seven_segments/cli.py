"""The command line: ``./seven_segments.py``, ``seven-segments`` and ``python -m seven_segments``.

Exit status: 0 on success, 1 when the API refused or failed (one line on stderr, no traceback,
no secret), 2 on a usage error (one line naming the bad value), 130 when interrupted, 141 (as for
a process that SIGPIPE ended) when the reader of the output closed the pipe early, quietly.

The company token comes from the ``COMPANY_TOKEN`` positional or, when that is left out, from
``$SEVEN_SEGMENTS_TOKEN`` (which keeps it out of the process list); the password of ``export`` only
from ``$SEVEN_SEGMENTS_PASSWORD`` or a prompt. ``import`` (see ``importer``) takes the token from
``$SEVEN_SEGMENTS_TOKEN`` only, and exits 1 when a line was rejected or not delivered.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import logging
import math
import os
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence
from urllib.parse import urlsplit

from ._version import __version__
from .protocol import ANALYSIS_TYPES, DEFAULT_TARGET

__all__ = ["main", "parse_properties"]

TARGET_ENV = "SEVEN_SEGMENTS_TARGET"
PASSWORD_ENV = "SEVEN_SEGMENTS_PASSWORD"
TOKEN_ENV = "SEVEN_SEGMENTS_TOKEN"

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a program that the closed pipe ended.
EXIT_BROKEN_PIPE = 141

#: The commands that talk to the API, which take the options ``--target``, ``--timeout``, ``--verbose``
#: before the command as well as after it.
API_COMMANDS = ("track", "update", "get_html", "export", "import")
#: Options that take a value, before the command.
_GLOBAL_VALUED = ("--target", "--timeout")

logger = logging.getLogger(__name__)


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


def parse_timestamp(text: str) -> float:
    """``--timestamp``: seconds since the epoch (``1700000000.5``) or ISO 8601 with a zone
    (``2023-11-14T22:13:20Z``, ``2023-11-14T23:13:20+01:00``), as seconds since the epoch."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise argparse.ArgumentTypeError(f"timestamp {text!r} is not a finite number of seconds")
        return seconds
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):  # fromisoformat takes "Z" only from Python 3.11
        iso = iso[:-1] + "+00:00"
    try:
        moment = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"timestamp {text!r} is neither seconds since the epoch nor ISO 8601 (2023-11-14T22:13:20Z)"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"timestamp {text!r} has no time zone: add one, such as Z or +01:00 (a local time is ambiguous)"
        )
    return moment.timestamp()


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--timeout``, ``--verbose`` after the command (they may come before it too)."""
    parser.add_argument(
        "--target",
        default=argparse.SUPPRESS,
        help=f"base URL of the API (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout", type=float, default=argparse.SUPPRESS, help="seconds to wait for an answer (default: 10)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log one line per request (path, status, commands, milliseconds) and every retry to stderr",
    )


def _add_token(parser: argparse.ArgumentParser) -> None:
    """The ``COMPANY_TOKEN`` positional: required, unless ``$SEVEN_SEGMENTS_TOKEN`` is set."""
    parser.add_argument(
        "token",
        metavar="COMPANY_TOKEN",
        nargs="?" if os.environ.get(TOKEN_ENV) else None,
        help=f"the company token; leave it out when ${TOKEN_ENV} is set (which keeps it out of the process "
        "list); given, it wins over the variable",
    )


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The argument parser of every command.

    The options of ``serve`` and ``demo`` (whose modules take a while to import) are added only when
    ``command`` is one of them, or is ``None`` (everything)."""
    parser = _top_parser()
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_tracking_commands(commands)
    _add_export_command(commands)
    _add_local_commands(commands, command)
    _add_spool_command(commands)
    return parser


def _top_parser() -> argparse.ArgumentParser:
    """The parser with the options that may come before the command."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "seven_segments.py"
    if program in ("__main__.py", "-c", ""):
        program = "python -m seven_segments"
    parser = _Parser(
        prog=program,
        description="Track events, update customers, get campaign HTML and export analyses with 7SEGMENTS. "
        f"--target, --timeout and --verbose (for {', '.join(API_COMMANDS)}) may come before the command or "
        f"after it. The company token is the COMPANY_TOKEN argument or ${TOKEN_ENV}.",
    )
    parser.add_argument("--version", action="version", version=f"seven-segments {__version__}")
    parser.add_argument(
        "--target", dest="global_target", metavar="TARGET",
        help=f"base URL of the API (default: ${TARGET_ENV} or {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout", dest="global_timeout", metavar="TIMEOUT", type=float,
        help="seconds to wait for an answer (default: 10)",
    )
    parser.add_argument(
        "--verbose", dest="global_verbose", action="store_true", help="log one line per request and every retry"
    )
    return parser


def _add_tracking_commands(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``track``, ``update`` and ``get_html``: the calls of the tracking API."""
    customer_help = "registered id, or a JSON object of id types to ids"
    timestamp_help = "seconds since the epoch, or ISO 8601 with a time zone such as 2023-11-14T22:13:20Z (default: now)"

    track = commands.add_parser("track", help="track an event", description="Track an event for a customer.")
    _add_token(track)
    track.add_argument("customer", metavar="CUSTOMER", help=customer_help)
    track.add_argument("event_type", metavar="EVENT_TYPE")
    track.add_argument(
        "--properties",
        action="append",
        metavar="KEY=VALUE",
        help="an event property (values are JSON or strings); repeat it, or list several after one "
        "--properties: --properties product=bottle amount=5",
    )
    track.add_argument("--timestamp", type=parse_timestamp, help=timestamp_help)
    _add_common(track)

    update = commands.add_parser("update", help="update customer properties", description="Update a customer's properties.")
    _add_token(update)
    update.add_argument("customer", metavar="CUSTOMER", help=customer_help)
    update.add_argument("properties", nargs="+", metavar="KEY=VALUE", help="values are JSON or strings")
    update.add_argument("--timestamp", type=parse_timestamp, help=timestamp_help)
    _add_common(update)

    html = commands.add_parser("get_html", help="print a campaign's HTML", description="Print a campaign's HTML.")
    _add_token(html)
    html.add_argument("customer", metavar="CUSTOMER", help=customer_help)
    html.add_argument("campaign", metavar="CAMPAIGN_NAME")
    _add_common(html)


def _add_export_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``export``: the export API, with a user's credentials."""
    export = commands.add_parser(
        "export",
        help="export an analysis as JSON",
        description=f"Export an analysis. The password comes from ${PASSWORD_ENV} or a prompt, never an argument.",
    )
    export.add_argument("analysis_type", metavar="ANALYSIS_TYPE", help=", ".join(sorted(ANALYSIS_TYPES)))
    export.add_argument("data", metavar="JSON", help='the request, e.g. \'{"analysis_id": "..."}\'')
    export.add_argument("--username", required=True, help="a user with export access")
    export.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"company token, when the user can reach several companies (default: ${TOKEN_ENV}, when set)",
    )
    _add_common(export)


def _add_local_commands(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", command: Optional[str]
) -> None:
    """``serve``, ``demo`` and ``import``, whose options are added only when ``command`` is theirs (or None)."""
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

    backfill = commands.add_parser(
        "import",
        help="import a backfill of events and customer updates",
        description="Import JSON Lines or CSV files of events and customer updates, each line applied once even "
        f"when the import is killed and run again (it resumes from its checkpoint). The company token comes from "
        f"${TOKEN_ENV} only. Exits 0 when every line arrived, 1 when a line was rejected or not delivered.",
    )
    if command in (None, "import"):
        from .importer import add_arguments as add_import_arguments

        add_import_arguments(backfill)
    _add_common(backfill)


def _add_spool_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``spool``: show or deliver what a spool folder holds."""
    spool = commands.add_parser(
        "spool",
        help="show or deliver what a spool folder holds",
        description="Show what a buffered client's spool folder holds (files, commands, bytes, whether their writer "
        "is alive). With --deliver, send what the files of dead writers hold (live ones are left), each file to the "
        "target it was written for, and exit 0 only when all of it was delivered.",
    )
    spool.add_argument("path", metavar="PATH", help="the spool folder")
    spool.add_argument("--deliver", action="store_true", help="deliver the commands of dead writers' files")
    spool.add_argument(
        "--target",
        help="send every file's commands to this base URL of the API instead of the target each file was written for; "
        f"files that name none (written by an older seven_segments) go to ${TARGET_ENV} or {DEFAULT_TARGET}",
    )
    spool.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default: 10)")
    spool.add_argument(
        "--retry-deadline", type=float, default=30.0,
        help="seconds to retry a request that fails in passing before giving up (default: 30)",
    )


def _find_command(words: Sequence[str]) -> Optional[int]:
    """The index of the command in ``words``, skipping the options (and their values) before it."""
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--":
            return index + 1 if index + 1 < len(words) else None
        if word in _GLOBAL_VALUED:
            index += 2
            continue
        if not word.startswith("-"):
            return index
        index += 1
    return None


def _one_property_per_option(words: Sequence[str]) -> List[str]:
    """``track``'s words with ``--properties a=1 b=2`` written as ``--properties a=1 --properties b=2``.

    ``--properties`` takes one ``KEY=VALUE`` per occurrence, so that it never swallows the positionals
    that follow it (``track TOKEN john --properties a=1 purchase``); the documented form, several
    ``KEY=VALUE`` after one ``--properties``, still works: each further word right after it that
    holds ``=`` and does not start with ``-`` is one more property.
    """
    result: List[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        result.append(word)
        if word == "--":
            result.extend(words[index:])
            break
        name, inline, _ = word.partition("=")
        if not (name.startswith("--") and len(name) >= 3 and "--properties".startswith(name)):
            continue
        if not inline:  # its value is the next word, whatever it is
            if index >= len(words):
                continue
            result.append(words[index])
            index += 1
        while index < len(words) and "=" in words[index] and not words[index].startswith("-"):
            result.extend(["--properties", words[index]])
            index += 1
    return result


def _prepare(words: List[str]) -> List[str]:
    """``words`` ready for the parser (``track``'s ``--properties`` one per occurrence)."""
    at = _find_command(words)
    if at is not None and words[at] == "track":
        return words[: at + 1] + _one_property_per_option(words[at + 1 :])
    return words


def _settle_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Merge the options given before the command with those after it (after wins), then defaults."""
    given_before = [
        option
        for option, dest in (("--target", "global_target"), ("--timeout", "global_timeout"), ("--verbose", "global_verbose"))
        if getattr(args, dest) not in (None, False)
    ]
    if args.command not in API_COMMANDS:
        if given_before:
            parser.error(f"{given_before[0]} before the command applies to {', '.join(API_COMMANDS)} only")
        return
    args.target = getattr(args, "target", None) or args.global_target or os.environ.get(TARGET_ENV) or DEFAULT_TARGET
    timeout = getattr(args, "timeout", None)
    args.timeout = timeout if timeout is not None else args.global_timeout if args.global_timeout is not None else 10.0
    args.verbose = bool(getattr(args, "verbose", False) or args.global_verbose)


def _settle_token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The company token of track/update/get_html: the positional, else ``$SEVEN_SEGMENTS_TOKEN``."""
    if args.command not in ("track", "update", "get_html"):
        return
    from_env = os.environ.get(TOKEN_ENV)
    if args.command == "update" and from_env and args.token is not None:
        # "update CUSTOMER KEY=VALUE KEY=VALUE" with the token from the environment: the parser took
        # the customer for the token and the first property for the customer. A customer id that
        # holds "=" is given as JSON ('{"registered": "a=b"}') or after the token.
        if "=" in args.customer and not args.customer.startswith("{"):
            args.token, args.customer, args.properties = None, args.token, [args.customer] + args.properties
    if args.token is None:
        if not from_env:
            parser.error(f"no company token: give COMPANY_TOKEN or set ${TOKEN_ENV}")
        args.token = from_env


def _password() -> str:
    password = os.environ.get(PASSWORD_ENV)
    if password:
        return password
    if not sys.stdin or not sys.stdin.isatty():
        raise UsageError(f"no password: set ${PASSWORD_ENV} or run in a terminal to be prompted")
    return getpass.getpass("7SEGMENTS password: ")


def _commands_in(request: Any) -> int:
    """How many tracking commands a request of the command line carried: 1 for crm/*, else 0
    (the command line sends no ``bulk``)."""
    return 1 if urlsplit(request.url).path.endswith(("/crm/events", "/crm/customers")) else 0


def _log_each_request(response: Any, *args: Any, **kwargs: Any) -> None:
    """A ``requests`` response hook: one line per answer (path without its query, status, commands,
    milliseconds to the answer's headers). No secret: the token travels in the body or the query."""
    request = response.request
    count = _commands_in(request)
    logger.info(
        "%s %s: HTTP %d, %d command%s, %.1f ms",
        request.method,
        urlsplit(request.url).path,
        response.status_code,
        count,
        "" if count == 1 else "s",
        response.elapsed.total_seconds() * 1000.0,
    )


def _client(args: argparse.Namespace, client: Any) -> Any:
    """``client``, logging each of its requests when ``--verbose``."""
    if args.verbose:
        client._transport._session.hooks["response"].append(_log_each_request)
    return client


def _run_track(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    client = SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout)
    with _client(args, client):
        client.track(args.event_type, parse_properties(args.properties or []), timestamp=args.timestamp)
    return EXIT_OK


def _run_update(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    client = SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout)
    with _client(args, client):
        client.update(parse_properties(args.properties), timestamp=args.timestamp)
    return EXIT_OK


def _run_get_html(args: argparse.Namespace) -> int:
    from .client import SevenSegments

    client = SevenSegments(args.token, parse_customer(args.customer), target=args.target, timeout=args.timeout)
    with _client(args, client):
        html = client.get_html(args.campaign)
    sys.stdout.write(html + "\n")
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
    client = AuthenticatedSevenSegments(args.username, _password(), target=args.target, timeout=args.timeout)
    with _client(args, client):
        result = client.export_analysis(args.analysis_type, data, token=args.token)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return EXIT_OK


def _run_serve(args: argparse.Namespace) -> int:
    from .testing.serve import run

    return run(args)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(args)


def _run_spool(args: argparse.Namespace) -> int:
    from .spool.delivery import deliver_and_report
    from .spool.report import show

    if not args.deliver:
        show(args.path, sys.stdout)
        return EXIT_OK
    if not (args.timeout > 0 and args.retry_deadline >= 0):
        raise UsageError(f"--timeout must be > 0 and --retry-deadline >= 0, not {args.timeout} and {args.retry_deadline}")
    delivered = deliver_and_report(
        args.path, args.target, default_target=os.environ.get(TARGET_ENV) or DEFAULT_TARGET, timeout=args.timeout,
        retry_deadline=args.retry_deadline, out=sys.stdout, err=sys.stderr,
    )
    return EXIT_OK if delivered else EXIT_API_ERROR


def _run_import(args: argparse.Namespace) -> int:
    from .importer import UsageProblem, run

    try:
        return run(args)
    except UsageProblem as problem:
        raise UsageError(str(problem)) from None


_COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {
    "track": _run_track,
    "update": _run_update,
    "get_html": _run_get_html,
    "export": _run_export,
    "serve": _run_serve,
    "demo": _run_demo,
    "spool": _run_spool,
    "import": _run_import,
}


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    words = _prepare(list(sys.argv[1:] if argv is None else argv))
    at = _find_command(words)
    command = words[at] if at is not None else None
    parser = build_parser(command if command in _COMMANDS else None)
    args = parser.parse_args(words)
    _settle_options(parser, args)
    _settle_token(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    verbose = bool(getattr(args, "verbose", False))
    if verbose and args.command in API_COMMANDS:
        # Our own loggers only: a dependency's debug lines are not ours to turn on.
        logging.getLogger("seven_segments").setLevel(logging.DEBUG)
    from .errors import SevenSegmentsError

    where = f"{parser.prog} {args.command}"
    try:
        status = _COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as error:
        sys.stderr.write(f"{where}: error: {error}\n")
        return EXIT_USAGE
    except (TypeError, ValueError) as error:
        sys.stderr.write(f"{where}: error: {error}\n")
        return EXIT_USAGE
    except SevenSegmentsError as error:
        sys.stderr.write(f"{where}: {type(error).__name__}: {error}\n")
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as error:  # one line, as promised; the traceback only with --verbose
        logger.debug("unexpected error", exc_info=True)
        sys.stderr.write(f"{where}: error: {type(error).__name__}: {error}\n")
        return EXIT_API_ERROR

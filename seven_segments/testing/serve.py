"""``serve``: run the local 7SEGMENTS server from the command line until Ctrl-C or SIGTERM.

``serve [--host 127.0.0.1] [--port 8765] [--db FILE] [--campaigns FILE] [--analyses FILE]
[--users-file FILE] [--user NAME:PASSWORD]... [--tokens TOKEN,...] [--latency-ms N] [--counting-only]
[--verbose] [--tls-cert FILE [--tls-key FILE] [--tls-client-ca FILE]]`` prints the URL, serves, shuts down cleanly and exits 0; when it cannot start it prints
one line on stderr and exits 1. Without ``--campaigns`` it serves :data:`DEMO_CAMPAIGNS`. Export API
users come from ``--users-file``, ``SEVEN_SEGMENTS_SERVER_USERS`` and ``--user`` together; passwords
are never printed nor logged. See ``docs/local-server.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Dict, List, Optional, Sequence, Tuple

from .server import LocalServer

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765

#: Environment variable of export API users: ``NAME:PASSWORD`` entries, one per line or separated by commas.
USERS_ENV = "SEVEN_SEGMENTS_SERVER_USERS"

#: Campaigns served when ``--campaigns`` is not given, so that the README's examples work as written.
DEMO_CAMPAIGNS: Dict[str, object] = {
    "Banner left": '<img src="/my-awesome-banner-1.png" />',
    "banner": '<img src="/my-awesome-banner-1.png" />',
    "VIP banner": {"html": "<b>Welcome back, VIP</b>", "condition": {"property": "vip", "equals": True}},
}


def _split_user(text: str) -> Optional[Tuple[str, str]]:
    name, sep, password = text.partition(":")
    if not sep or not name.strip():
        return None
    return name.strip(), password


def _user(text: str) -> str:
    if _split_user(text) is None:
        raise argparse.ArgumentTypeError("a user must be given as NAME:PASSWORD")  # the text may be a password
    return text


def _users_from(entries: List[str], where: str, unit: str) -> Dict[str, str]:
    """``NAME:PASSWORD`` entries (blank ones and ``#`` comments skipped) as a dict.

    ``ValueError`` naming ``where`` and the entry's number (``unit``: line, entry), never its text
    (it may hold a password).
    """
    users: Dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        if not entry.strip() or entry.lstrip().startswith("#"):
            continue
        user = _split_user(entry.rstrip("\r\n"))
        if user is None:
            raise ValueError(f"{where}, {unit} {number}: a user must be given as NAME:PASSWORD")
        users[user[0]] = user[1]
    return users


def _users(args: argparse.Namespace) -> Optional[Dict[str, str]]:
    """Export API users from ``--users-file``, then the environment, then ``--user`` (later ones win)."""
    users: Dict[str, str] = {}
    given = False
    if args.users_file:
        try:
            with open(args.users_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise ValueError(f"users file {args.users_file!r} cannot be read: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise ValueError(f"users file {args.users_file!r} is not UTF-8 text") from None
        users.update(_users_from(text.splitlines(), f"users file {args.users_file!r}", "line"))
        given = True
    if os.environ.get(USERS_ENV, "").strip():
        text = os.environ[USERS_ENV]
        entries = text.splitlines() if "\n" in text.strip() else text.split(",")
        users.update(_users_from(entries, f"${USERS_ENV}", "entry"))
        given = True
    for entry in args.user:
        name, password = _split_user(entry) or ("", "")
        users[name] = password
        given = True
    return users if given else None


def _latency_ms(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 60_000:
        raise argparse.ArgumentTypeError(f"--latency-ms must be a number of milliseconds from 0 to 60000, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free)")
    parser.add_argument("--db", metavar="FILE", help="SQLite file to keep data in (default: in memory)")
    parser.add_argument(
        "--campaigns", metavar="FILE",
        help="JSON file of HTML campaigns (default: demo campaigns 'Banner left' and 'banner', both "
        "'<img src=\"/my-awesome-banner-1.png\" />', and 'VIP banner' for customers with vip=true)",
    )
    parser.add_argument("--analyses", metavar="FILE", help="JSON file of export API analyses")
    parser.add_argument(
        "--users-file", metavar="FILE",
        help="export API users, one NAME:PASSWORD per line ('#' comments); also read from "
        f"${USERS_ENV} (entries separated by commas or newlines) and --user. Default, when none is "
        "given: any user with any password is accepted",
    )
    parser.add_argument(
        "--user", metavar="NAME:PASSWORD", action="append", type=_user, default=[],
        help="an export API user (repeatable; visible to other local users in the process list: prefer "
        f"--users-file or ${USERS_ENV})",
    )
    parser.add_argument(
        "--tokens", metavar="TOKEN,...", help="accept only these company tokens (default: any non-empty token)"
    )
    parser.add_argument(
        "--latency-ms", metavar="N", type=_latency_ms, default=0.0,
        help="delay every API answer by N milliseconds, as a network round trip would (default: 0)",
    )
    parser.add_argument("--counting-only", action="store_true", help="validate and count, store nothing")
    parser.add_argument("--verbose", action="store_true", help="log one line per request")
    parser.add_argument(
        "--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (and its key, unless --tls-key)"
    )
    parser.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", metavar="FILE",
        help="require a client certificate signed by this PEM CA (mutual TLS; needs --tls-cert)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve with the options parsed by :func:`add_arguments` until Ctrl-C or SIGTERM; returns the exit status."""
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    tokens: Optional[List[str]] = None
    if getattr(args, "tokens", None):
        tokens = [token.strip() for token in args.tokens.split(",") if token.strip()]
    server: Optional[LocalServer] = None
    try:
        server = LocalServer(
            args.host,
            args.port,
            db=args.db,
            campaigns=args.campaigns if args.campaigns is not None else DEMO_CAMPAIGNS,
            analyses=args.analyses,
            users=_users(args),
            tokens=tokens,
            counting_only=args.counting_only,
            verbose=args.verbose,
            latency=args.latency_ms / 1000.0,
            tls_cert=getattr(args, "tls_cert", None),
            tls_key=getattr(args, "tls_key", None),
            tls_client_ca=getattr(args, "tls_client_ca", None),
        )
        server.start()
    except (OSError, ValueError) as error:
        if server is not None:
            server.close()
        print(f"serve: {error}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    print(f"7SEGMENTS local server listening on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
    try:
        print("7SEGMENTS local server stopped", flush=True)
    except OSError:  # stdout already closed (a parent that stopped reading): nothing to tell
        pass
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and :func:`run`."""
    parser = argparse.ArgumentParser(prog="serve", description="Run the local 7SEGMENTS server.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""``serve``: run the local 7SEGMENTS server from the command line until Ctrl-C or SIGTERM.

``serve [--host 127.0.0.1] [--port 8765] [--db FILE] [--campaigns FILE] [--analyses FILE]
[--user NAME:PASSWORD]... [--tokens TOKEN,...] [--latency-ms N] [--counting-only] [--verbose]`` prints the URL, serves,
shuts down cleanly and exits 0. Passwords given with ``--user`` are never printed nor logged.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Dict, List, Optional, Sequence

from .server import LocalServer

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def _user(text: str) -> str:
    name, sep, _password = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError("a user must be given as NAME:PASSWORD")
    return text


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
    parser.add_argument("--campaigns", metavar="FILE", help="JSON file of HTML campaigns")
    parser.add_argument("--analyses", metavar="FILE", help="JSON file of export API analyses")
    parser.add_argument(
        "--user", metavar="NAME:PASSWORD", action="append", type=_user, default=[],
        help="export API user (repeatable; default: any user and password is accepted)",
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


def run(args: argparse.Namespace) -> int:
    """Serve with the options parsed by :func:`add_arguments` until Ctrl-C or SIGTERM; returns the exit status."""
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    users: Optional[Dict[str, str]] = None
    if args.user:
        users = dict(entry.split(":", 1) for entry in args.user)
    tokens: Optional[List[str]] = None
    if getattr(args, "tokens", None):
        tokens = [token.strip() for token in args.tokens.split(",") if token.strip()]
    try:
        server = LocalServer(
            args.host,
            args.port,
            db=args.db,
            campaigns=args.campaigns,
            analyses=args.analyses,
            users=users,
            tokens=tokens,
            counting_only=args.counting_only,
            verbose=args.verbose,
            latency=args.latency_ms / 1000.0,
        )
        server.start()
    except (OSError, ValueError) as error:
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

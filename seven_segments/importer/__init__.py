"""``seven-segments import``: a backfill of JSON Lines or CSV files, resumable, each line applied once.

Each line's ``command_id`` is its own when it gives one, else ``<source>-<line number>`` (see
``sources``); a checkpoint next to the input (or in ``--state``) records how far every line was
delivered or rejected (see ``state`` and ``confirm``), so a run killed at any moment and started
again sends only what follows, and the API's ``command_id`` memory turns what is sent twice into
nothing. The README's "Importing a backfill" documents the formats, the files and the exit status.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from .formats import FORMATS
from .job import IMPORT_MAX_IN_FLIGHT, Options, UsageProblem
from .job import run as run_options

__all__ = ["add_arguments", "run", "UsageProblem"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _in_flight(text: str) -> int:
    from .._buffered.limits import MAX_IN_FLIGHT

    value = _positive_int(text)
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to {MAX_IN_FLIGHT}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``import`` (``--target``, ``--timeout``, ``--verbose`` are the command line's own)."""
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="JSON Lines or CSV files, .gz read as they are; - for standard input")
    parser.add_argument("--format", choices=FORMATS, help="jsonl or csv (default: csv for *.csv and *.csv.gz, else jsonl)")
    parser.add_argument(
        "--source-id", metavar="NAME",
        help="name the input in its lines' command ids instead of its content's hash (needed for -; keeps the ids of "
        "an edited file)",
    )
    parser.add_argument("--state", metavar="DIR", help="keep checkpoints and rejects here (default: next to each input)")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue after the checkpoint, when there is one (the default)")
    resume.add_argument("--restart", action="store_true", help="ignore the checkpoint and read from the first line")
    parser.add_argument("--dry-run", action="store_true", help="check every line, send nothing, print the summary")
    parser.add_argument("--max-errors", type=_positive_int, default=1000, metavar="N",
                        help="stop once more than N lines of an input were rejected (default: 1000)")
    parser.add_argument("--max-in-flight", type=_in_flight, default=IMPORT_MAX_IN_FLIGHT, metavar="N",
                        help=f"requests in flight at once, 1 to 32 (default: {IMPORT_MAX_IN_FLIGHT})")
    parser.add_argument("--retry-deadline", type=float, default=300.0, metavar="SECONDS",
                        help="how long passing failures are retried before the import stops (default: 300)")
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between two progress lines when standard error is not a terminal (default: 10)")


def run(args: argparse.Namespace) -> int:
    """Run ``import`` with the parsed ``args``; the exit status (``UsageProblem`` for exit status 2)."""
    if not (0 < args.progress_interval < math.inf) or not 0 <= args.retry_deadline < math.inf:
        raise UsageProblem("--progress-interval must be a number > 0 and --retry-deadline a number >= 0")
    options = Options(
        inputs=list(args.inputs), target=args.target, timeout=args.timeout, format=args.format,
        source_id=args.source_id, state=args.state, restart=args.restart, dry_run=args.dry_run,
        max_errors=args.max_errors, max_in_flight=args.max_in_flight, retry_deadline=args.retry_deadline,
        progress_interval=args.progress_interval,
    )
    if options.source_id is not None:
        from ..serialization import check_command_id

        try:
            check_command_id(options.source_id)
        except ValueError:
            raise UsageProblem(f"--source-id {options.source_id!r} must be 1 to 64 characters of [A-Za-z0-9_-]") from None
    from ..cli import TOKEN_ENV

    return run_options(options, os.environ.get(TOKEN_ENV) or None, sys.stdout, sys.stderr)

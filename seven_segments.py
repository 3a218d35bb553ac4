#!/usr/bin/env python3
"""The 7SEGMENTS command line, run from a checkout: ``./seven_segments.py track|update|get_html|export|serve|demo``.

The same program as the ``seven-segments`` console script and ``python -m seven_segments``.
"""

import sys

try:
    from seven_segments.cli import main
except ImportError as error:  # a missing dependency: one line, as every failure of the command line
    sys.exit(f"{sys.argv[0]}: error: {error}")

if __name__ == "__main__":
    sys.exit(main())

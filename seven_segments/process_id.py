"""The current process id for the price of reading one byte: ``track`` needs it at every call.

A forked child must never queue through its parent's engine or make command ids with its parent's
prefix, even when the fork skipped ``os.register_at_fork`` hooks (uwsgi forks its workers so): every
``track`` compares the process id with the one its client was made in. ``os.getpid()`` tells, but it
is a system call (the C library no longer caches it), one per call. Here a private anonymous page
marked ``MADV_WIPEONFORK`` (Linux 4.14 and later) holds a 1 in this process and reads 0 in any
process the kernel forks from it, whoever forks: the id is asked of the kernel again only then.
Where no such page can be made (another system, an older kernel, a sandbox that refuses the
advice), :data:`current_pid` is ``os.getpid`` itself.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Callable, Optional

__all__ = ["current_pid", "fork_watching_page"]

#: Linux's ``MADV_WIPEONFORK`` (the ``mmap`` module names it from Python 3.12 on only).
_WIPE_ON_FORK: Optional[int] = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)


def fork_watching_page() -> Optional[mmap.mmap]:
    """A page of this process's own that reads 1 here and 0 in a forked child; None where the
    system cannot make one."""
    if _WIPE_ON_FORK is None or not hasattr(mmap.mmap, "madvise"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)  # anonymous: fd -1
    except (OSError, ValueError):  # pragma: no cover - no anonymous private mapping here
        return None
    try:
        page.madvise(_WIPE_ON_FORK)
    except OSError:  # pragma: no cover - a kernel before 4.14, or a sandbox that refuses it
        page.close()
        return None
    page[0] = 1
    return page


_PAGE = fork_watching_page()
_pid = os.getpid()


def _current_pid_by_page() -> int:
    """The current process id (see the module's docstring)."""
    global _pid
    if _PAGE[0]:  # type: ignore[index]  # only used when the page was made
        return _pid
    # A child forked since the last look: read the id, then mark the page (a thread that sees the
    # mark also sees the id).
    _pid = os.getpid()
    _PAGE[0] = 1  # type: ignore[index]
    return _pid


#: ``current_pid() -> int``: what ``os.getpid()`` returns, without a system call on this process's
#: later calls.
current_pid: Callable[[], int] = os.getpid if _PAGE is None else _current_pid_by_page

"""The current process id for the price of reading one byte: ``track`` needs it at every call.

A forked child must never queue through its parent's engine or make command ids with its parent's
prefix, even when the fork skipped ``os.register_at_fork`` hooks (uwsgi forks its workers so): every
``track`` compares the process id with the one its client was made in. ``os.getpid()`` tells, but it
is a system call (the C library no longer caches it), one per call. Here a private anonymous page
marked ``MADV_WIPEONFORK`` (Linux 4.14 and later) holds a 1 in this process and reads 0 in any
process the kernel forks from it, whoever forks: the id is asked of the kernel again only then.

The page is made at the first look, and trusted only when the kernel lists it as wiped on fork
(``wf`` in ``/proc/self/smaps``): an emulator may accept the advice and ignore it (qemu-user does),
and a child would then take its parent's id. Where no such page can be made (another system, an
older kernel, a sandbox that refuses the advice, no ``ctypes``), every look is ``os.getpid()``.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Optional

__all__ = ["current_pid", "fork_watching_page"]

#: Linux's ``MADV_WIPEONFORK`` (the ``mmap`` module names it from Python 3.12 on only).
_WIPE_ON_FORK: Optional[int] = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform.startswith("linux") else None)

#: The page, once made and checked; None before the first look, or where there is none.
_PAGE: Optional[mmap.mmap] = None
_looked = False
_pid = 0


def current_pid() -> int:
    """What ``os.getpid()`` returns, without a system call on this process's later calls."""
    page = _PAGE
    if page is not None and page[0]:
        return _pid
    return _look()


def _look() -> int:
    """The first look of this process, or the first since a fork, or every look without a page."""
    global _PAGE, _looked, _pid
    if not _looked:
        _looked = True
        _PAGE = fork_watching_page()
    pid = _pid = os.getpid()
    page = _PAGE
    if page is not None:
        page[0] = 1  # after the id: a thread that sees the mark sees the id
    return pid


def fork_watching_page() -> Optional[mmap.mmap]:
    """A page of this process's own that the kernel wipes in a forked child (reading 0), made here
    reading 0; None where the system cannot make one, or does not show that it will wipe it."""
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
    if not _listed_as_wiped_on_fork(page):
        page.close()
        return None
    return page


def _listed_as_wiped_on_fork(page: mmap.mmap) -> bool:
    """Whether ``/proc/self/smaps`` lists ``page``'s mapping with the ``wf`` flag."""
    try:
        import ctypes

        view = ctypes.c_char.from_buffer(page)
        address = ctypes.addressof(view)
        del view  # the page may be closed again
    except (ImportError, TypeError, ValueError, AttributeError):  # pragma: no cover - no ctypes here
        return False
    try:
        with open("/proc/self/smaps", "rb") as smaps:
            inside = False
            for line in smaps:
                if not inside:
                    start, dash, rest = line.partition(b"-")
                    if dash and b" " not in start:
                        try:
                            inside = int(start, 16) <= address < int(rest.split(b" ", 1)[0], 16)
                        except ValueError:
                            continue
                elif line.startswith(b"VmFlags:"):
                    return b"wf" in line.split()[1:]
    except OSError:  # pragma: no cover - no /proc
        return False
    return False  # pragma: no cover - the mapping was not listed

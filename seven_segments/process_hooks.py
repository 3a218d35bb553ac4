"""Closing buffered clients where a process ends without ``atexit``: SIGTERM, multiprocessing, billiard.

The buffered engine calls :func:`arm` with its ``close_all`` function (which closes every live buffered
client, each within its ``shutdown_timeout``, and is idempotent) whenever a buffered client is made or
its background thread starts. ``arm`` is cheap after the first call in a process and idempotent; in a
forked child it arms again for the child. What it arranges, once per process:

- **SIGTERM** (``docker stop``, Kubernetes, systemd, ``kill``): when called on the main thread while
  SIGTERM has its default disposition, it installs a handler that first closes the buffered clients
  and then ends the process by SIGTERM as before (default disposition restored, the signal raised
  again: the same exit status, -15 / 143). When the signal interrupted a thread holding a lock that
  closing needs (see :func:`register_lock_check`), it is handled again a moment later. A handler that
  the application or its framework set is
  never replaced; a framework that later restores the previous handler (ours) and raises the signal
  again (uvicorn does) runs ours then. A second SIGTERM while closing ends the process at once. Under
  uwsgi (which handles its workers' signals itself) nothing is installed. Turn it off with the
  environment variable ``SEVEN_SEGMENTS_SIGTERM=0`` or :func:`disable_sigterm_handler`.
- **multiprocessing** children end with ``os._exit()`` after the module's finalizers: a
  ``multiprocessing.util.Finalize`` closes the clients there.
- **billiard** (Celery's prefork pool): a pool process that is recycled (``maxtasksperchild``,
  Celery's ``worker_max_tasks_per_child``) or told to stop ends with ``os._exit()`` without running
  any finalizer; the clients are closed just before, by wrapping ``billiard.pool.Worker._do_exit``
  (plain ``billiard.Process`` children run the finalizers, whose registry billiard shares with
  ``multiprocessing``, or a billiard ``Finalize`` where it does not).
- **uwsgi** before 2.0.27 runs no Python thread unless started with ``--enable-threads`` (or
  ``--threads``): :func:`warn_if_threads_disabled` logs one clear warning.

Every background thread of seven_segments also calls :func:`keep_signals_off_this_thread` first. The
kernel hands a signal sent to the process (``kill``, ``docker stop``, Ctrl-C) to any thread that does
not block it, and Python runs its handler on the main thread only when that thread next runs Python
code: a signal that landed on one of our threads left a main thread waiting in ``time.sleep()`` or
``join()`` asleep, its SIGTERM or SIGINT handler (ours or the application's) late by the whole wait.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "SIGTERM_ENV",
    "arm",
    "disable_sigterm_handler",
    "keep_signals_off_this_thread",
    "sigterm_handler_installed",
    "warn_if_threads_disabled",
]

logger = logging.getLogger(__name__)

#: Set to ``0`` (or ``false``, ``no``, ``off``) to keep seven_segments from installing its SIGTERM handler.
SIGTERM_ENV = "SEVEN_SEGMENTS_SIGTERM"
#: The longest the SIGTERM handler waits for the clients to close. ``close_all`` keeps each client's
#: ``shutdown_timeout`` by itself; this bound only matters if closing is stuck (for example on a lock
#: held by the very code the signal interrupted), so that SIGTERM still ends the process.
SIGTERM_CLOSE_LIMIT = 60.0
#: When the interrupted code holds a lock the close needs, SIGTERM is sent again after this long...
SIGTERM_RETRY_SECONDS = 0.005
#: ... at most this many times (then the close goes ahead, bounded by SIGTERM_CLOSE_LIMIT).
SIGTERM_RETRIES = 200

#: Questions "does this thread hold a lock that closing the clients needs?" (the spool's, asked by
#: the SIGTERM handler, which runs on the interrupted thread and would otherwise wait for itself).
_lock_checks: List[Callable[[], bool]] = []
_sigterm_retries = 0
#: uwsgi runs Python threads without ``--enable-threads`` from this version on.
UWSGI_THREADS_BY_DEFAULT = (2, 0, 27)

_callbacks: List[Callable[[], None]] = []
_armed_pid = 0  # the process whose exit hooks are registered
_sigterm_pid = 0  # the process in which the SIGTERM question was settled on the main thread
_sigterm_disabled = False
_closing_pid = 0  # a SIGTERM close is under way in this process
_uwsgi_checked_pid = 0
#: One lock per process (a lock inherited through fork could be held by a thread the child lacks).
_locks: Dict[int, threading.Lock] = {}


def _lock() -> threading.Lock:
    return _locks.setdefault(os.getpid(), threading.Lock())


def arm(close_all: Callable[[], None]) -> None:
    """Arrange that ``close_all`` runs where this process may end without ``atexit`` (see the module).

    Called by the buffered engine whenever a client is made or its thread starts; cheap and
    idempotent. On a thread other than the main one it cannot install a SIGTERM handler; later
    calls check again until one runs on the main thread.
    """
    pid = os.getpid()
    if _armed_pid == pid and _sigterm_pid == pid and close_all in _callbacks:
        return  # the usual call: everything is settled in this process
    _arm(close_all, pid)


def _arm(close_all: Callable[[], None], pid: int) -> None:
    global _armed_pid
    with _lock():
        if close_all not in _callbacks:
            _callbacks.append(close_all)
        if _armed_pid != pid:
            _armed_pid = pid
            _register_exit_hooks()
    if _sigterm_pid != pid:
        _settle_sigterm(pid)
    if _uwsgi_checked_pid != pid:
        warn_if_threads_disabled()


def _close_all(why: str) -> None:
    """Run every registered ``close_all`` (each is idempotent), logging rather than raising."""
    for close_all in list(_callbacks):
        try:
            close_all()
        except Exception:
            logger.exception("seven_segments: closing the buffered clients at %s failed", why)


# --------------------------------------------------------------------------------------------
# multiprocessing and billiard


def _register_exit_hooks() -> None:
    """Register this process's exit hooks (once per process; the caller holds the lock)."""
    registered = set()
    for name in ("multiprocessing.util", "billiard.util"):
        util = sys.modules.get(name)
        finalize = getattr(util, "Finalize", None)
        # billiard.util re-exports multiprocessing's Finalize (one registry): register it once.
        if finalize is None or id(finalize) in registered:
            continue
        registered.add(id(finalize))
        finalize(None, _close_all, args=(f"{name.split('.')[0]} exit",), exitpriority=100)
    _wrap_billiard_worker_exit()


def _wrap_billiard_worker_exit() -> None:
    """Close the clients before a billiard pool process ends with ``os._exit()`` (recycled or stopped)."""
    pool = sys.modules.get("billiard.pool")
    worker = getattr(pool, "Worker", None)
    original = getattr(worker, "_do_exit", None)
    if worker is None or not callable(original) or getattr(original, "_seven_segments_wrapped", False):
        return

    def _do_exit(self: Any, *args: Any, **kwargs: Any) -> Any:
        _close_all("billiard pool process exit")
        return original(self, *args, **kwargs)

    _do_exit._seven_segments_wrapped = True  # type: ignore[attr-defined]
    _do_exit.__doc__ = getattr(original, "__doc__", None)
    worker._do_exit = _do_exit


# --------------------------------------------------------------------------------------------
# SIGTERM


def _sigterm_allowed() -> bool:
    value = os.environ.get(SIGTERM_ENV, "").strip().lower()
    return not _sigterm_disabled and value not in ("0", "false", "no", "off")


def _settle_sigterm(pid: int) -> None:
    """Install our handler if SIGTERM has its default disposition; settled unless off the main thread."""
    global _sigterm_pid
    if not _sigterm_allowed() or "uwsgi" in sys.modules:
        _sigterm_pid = pid
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            # Raises ValueError off the main thread (the check eventlet's patched threading cannot
            # make): then a later call, on the main thread, tries again.
            signal.signal(signal.SIGTERM, _on_sigterm)
            logger.debug("seven_segments: SIGTERM will close the buffered clients first")
    except ValueError:
        return
    except OSError:  # signals unavailable here
        pass
    _sigterm_pid = pid  # installed, or somebody else's handler is there: never replaced


def sigterm_handler_installed() -> bool:
    """True when SIGTERM currently runs seven_segments' handler (close the clients, then end)."""
    return signal.getsignal(signal.SIGTERM) is _on_sigterm


def disable_sigterm_handler() -> None:
    """Never install the SIGTERM handler in this process; remove it if it is installed (main thread).

    The same as starting the process with ``SEVEN_SEGMENTS_SIGTERM=0``. Buffered clients are then
    closed at a normal exit only (``atexit``), not when SIGTERM with its default disposition ends the
    process.
    """
    global _sigterm_disabled
    _sigterm_disabled = True
    if sigterm_handler_installed():
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # off the main thread: ours stays, but does nothing but end the process
            pass


def register_lock_check(check: Callable[[], bool]) -> None:
    """Have the SIGTERM handler ask ``check()`` whether the interrupted thread holds a lock that
    closing the clients needs; if so, the signal is handled again a moment later, once it is free.
    Idempotent."""
    if check not in _lock_checks:
        _lock_checks.append(check)


def _holding_a_needed_lock() -> bool:
    for check in list(_lock_checks):
        try:
            if check():
                return True
        except Exception:  # a question that fails must not keep the process from ending
            pass
    return False


def _on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    """Close the buffered clients (bounded), then end the process by the same signal."""
    global _closing_pid, _sigterm_retries
    previous = signal.getsignal(signum)
    # From now on SIGTERM has its default disposition: a second one ends the process at once.
    try:
        signal.signal(signum, signal.SIG_DFL)
    except ValueError:  # called as a plain function off the main thread by a chaining handler
        previous = None
    pid = os.getpid()
    if _closing_pid == pid or not _sigterm_allowed():
        _end_by(signum)
    if previous is not None and _sigterm_retries < SIGTERM_RETRIES and not _green_threads() and _holding_a_needed_lock():
        # The signal landed while this thread holds a lock the close needs (in the middle of a
        # spool append): waiting for the close here would wait for ourselves (up to
        # SIGTERM_CLOSE_LIMIT). Let the interrupted code go on; the signal comes again shortly.
        _sigterm_retries += 1
        try:
            signal.signal(signum, previous)
            threading.Thread(target=_signal_again, args=(pid, signum), name="seven-segments-sigterm", daemon=True).start()
            return
        except BaseException:  # cannot defer: go ahead (bounded by SIGTERM_CLOSE_LIMIT)
            signal.signal(signum, signal.SIG_DFL)
    _closing_pid = pid
    if _green_threads():
        # gevent/eventlet: this handler may be running in the hub, which must not block; a new
        # green thread closes and then ends the process, while the hub keeps the clients' I/O going.
        try:
            _spawn_green(_close_then_end, signum)
            return
        except BaseException:
            logger.exception("seven_segments: cannot start a green thread to close the clients at SIGTERM")
            _end_by(signum)
    try:
        # On a helper thread, so that a lock held by the interrupted code cannot hang us forever.
        closer = threading.Thread(target=_close_at_sigterm, name="seven-segments-sigterm", daemon=True)
        try:
            closer.start()
        except RuntimeError:  # the interpreter is finalizing and starts no thread: close here
            _close_all("SIGTERM")
        else:
            closer.join(SIGTERM_CLOSE_LIMIT)
        if closer.is_alive():
            logger.warning("seven_segments: closing at SIGTERM took over %g s; ending anyway", SIGTERM_CLOSE_LIMIT)
    except BaseException:  # never keep the process from ending as it was asked to
        logger.exception("seven_segments: closing the buffered clients at SIGTERM failed")
    _end_by(signum)


def _signal_again(pid: int, signum: int) -> None:
    keep_signals_off_this_thread()
    time.sleep(SIGTERM_RETRY_SECONDS)
    try:
        os.kill(pid, signum)
    except OSError:  # pragma: no cover - the process is ending anyway
        pass


def _close_at_sigterm() -> None:
    keep_signals_off_this_thread()
    _close_all("SIGTERM")


def _close_then_end(signum: int) -> None:
    try:
        _close_all("SIGTERM")
    finally:
        _end_by(signum)


def _green_threads() -> bool:
    """True when ``threading`` is monkey-patched into green threads (gevent, eventlet)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return True
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


def _spawn_green(target: Callable[[int], None], signum: int) -> None:
    """Run ``target(signum)`` in a new green thread, without switching to it: this may run in the hub,
    which cannot wait, and ``threading.Thread.start`` waits until the thread has started (eventlet
    then raises "Cannot switch to MAINLOOP from MAINLOOP")."""
    monkey = sys.modules.get("gevent.monkey")
    library: Any = sys.modules["gevent" if monkey is not None and monkey.is_module_patched("threading") else "eventlet"]
    library.spawn(target, signum)  # scheduled: it runs at the hub's next turn


def _end_by(signum: int) -> None:
    """End this process by ``signum`` with its default disposition (the exit status a plain kill gives)."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    except (AttributeError, OSError, ValueError):
        pass
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # only if the signal did not end us (it should have, before kill returned)


# --------------------------------------------------------------------------------------------
# Signals and our threads

#: Signals sent to a whole process from outside it (those this platform lacks are left out).
PROCESS_SIGNALS = frozenset(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGCHLD", "SIGWINCH")
    if hasattr(signal, name)
)


def keep_signals_off_this_thread() -> None:
    """Block :data:`PROCESS_SIGNALS` in the calling thread, one of seven_segments' background threads,
    so that the kernel delivers them to the application's threads (see the module's docstring).

    Does nothing where threads are green (gevent, eventlet: they all run on the main thread, whose
    signals must stay as they are), on the main thread, or without ``pthread_sigmask``.
    """
    if not hasattr(signal, "pthread_sigmask") or _green_threads():
        return
    if threading.get_native_id() == threading.main_thread().native_id:
        return
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
    except (OSError, ValueError):  # pragma: no cover - a platform that refuses: signals go anywhere
        pass


# --------------------------------------------------------------------------------------------
# uwsgi


def _uwsgi_version(uwsgi: Any) -> Optional[Tuple[int, ...]]:
    raw = getattr(uwsgi, "version", None)
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw or "")
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) if parts else None


def threads_hang_forks_here() -> bool:
    """True in a uwsgi master (worker id 0, not a mule nor the spooler) that forks its workers
    without CPython's fork protocol.

    uwsgi forks from C and, unless started with ``--py-call-uwsgi-fork-hooks``, skips what
    ``os.fork()`` does for the interpreter: a worker forked while another thread of the master held
    the interpreter's lock waits for that lock for ever (seen here: 1 start in 5 to 25 hung every
    worker, stuck in ``take_gil``, when the master ran a client's thread). So no thread of ours
    starts in such a process: the client queues there, and ``flush()``/``close()`` deliver on the
    calling thread; the workers, forked with a client of their own, start theirs as usual.
    """
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    options = getattr(uwsgi, "opt", None) or {}
    if "py-call-uwsgi-fork-hooks" in options or b"py-call-uwsgi-fork-hooks" in options:
        return False
    try:  # the master has worker id 0, as do a mule (mule id > 0) and the spooler, which fork nothing
        if int(uwsgi.worker_id()) != 0 or int(getattr(uwsgi, "mule_id", lambda: 0)()) != 0:
            return False
        return not getattr(uwsgi, "i_am_the_spooler", lambda: False)()
    except Exception:  # an unknown uwsgi: assume a worker, as before
        return False


def warn_if_threads_disabled() -> bool:
    """Under uwsgi with Python threads off, log one warning per process; True when it warned.

    uwsgi before 2.0.27 runs no Python thread (the buffered client's sender among them) unless it is
    started with ``--enable-threads`` or ``--threads N``: events would then wait, undelivered, until a
    request happens to let the thread run, and may be lost at exit.
    """
    global _uwsgi_checked_pid
    _uwsgi_checked_pid = os.getpid()
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return False
    options = getattr(uwsgi, "opt", None) or {}
    if any(name in options for name in ("enable-threads", "threads")):
        return False
    version = _uwsgi_version(uwsgi)
    if version is not None and version >= UWSGI_THREADS_BY_DEFAULT:
        return False
    logger.warning(
        "seven_segments: uwsgi %s runs without Python threads: the buffered client's sender thread "
        "cannot run, so events wait and may be lost. Start uwsgi with --enable-threads (or --threads N), "
        "or use a blocking client (buffered=False)",
        ".".join(map(str, version)) if version else "(unknown version)",
    )
    return True

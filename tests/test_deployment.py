"""Where applications really run: SIGTERM, billiard (Celery's pool), gevent, eventlet, uwsgi.

Each test runs a real process (a script in a temporary directory, or a real uwsgi) against the local
server and sends it real signals; every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from seven_segments import process_hooks
from seven_segments.testing import LocalServer

from .conftest import TOKEN, wait_until

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(60)

HEADER = """
import logging, os, signal, sys, time
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
url = sys.argv[1]
def ready(text="ready"):
    sys.stdout.write(text + "\\n")
    sys.stdout.flush()
def wait_for_signal(seconds=30.0):
    # Short sleeps, not one long one: CPython runs a handler for a signal that arrives just as the
    # main thread enters a blocking call only when that call returns.
    for _ in range(int(seconds / 0.05)):
        time.sleep(0.05)
"""


def needs(*libraries: str) -> None:
    """Skip unless the libraries are installed; never import them here (gevent and eventlet would
    change this test process: eventlet warns at every fork)."""
    for library in libraries:
        if importlib.util.find_spec(library) is None:
            pytest.skip(f"{library} is not installed")


class Run:
    """A script started in its own process, talking to the local server."""

    def __init__(self, tmp_path: Path, body: str, url: str, env: Optional[Dict[str, str]] = None) -> None:
        script = tmp_path / "app.py"
        script.write_text(HEADER + textwrap.dedent(body))
        environment = dict(os.environ, PYTHONPATH=str(ROOT))
        environment.pop(process_hooks.SIGTERM_ENV, None)
        environment.update(env or {})
        self.process = subprocess.Popen(
            [sys.executable, str(script), url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=str(tmp_path),
        )
        self.lines: List[str] = []

    def wait_for(self, text: str = "ready") -> None:
        """Read stdout until a line ``text`` (the script prints it when it reached that point)."""
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            assert line, f"the script ended before {text!r}: {self.finish()}"
            self.lines.append(line.strip())
            if line.strip() == text:
                return

    def kill(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 30.0) -> Dict[str, Any]:
        """Wait for the end: exit status, the rest of stdout, stderr, seconds taken."""
        started = time.monotonic()
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            raise AssertionError(f"the script did not end within {timeout} s: {stderr}")
        return {
            "code": self.process.returncode,
            "stdout": self.lines + stdout.splitlines(),
            "stderr": stderr,
            "seconds": time.monotonic() - started,
        }


# --------------------------------------------------------------------------------------------
# SIGTERM

TRACK_AND_WAIT = """
from seven_segments import SevenSegments
client = SevenSegments("term-token", "john", target=url, buffered=True, flush_interval=60, shutdown_timeout=SHUTDOWN)
for number in range(COUNT):
    client.track("view", {"n": number})
ready()
wait_for_signal()  # SIGTERM comes here; nothing flushes or closes
sys.exit(7)
"""


def track_and_wait(count: int = 5000, shutdown: float = 5.0) -> str:
    return TRACK_AND_WAIT.replace("COUNT", str(count)).replace("SHUTDOWN", repr(shutdown))


def test_sigterm_with_the_default_disposition_delivers_everything_then_ends_by_sigterm(
    server: LocalServer, tmp_path: Path
) -> None:
    run = Run(tmp_path, track_and_wait(5000), server.url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM, result["stderr"]
    assert server.stats()["events"] == 5000
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(5000))
    assert result["stderr"] == ""


@pytest.mark.parametrize("how", ["environment", "function"])
def test_with_the_handler_turned_off_sigterm_ends_the_process_as_before(how: str, server: LocalServer, tmp_path: Path) -> None:
    body = track_and_wait(500)  # under one batch: nothing is sent before the flush interval (60 s)
    env = {process_hooks.SIGTERM_ENV: "0"} if how == "environment" else {}
    if how == "function":
        body = "from seven_segments import process_hooks\nprocess_hooks.disable_sigterm_handler()\n" + body
    run = Run(tmp_path, body, server.url, env)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM
    assert server.stats()["events"] == 0  # the old behaviour: the queue dies with the process


def test_the_applications_own_sigterm_handler_is_kept(server: LocalServer, tmp_path: Path) -> None:
    body = textwrap.dedent(
        """
        def on_term(signum, frame):
            ready("the app's handler ran")
            sys.exit(3)  # a normal exit: atexit closes the client
        signal.signal(signal.SIGTERM, on_term)
        """
    ) + track_and_wait(2000)
    run = Run(tmp_path, body, server.url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == 3, result["stderr"]
    assert "the app's handler ran" in result["stdout"]
    assert server.stats()["events"] == 2000


def test_a_framework_that_restores_the_previous_handler_and_raises_again_runs_ours(
    server: LocalServer, tmp_path: Path
) -> None:
    """What uvicorn does: its handler for the graceful shutdown, then the previous one, then the signal again."""
    body = """
    from seven_segments import SevenSegments, process_hooks
    client = SevenSegments("term-token", "john", target=url, buffered=True, flush_interval=60)
    assert process_hooks.sigterm_handler_installed()
    caught = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))  # the framework starts
    for number in range(3000):
        client.track("view", {"n": number})
    ready()
    end = time.monotonic() + 20
    while not caught and time.monotonic() < end:
        time.sleep(0.01)  # serving
    for number in range(3000, 3500):
        client.track("view", {"n": number})  # its graceful shutdown still tracks
    signal.signal(signal.SIGTERM, previous)
    signal.raise_signal(signal.SIGTERM)
    sys.exit(7)
    """
    run = Run(tmp_path, body, server.url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM, result["stderr"]
    assert server.stats()["events"] == 3500


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: the SigCgt mask in /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    raise AssertionError(f"no SigCgt line for process {pid}")


def blocked_signals(native_id: int) -> int:
    """The signal mask of thread ``native_id`` of this process (Linux: SigBlk in /proc)."""
    with open(f"/proc/self/task/{native_id}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk line for thread {native_id}")


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_our_threads_leave_signals_sent_to_the_process_to_the_applications_threads(server: LocalServer) -> None:
    import threading

    from seven_segments import SevenSegments

    # The kernel hands a process's signal to any thread not blocking it, and Python runs the handler
    # on the main thread only when it next runs Python code: one that landed on our threads left a
    # main thread in time.sleep() asleep until the sleep ended.
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, batch_size=10)
    try:
        for number in range(100):
            client.track("view", {"n": number})
        assert client.flush(timeout=10)
        client_threads = {"seven-segments-worker", "seven-segments-sender", "seven-segments-watchdog"}
        ours = [thread for thread in threading.enumerate() if thread.name in client_threads]
        assert {thread.name for thread in ours} == client_threads
        for thread in ours:
            assert thread.native_id is not None
            mask = blocked_signals(thread.native_id)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD):
                assert mask >> (signum - 1) & 1, (thread.name, signum)
        main = threading.main_thread().native_id
        assert main is not None and not blocked_signals(main) >> (signal.SIGTERM - 1) & 1
    finally:
        client.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc")
def test_sigterm_with_the_api_down_ends_within_shutdown_timeout_and_a_second_sigterm_at_once(
    dead_url: str, tmp_path: Path
) -> None:
    run = Run(tmp_path, track_and_wait(1000, shutdown=1.0), dead_url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM
    assert result["seconds"] < 2.5, result
    assert "1000 commands were lost at close" in result["stderr"]
    assert "term-token" not in result["stderr"]

    run = Run(tmp_path, track_and_wait(1000, shutdown=20.0), dead_url)
    run.wait_for()
    assert catches_sigterm(run.process.pid)
    run.kill(signal.SIGTERM)
    # Our handler's first act is to give SIGTERM back its default disposition: then it is closing
    # (two signals sent before it ran would have merged into one).
    assert wait_until(lambda: not catches_sigterm(run.process.pid), 10)
    assert run.process.poll() is None  # closing, retrying against the dead API
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM
    assert result["seconds"] < 2.0, result


def test_a_client_made_off_the_main_thread_arms_sigterm_at_the_next_main_thread_client(
    server: LocalServer, tmp_path: Path
) -> None:
    body = """
    import threading
    from seven_segments import SevenSegments, process_hooks
    made = []
    def make():
        made.append(SevenSegments("term-token", "a", target=url, buffered=True, flush_interval=60))
        made[0].track("from-thread")
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    ready("off main: %s" % process_hooks.sigterm_handler_installed())
    client = SevenSegments("term-token", "b", target=url, buffered=True, flush_interval=60)
    ready("on main: %s" % process_hooks.sigterm_handler_installed())
    client.track("from-main")
    ready()
    wait_for_signal()
    """
    run = Run(tmp_path, body, server.url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["stdout"][:2] == ["off main: False", "on main: True"]
    assert result["code"] == -signal.SIGTERM
    assert sorted(event["type"] for event in server.events()) == ["from-main", "from-thread"]


# --------------------------------------------------------------------------------------------
# billiard: Celery's prefork pool


BILLIARD_POOL = """
import billiard
from seven_segments import SevenSegments
client = SevenSegments("pool-token", "parent", target=url, buffered=True, flush_interval=60)  # made before the pool, as a tasks module does

def task(number):
    for index in range(100):
        client.track("task-event", {"task": number, "i": index}, customer="task-%d" % number)
    return os.getpid()

if __name__ == "__main__":
    pool = billiard.Pool(2, maxtasksperchild=1)  # every process is recycled after one task
    pids = pool.map(task, range(4))
    pool.close()
    pool.join()
    ready("processes %d" % len(set(pids)))
"""


def test_billiard_pool_processes_recycled_after_each_task_deliver_their_events(server: LocalServer, tmp_path: Path) -> None:
    needs("billiard")
    run = Run(tmp_path, BILLIARD_POOL, server.url)
    result = run.finish()
    assert result["code"] == 0, result["stderr"]
    assert "processes 4" in result["stdout"]  # four processes, each ended with os._exit()
    assert server.stats()["events"] == 400
    assert server.stats()["duplicates"] == 0


# --------------------------------------------------------------------------------------------
# gevent and eventlet

#: How each library turns threads, sockets and ``os.fork`` green.
GREEN = {"gevent": "from gevent import monkey\nmonkey.patch_all()\n", "eventlet": "import eventlet\neventlet.monkey_patch()\n"}

GREEN_FLUSH = """
from seven_segments import SevenSegments
client = SevenSegments("green-token", "john", target=url, buffered=True, flush_interval=60)
for number in range(2000):
    client.track("view", {"n": number})
ready("flushed %s" % client.flush(10))
for number in range(2000, 2200):
    client.track("view", {"n": number})  # and simply end: no flush, no close
"""

GREEN_FORK = """
from seven_segments import SevenSegments
client = SevenSegments("green-token", "parent", target=url, buffered=True, flush_interval=60)
client.track("parent-event")
assert client.flush(10)
pid = os.fork()
if pid == 0:
    for number in range(300):
        client.track("child-event", {"n": number}, customer="child")
    sys.exit(0)  # the child simply ends
_, status = os.waitpid(pid, 0)
client.track("parent-event")
ready("child %d" % status)
"""


def green(library: str, body: str) -> str:
    needs(library)
    return GREEN[library] + body


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("library", sorted(GREEN))
def test_green_threads_flush_and_exit_without_flush_deliver(library: str, server: LocalServer, tmp_path: Path) -> None:
    result = Run(tmp_path, green(library, GREEN_FLUSH), server.url).finish()
    assert result["code"] == 0, result["stderr"]
    assert "flushed True" in result["stdout"]
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(2200))


@pytest.mark.parametrize("library", sorted(GREEN))
def test_green_threads_a_client_made_before_fork_delivers_in_the_child(
    library: str, server: LocalServer, tmp_path: Path
) -> None:
    result = Run(tmp_path, green(library, GREEN_FORK), server.url).finish()
    assert result["code"] == 0, result["stderr"]
    assert "child 0" in result["stdout"]
    kinds = [event["type"] for event in server.events()]
    assert kinds.count("child-event") == 300 and kinds.count("parent-event") == 2
    assert server.stats()["duplicates"] == 0


@pytest.mark.parametrize("library", sorted(GREEN))
def test_green_threads_sigterm_delivers(library: str, server: LocalServer, tmp_path: Path) -> None:
    """The handler may run inside the hub, which must not block: a green thread closes, then ends."""
    run = Run(tmp_path, green(library, track_and_wait(2000)), server.url)
    run.wait_for()
    run.kill(signal.SIGTERM)
    result = run.finish()
    assert result["code"] == -signal.SIGTERM, result["stderr"]
    assert server.stats()["events"] == 2000, result["stderr"]


#: A SIGTERM whose handler runs inside the hub: the process sends it from a callback of the hub's loop.
SIGTERM_IN_THE_HUB = {
    "eventlet": "from eventlet import hubs\nhubs.get_hub().schedule_call_global(0.01, os.kill, os.getpid(), signal.SIGTERM)\n",
    "gevent": "import gevent\ngevent.get_hub().loop.run_callback(os.kill, os.getpid(), signal.SIGTERM)\n",
}


@pytest.mark.parametrize("library", sorted(GREEN))
def test_green_threads_sigterm_handled_inside_the_hub_delivers(library: str, server: LocalServer, tmp_path: Path) -> None:
    """The hub cannot wait, and starting a thread waits for it to start: eventlet refused ("Cannot
    switch to MAINLOOP from MAINLOOP") and the process ended with nothing delivered."""
    body = TRACK_AND_WAIT.replace("COUNT", "2000").replace("SHUTDOWN", "5.0").replace(
        "wait_for_signal()", "import os, signal\n" + SIGTERM_IN_THE_HUB[library] + "wait_for_signal()"
    )
    result = Run(tmp_path, green(library, body), server.url).finish()
    assert result["code"] == -signal.SIGTERM, result["stderr"]
    assert server.stats()["events"] == 2000, result["stderr"]
    assert "cannot start a green thread" not in result["stderr"]


# --------------------------------------------------------------------------------------------
# uwsgi (the pyuwsgi wheel)

#: One WSGI app for uwsgi and gunicorn: 100 events per request, the worker's pid in each.
WSGI_APP = """
import os
from seven_segments import SevenSegments
client = SevenSegments("wsgi-token", "john", target=os.environ["API_URL"], buffered=True, flush_interval=60)

def application(environ, start_response):
    for number in range(100):
        client.track("view", {"pid": os.getpid(), "n": number})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


#: The same app with a spool shared by the workers; each request's events carry its query string.
SPOOL_WSGI_APP = """
import os
from seven_segments import SevenSegments
client = SevenSegments(
    "wsgi-token", "john", target=os.environ["API_URL"], buffered=True, flush_interval=60, spool=os.environ["SPOOL"]
)

def application(environ, start_response):
    for number in range(100):
        client.track("view", {"request": environ["QUERY_STRING"], "n": number})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("options", [[], ["--lazy-apps", "--threads", "4"]], ids=["preforked", "lazy-apps-threads"])
def test_uwsgi_workers_deliver_at_a_graceful_sigterm(options: List[str], server: LocalServer, tmp_path: Path) -> None:
    """uwsgi's own recipe for containers: SIGTERM to the master means a graceful shutdown."""
    import shutil
    import urllib.request

    needs("pyuwsgi")
    uwsgi = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if uwsgi is None:
        pytest.skip("no uwsgi program next to this Python")
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    port = _free_port()
    process = subprocess.Popen(
        [uwsgi, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", "wsgi_app.py", "--master", "--processes", "2",
         "--need-app", "--hook-master-start", "unix_signal:15 gracefully_kill_them_all", *options],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT), API_URL=server.url),
        start_new_session=True,  # uwsgi signals its process group
    )
    try:
        answers: List[bytes] = []
        end = time.monotonic() + 20
        # Ten requests, once both workers answer: uwsgi itself (lazy-apps with threads) can miss a
        # graceful shutdown that comes while a worker is still loading the application.
        while (len(answers) < 10 or len(set(answers)) < 2) and time.monotonic() < end:
            try:
                answers.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())
            except OSError:  # not listening yet
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the master and its workers
            process.communicate()
    assert process.returncode == 0, output
    assert len(set(answers)) == 2, output
    events = server.events()
    assert len(events) == 100 * len(answers), output
    assert {str(event["properties"]["pid"]).encode() for event in events} == set(answers)
    assert server.stats()["duplicates"] == 0


class _FakeUwsgi:
    def __init__(self, version: bytes, **options: Any) -> None:
        self.version = version
        self.opt = {name.replace("_", "-"): value for name, value in options.items()}


@pytest.mark.parametrize(
    "version, options, warns",
    [
        (b"2.0.26", {}, True),
        (b"2.0.26", {"enable_threads": True}, False),
        (b"2.0.26", {"threads": b"4"}, False),
        (b"2.0.27", {}, False),  # threads on by default from 2.0.27
        (b"2.1.0-dev", {}, False),
    ],
)
def test_uwsgi_without_python_threads_is_warned_about(
    version: bytes, options: Dict[str, Any], warns: bool, monkeypatch: Any, caplog: Any
) -> None:
    monkeypatch.setitem(sys.modules, "uwsgi", _FakeUwsgi(version, **options))
    with caplog.at_level("WARNING", logger="seven_segments.process_hooks"):
        assert process_hooks.warn_if_threads_disabled() is warns
    assert ("--enable-threads" in caplog.text) is warns


@pytest.mark.parametrize(
    "worker_id, options, unsafe",
    [(0, {}, True), (0, {"py_call_uwsgi_fork_hooks": True}, False), (1, {}, False), (2, {}, False), (0, {"mule": 1}, False),
     (0, {"spooler": True}, False)],
    ids=["master", "master-with-fork-hooks", "worker-1", "worker-2", "a-mule", "the-spooler"],
)
def test_threads_are_kept_out_of_a_uwsgi_master_that_forks_without_the_interpreters_fork_hooks(
    worker_id: int, options: Dict[str, Any], unsafe: bool, monkeypatch: Any
) -> None:
    mule, spooler = options.pop("mule", 0), options.pop("spooler", False)
    fake = _FakeUwsgi(b"2.0.30", **options)
    fake.worker_id = lambda: worker_id  # type: ignore[attr-defined]
    fake.mule_id = lambda: mule  # type: ignore[attr-defined]
    fake.i_am_the_spooler = lambda: spooler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    assert process_hooks.threads_hang_forks_here() is unsafe


def _our_threads() -> List[str]:
    import threading

    return sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("seven-segments"))


def test_a_client_in_a_uwsgi_master_starts_no_thread_and_delivers_on_the_flushing_thread(
    monkeypatch: Any, server: LocalServer, tmp_path: Path
) -> None:
    """A worker forked by uwsgi while a thread of the master held the interpreter's lock hangs for
    ever (1 start in 5 to 25, with a spool client made in the master): no thread starts there."""
    from seven_segments import SevenSegments

    fake = _FakeUwsgi(b"2.0.30")
    fake.worker_id = lambda: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    before = _our_threads()
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True, spool=str(tmp_path / "spool"))
    for number in range(50):
        client.track("view", {"n": number})
    assert _our_threads() == before
    assert client.flush(10) is True
    assert _our_threads() == before
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(50))
    client.close(5)
    assert _our_threads() == before


@pytest.fixture
def fake_uwsgi_master(monkeypatch: Any) -> None:
    fake = _FakeUwsgi(b"2.0.30")
    fake.worker_id = lambda: 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)


def test_a_command_queued_in_a_uwsgi_master_is_warned_about_once(
    fake_uwsgi_master: None, server: LocalServer, caplog: Any, monkeypatch: Any
) -> None:
    """uwsgi's master runs no atexit: only a flush() there sends what it tracked."""
    from seven_segments import SevenSegments
    from seven_segments._buffered import thread

    monkeypatch.setattr(thread, "_uwsgi_master_warned_pid", 0)
    client = SevenSegments(TOKEN, "john", target=server.url, buffered=True)
    with caplog.at_level("WARNING", logger="seven_segments"):
        assert client.flush(5) is True  # nothing queued: nothing to say
        assert "uwsgi master" not in caplog.text
        for number in range(3):
            client.track("view", {"n": number})
    assert caplog.text.count("queued in the uwsgi master") == 1 and "client.flush()" in caplog.text
    assert server.events() == []
    assert client.flush(5) is True
    assert len(server.events()) == 3
    client.close(5)


@pytest.mark.parametrize("api", ["refusing", "silent"])
def test_a_flush_in_a_uwsgi_master_ends_by_its_timeout(api: str, fake_uwsgi_master: None, dead_url: str) -> None:
    """The pump runs on the flushing thread there: its attempts end with the flush, which does not
    wait its timeout a second time after it (it took 6 s for flush(3) against a refusing API, and 13 s
    against one that never answers)."""
    import socket

    from seven_segments import SevenSegments

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections are accepted by the kernel; nothing ever answers
        url = dead_url if api == "refusing" else f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = SevenSegments(TOKEN, "john", target=url, buffered=True, timeout=10)
        for number in range(500):
            client.track("view", {"n": number})
        started = time.monotonic()
        assert client.flush(1.5) is False
        took = time.monotonic() - started
        client.close(0)
    assert took < 2.5, took


def test_uwsgi_workers_start_when_the_master_made_a_spool_client(server: LocalServer, tmp_path: Path) -> None:
    """Real uwsgi, preforked, a spool client made in the master (whose thread, before, hung the
    workers of 1 start in 5 to 25): every start answers from both workers."""
    import shutil
    import urllib.request

    needs("pyuwsgi")
    uwsgi = shutil.which("uwsgi", path=os.path.dirname(sys.executable))
    if uwsgi is None:
        pytest.skip("no uwsgi program next to this Python")
    (tmp_path / "wsgi_app.py").write_text(SPOOL_WSGI_APP)
    for start in range(6):
        port = _free_port()
        process = subprocess.Popen(
            [uwsgi, "--http-socket", f"127.0.0.1:{port}", "--wsgi-file", "wsgi_app.py", "--master", "--processes", "2",
             "--need-app"],
            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT), API_URL=server.url, SPOOL=str(tmp_path / f"spool-{start}")),
        )
        pids = set()
        try:
            end = time.monotonic() + 10
            while len(pids) < 2 and time.monotonic() < end:
                try:
                    pids.add(urllib.request.urlopen(f"http://127.0.0.1:{port}/?start-{start}", timeout=2).read())
                except OSError:  # not listening yet, or a worker that does not answer
                    time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        assert len(pids) == 2, f"start {start}: {len(pids)} of 2 workers answered"


# --------------------------------------------------------------------------------------------
# uvicorn (ASGI) and gunicorn (WSGI): real servers, SIGTERM to them as docker stop sends it

ASGI_APP = """
import os, sys
import uvicorn
from seven_segments import AsyncSevenSegments, SevenSegments

url, port, close_in_lifespan = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "lifespan"
state = {}
if not close_in_lifespan:
    state["client"] = SevenSegments("asgi-token", "john", target=url, buffered=True, flush_interval=60)

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if close_in_lifespan:
                    state["client"] = AsyncSevenSegments("asgi-token", "john", target=url, flush_interval=60)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if close_in_lifespan:
                    await state["client"].aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    for number in range(100):
        state["client"].track("view", {"n": number})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})

uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
"""


def _get(url: str, count: int, timeout: float = 20.0) -> int:
    import urllib.request

    answered = 0
    end = time.monotonic() + timeout
    while answered < count and time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            answered += 1
        except OSError:  # not listening yet
            time.sleep(0.05)
    return answered


@pytest.mark.parametrize("how", ["lifespan", "module-client"])
def test_uvicorn_delivers_at_sigterm(how: str, server: LocalServer, tmp_path: Path) -> None:
    """With AsyncSevenSegments closed in the lifespan shutdown, or a SevenSegments made before
    uvicorn.run, left to the SIGTERM handler that uvicorn restores and raises again."""
    needs("uvicorn")
    script = tmp_path / "asgi_app.py"
    script.write_text(ASGI_APP)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), server.url, str(port), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        answered = _get(f"http://127.0.0.1:{port}/", 10)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert answered == 10, output
    assert process.returncode == -signal.SIGTERM, output  # as uvicorn ends without us
    assert server.stats()["events"] == 1000, output



@pytest.mark.parametrize(
    "options",
    [["-k", "sync", "--preload"], ["-k", "gthread", "--threads", "4"], ["-k", "gevent", "--preload"]],
    ids=["sync-preload", "gthread", "gevent-preload"],
)
def test_gunicorn_workers_deliver_at_sigterm(options: List[str], server: LocalServer, tmp_path: Path) -> None:
    needs("gunicorn")
    if "gevent" in options:
        needs("gevent")
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "--graceful-timeout", "3",
         *options, "wsgi_app:application"],
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", API_URL=server.url),
    )
    try:
        answered = _get(f"http://127.0.0.1:{port}/", 10)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert answered == 10, output
    assert process.returncode == 0, output
    assert server.stats()["events"] == 1000, output
    assert server.stats()["duplicates"] == 0




def test_gunicorn_workers_sharing_a_spool_lose_nothing_when_one_is_killed(server: LocalServer, tmp_path: Path) -> None:
    """Two workers forked from a master that made the client (--preload) on one spool folder; one
    is SIGKILLed after it answered, its events only queued (flush_interval=60). The worker forked
    in its place takes the dead one's files over, and at the graceful stop every event of every
    answered request has arrived once."""
    import urllib.request

    needs("gunicorn")
    port = _free_port()
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "--graceful-timeout", "5",
               "-k", "sync", "--preload", "wsgi_app:application"]
    (tmp_path / "wsgi_app.py").write_text(SPOOL_WSGI_APP)
    process = subprocess.Popen(
        command, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", API_URL=server.url, SPOOL=str(tmp_path / "spool")),
        start_new_session=True,  # its own group: the finally below kills the master and its workers
    )
    answered: Dict[str, int] = {}  # request -> the pid of the worker that answered it

    def ask(request: str) -> None:
        answered[request] = int(urllib.request.urlopen(f"http://127.0.0.1:{port}/?{request}", timeout=5).read())

    try:
        assert _get(f"http://127.0.0.1:{port}/?warm", 1) == 1
        for number in range(20):
            ask(f"before-{number}")
        victim = answered["before-0"]
        os.kill(victim, signal.SIGKILL)
        pending_at_the_kill = (len(answered) + 1) * 100 - server.stats()["events"]
        workers = set(answered.values())
        deadline = time.monotonic() + 20
        number = 0
        while time.monotonic() < deadline:  # until the worker forked in its place answers
            try:
                ask(f"after-{number}")
                number += 1
            except OSError:
                time.sleep(0.05)
                continue
            if answered[f"after-{number - 1}"] not in workers:
                break
        assert set(answered.values()) - workers - {victim}, "no worker was forked in place of the killed one"
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the master and its workers
            process.communicate()
    arrived = {(event["properties"]["request"], event["properties"]["n"]) for event in server.events()}
    expected = {(request, n) for request in ["warm", *answered] for n in range(100)}
    assert pending_at_the_kill > 0  # not all sent yet: the killed worker held some in its spool alone
    assert expected <= arrived, (len(expected - arrived), output[-3000:])
    assert len(server.events()) == len(expected)  # each once: a replayed duplicate is not applied twice


# --------------------------------------------------------------------------------------------
# serverless: the README's recipe


class _LambdaContext:
    """What AWS Lambda passes as ``context``: the part the recipe uses."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def get_remaining_time_in_millis(self) -> int:
        return int((self._end - time.monotonic()) * 1000)


def test_the_serverless_recipe_delivers_before_each_invocation_returns(server: LocalServer) -> None:
    from seven_segments import SevenSegments

    client = SevenSegments("lambda-token", target=server.url, buffered=True)  # made once per container

    def handler(event: Dict[str, Any], context: _LambdaContext) -> Dict[str, Any]:
        for number in range(event["count"]):
            client.track("invocation-event", {"n": number}, customer=event["user"])
        # The recipe: the process may be frozen or killed as soon as the handler returns.
        delivered = client.flush(timeout=max(0.0, context.get_remaining_time_in_millis() / 1000 - 0.5))
        return {"delivered": delivered}

    for invocation in range(3):
        assert handler({"count": 200, "user": f"u{invocation}"}, _LambdaContext(3.0)) == {"delivered": True}
        assert server.stats()["events"] == 200 * (invocation + 1)  # already there when the handler returns
    server.faults.fail_next(1000, status=503)  # the API is down: the invocation still ends in time
    started = time.monotonic()
    assert handler({"count": 10, "user": "late"}, _LambdaContext(1.0)) == {"delivered": False}
    assert time.monotonic() - started < 1.0
    server.faults.clear()
    client.close(5)


MULTIPROCESSING_TERMINATE = """
import multiprocessing
from seven_segments import SevenSegments

def child(started):
    client = SevenSegments("mp-token", "child", target=url, buffered=True, flush_interval=60)
    for number in range(500):
        client.track("child-event", {"n": number})
    started.set()
    wait_for_signal()

if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    started = context.Event()
    process = context.Process(target=child, args=(started,))
    process.start()
    assert started.wait(10)
    process.terminate()  # SIGTERM
    process.join(10)
    ready("exitcode %s" % process.exitcode)
"""


def test_a_multiprocessing_child_ended_by_terminate_delivers_first(server: LocalServer, tmp_path: Path) -> None:
    """The child inherits nothing here (the parent made no client): its own client installs the handler."""
    result = Run(tmp_path, MULTIPROCESSING_TERMINATE, server.url).finish()
    assert result["code"] == 0, result["stderr"]
    assert f"exitcode {-signal.SIGTERM}" in result["stdout"]
    assert server.stats()["events"] == 500

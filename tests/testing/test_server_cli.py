"""The ``serve`` command as a subprocess, and the pytest plugin."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = "import sys; from seven_segments.testing.serve import main; sys.exit(main())"


def test_serve_answers_and_exits_0_on_sigterm(tmp_path: Any) -> None:
    campaigns = tmp_path / "campaigns.json"
    campaigns.write_text('{"Banner": "<b>hi</b>"}')
    env = dict(os.environ, PYTHONPATH=ROOT)
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--port", "0", "--campaigns", str(campaigns), "--user", "me:topsecret",
         "--verbose", "--db", str(tmp_path / "db.sqlite")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        answer = requests.post(url + "/campaigns/html/get", json={
            "company_id": "c", "customer_ids": {"registered": "a"}, "html_campaign_name": "Banner"}, timeout=10)
        assert answer.json() == {"success": True, "data": "<b>hi</b>"}
        assert requests.post(url + "/analytics/funnel", json={"analysis_id": "x"}, auth=("me", "topsecret"),
                             timeout=10).status_code == 404
        assert requests.post(url + "/analytics/funnel", json={"analysis_id": "x"}, auth=("me", "wrong"),
                             timeout=10).status_code == 401
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert "stopped" in stdout
    assert "topsecret" not in stdout + stderr
    assert "POST /campaigns/html/get -> 200" in stderr


def test_serve_refuses_bad_user_and_missing_file(tmp_path: Any) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    bad_user = subprocess.run([sys.executable, "-c", SERVE, "--port", "0", "--user", "nopassword"],
                              capture_output=True, text=True, env=env, timeout=20)
    assert bad_user.returncode == 2 and "NAME:PASSWORD" in bad_user.stderr
    missing = subprocess.run([sys.executable, "-c", SERVE, "--port", "0", "--campaigns", str(tmp_path / "no.json")],
                             capture_output=True, text=True, env=env, timeout=20)
    assert missing.returncode == 1 and "no.json" in missing.stderr


def _start_serve(tmp_path: Any, *arguments: str, env: Any = None) -> "subprocess.Popen[str]":
    return subprocess.Popen(
        [sys.executable, "-m", "seven_segments", "serve", "--port", "0", *arguments],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
    )


def _stop(process: "subprocess.Popen[str]") -> str:
    """SIGTERM, wait (bounded), and the whole stderr."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    return stderr


def test_serve_demo_campaigns_users_from_a_file_and_the_environment_and_latency(tmp_path: Any) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# export API users\nfileuser:file-secret:with-colon\n\n")
    process = _start_serve(tmp_path, "--users-file", str(users), "--user", "arguser:arg-secret", "--latency-ms", "50",
                           env={"SEVEN_SEGMENTS_SERVER_USERS": "envuser:env-secret,other:x"})
    try:
        assert process.stdout is not None
        url = process.stdout.readline().split("listening on ")[1].split()[0]
        # The README's examples against serve, as written.
        from seven_segments import SevenSegments

        client = SevenSegments("12345678-90ab-cdef-1234-567890abcdef", customer="john123", target=url)
        started = time.perf_counter()
        assert client.get_html("Banner left") == '<img src="/my-awesome-banner-1.png" />'
        assert time.perf_counter() - started >= 0.05
        cli = subprocess.run(
            [sys.executable, os.path.join(ROOT, "seven_segments.py"), "get_html",
             "12345678-90ab-cdef-1234-567890abcdef", "john123", "banner"],
            capture_output=True, text=True, timeout=20, env=dict(os.environ, SEVEN_SEGMENTS_TARGET=url),
        )
        assert cli.returncode == 0 and cli.stdout.strip() == '<img src="/my-awesome-banner-1.png" />', cli.stderr
        funnel = url + "/analytics/funnel"
        for name, password in (("fileuser", "file-secret:with-colon"), ("envuser", "env-secret"),
                               ("arguser", "arg-secret")):
            answer = requests.post(funnel, json={"analysis_id": "x"}, auth=(name, password), timeout=10)
            assert answer.status_code == 404, name  # authenticated; no such analysis
        assert requests.post(funnel, json={"analysis_id": "x"}, auth=("envuser", "wrong"), timeout=10).status_code == 401
    finally:
        stderr = _stop(process)
    assert "secret" not in stderr


def test_serve_failures_are_one_line_without_traceback(tmp_path: Any) -> None:
    not_a_db = tmp_path / "notadb.sqlite"
    not_a_db.write_text("this is not a database, just text long enough to fill a header" * 4)
    broken = tmp_path / "campaigns.json"
    broken.write_text('{"Banner": ')
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"Banner": 5}')
    users = tmp_path / "users.txt"
    users.write_text("jane:pw\nno-password-here-secret\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {
            "db": (["--db", "/no/such/dir/x.db"], "db '/no/such/dir/x.db' cannot be used as an SQLite database"),
            "notadb": (["--db", str(not_a_db)], f"db {str(not_a_db)!r} cannot be used as an SQLite database: file is"),
            "json": (["--campaigns", str(broken)], f"campaigns file {str(broken)!r} is not valid JSON: "),
            "campaign": (["--campaigns", str(wrong)], f"campaigns file {str(wrong)!r}: campaign 'Banner' must be"),
            "missing": (["--analyses", str(tmp_path / "no.json")], "no.json' cannot be read: No such file"),
            "users": (["--users-file", str(users)], f"users file {str(users)!r}, line 2: a user must be given as"),
            "port": (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}: "),
        }
        processes = {}
        for name, (arguments, _) in cases.items():
            command = [sys.executable, "-m", "seven_segments", "serve", *arguments]
            if "--port" not in arguments:
                command[4:4] = ["--port", "0"]
            processes[name] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                               cwd=str(tmp_path), env=dict(os.environ, PYTHONPATH=ROOT))
        results = {}
        for name, process in processes.items():
            try:
                results[name] = process.communicate(timeout=20)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
    for name, (_, expected) in cases.items():
        stdout, stderr = results[name]
        assert processes[name].returncode == 1, (name, stderr)
        assert stderr.count("\n") == 1 and "Traceback" not in stderr, (name, stderr)
        assert stderr.startswith("serve: ") and expected in stderr, (name, stderr)
        assert "secret" not in stderr and stdout == "", name


def test_serve_help_names_the_demo_campaigns_and_the_users_sources(capsys: pytest.CaptureFixture[str]) -> None:
    from seven_segments.testing import serve

    with pytest.raises(SystemExit) as exited:
        serve.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "demo campaigns 'Banner left' and 'banner'" in text and "my-awesome-banner-1.png" in text.replace(" ", "")
    assert "--users-file" in text and "$SEVEN_SEGMENTS_SERVER_USERS" in text and "--latency-ms N" in text


def test_main_with_argv_in_process() -> None:
    from seven_segments.testing import serve

    started = time.monotonic()

    def stop_soon() -> None:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    import threading

    threading.Thread(target=stop_soon).start()
    assert serve.main(["--port", "0"]) == 0
    assert time.monotonic() - started < 5


def test_pytest_plugin_fixture(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once the package is installed, its pytest11 entry point loads the plugin without -p.
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    pytester.makepyfile(
        """
        import requests

        def test_server(seven_segments_server):
            url = seven_segments_server.url
            answer = requests.post(url + "/crm/events", json={
                "company_id": "c", "customer_ids": {"registered": "a"}, "type": "t"})
            assert answer.status_code == 200
            assert seven_segments_server.wait_for_events(1, timeout=5)
            assert len(seven_segments_server.events()) == 1

        def test_fresh_server_per_test(seven_segments_server):
            assert seven_segments_server.events() == []
        """
    )
    result = pytester.runpytest_subprocess(*_load_plugin_arguments(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def _load_plugin_arguments() -> list:
    """Nothing when the installed package's pytest11 entry point loads the plugin (as in CI), else ``-p``."""
    from importlib.metadata import entry_points

    found = entry_points()
    plugins = found.select(group="pytest11") if hasattr(found, "select") else found.get("pytest11", [])
    if any(plugin.value == "seven_segments.testing.pytest_plugin" for plugin in plugins):
        return []
    return ["-p", "seven_segments.testing.pytest_plugin"]

"""The ``serve`` command as a subprocess, and the pytest plugin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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

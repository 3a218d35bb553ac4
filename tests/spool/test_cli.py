"""``seven-segments spool PATH [--deliver]``, run as a real subprocess against a LocalServer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, List, Optional, Tuple

import pytest

from seven_segments import cli
from seven_segments.spool import Spool, inspect
from seven_segments.testing import LocalServer

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "seven_segments.py")
TOKEN = "spool-cli-token-SECRET-31337"


def command(number: int, event_type: str = "purchase") -> bytes:
    """One bulk command, as the buffered client spools it."""
    return json.dumps({
        "name": "crm/events",
        "data": {
            "company_id": TOKEN, "customer_ids": {"registered": f"c{number % 7}"}, "type": event_type,
            "properties": {"n": number}, "timestamp": 1_700_000_000 + number, "command_id": f"cmd-{number}",
        },
    }).encode()


def spooled(folder: str, numbers: range, target: str = "", poison: Optional[bytes] = None, **types: str) -> None:
    """A spool left by a writer that is gone (closed: its files unlocked, its commands kept), for
    ``target``; ``poison``, if given, is written in the middle as a record of its own."""
    writer = Spool(folder, target=target)
    for number in numbers:
        if poison is not None and number == numbers[len(numbers) // 2]:
            assert writer.append(poison) is not None
        assert writer.append(command(number, types.get(f"n{number}", "purchase"))) is not None
    assert writer.close() == len(numbers) + (poison is not None)


def run(*args: str) -> "subprocess.CompletedProcess[str]":
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEVEN_SEGMENTS_")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, SCRIPT, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=30,
    )


@pytest.fixture
def folder(tmp_path: "os.PathLike[str]") -> str:
    return os.path.join(os.fspath(tmp_path), "spool")


def command_ids(server: LocalServer) -> List[str]:
    return [event["command_id"] for event in server.events()]


def test_show(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    spooled(folder, range(10))
    live = Spool(folder)  # held by this process: alive (an flock of another open file conflicts)
    try:
        for number in range(100, 103):
            live.append(command(number))
        status = cli.main(["spool", folder])
    finally:
        live.close()
    result = capsys.readouterr()
    assert status == 0 and result.err == ""
    lines = result.out.splitlines()
    assert lines[0].startswith(f"{folder}: 2 files, 13 commands, ") and lines[0].endswith(" bytes")
    assert sorted(line.split(": ", 1)[1].split(",")[0] + line.rsplit(",", 1)[1] for line in lines[1:]) == [
        "10 commands writer dead", "3 commands writer alive",
    ]
    assert TOKEN not in result.out


@pytest.mark.slow
def test_deliver_each_once_and_leave_live_files(folder: str, fresh: LocalServer) -> None:
    spooled(folder, range(0, 700))
    spooled(folder, range(700, 1500))  # more than one bulk request
    live = Spool(folder)
    try:
        for number in range(5000, 5003):
            live.append(command(number))
        result = run("spool", folder, "--deliver", "--target", fresh.url)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        assert "delivered 1500 commands, 0 refused, 0 kept" in result.stdout
        assert "left 1 files of live processes (3 commands)" in result.stdout
        assert sorted(command_ids(fresh)) == sorted(f"cmd-{n}" for n in range(1500))
        assert fresh.stats()["bulk_requests"] == 2
        assert inspect(folder).commands == 3  # the live writer's, untouched
        again = run("spool", folder, "--deliver", "--target", fresh.url)
        assert again.returncode == 0 and "delivered 0 commands" in again.stdout
        assert len(fresh.events()) == 1500
    finally:
        live.close()


@pytest.mark.slow
def test_deliver_with_the_api_down(folder: str, dead_url: str) -> None:
    spooled(folder, range(20))
    result = run("spool", folder, "--deliver", "--target", dead_url, "--retry-deadline", "0.2", "--timeout", "1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "20 commands kept in" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert TOKEN not in result.stderr + result.stdout
    assert inspect(folder).commands == 20  # nothing lost


@pytest.mark.slow
def test_deliver_never_follows_a_redirect(folder: str, fresh: LocalServer, witness: Any) -> None:
    spooled(folder, range(5), target=fresh.url)
    fresh.faults.redirect_next(1, witness.url, status=308)
    result = run("spool", folder, "--deliver")  # to the file's own target
    assert result.returncode == 1
    assert f"bulk: the server redirects to {witness.url}/bulk; redirects are not followed" in result.stderr
    assert "5 commands kept in" in result.stderr and TOKEN not in result.stderr + result.stdout
    assert witness.connections == 0 and witness.received == b""
    assert inspect(folder).commands == 5 and fresh.events() == []  # kept, for a run with the right target



@pytest.mark.slow
def test_deliver_splits_a_request_refused_for_a_command_too_large_and_delivers_the_others(
    folder: str, fresh: LocalServer
) -> None:
    # One command of 200 KB (spooled by a client that did not check sizes at the call) had every
    # request holding it answered 413: the whole target failed, every command kept, exit 1 for ever.
    large = json.loads(command(99))
    large["data"]["properties"]["pad"] = "x" * 200_000
    spooled(folder, range(6), target=fresh.url, poison=json.dumps(large).encode())
    result = run("spool", folder, "--deliver")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spool: crm/events cmd-99 refused: "), result.stderr
    assert "more than 102400" in lines[0] and TOKEN not in result.stderr + result.stdout
    assert sorted(command_ids(fresh)) == [f"cmd-{number}" for number in range(6)]
    assert inspect(folder).commands == 0  # refused for good: not sent again

@pytest.mark.slow
def test_deliver_reports_refused_commands(folder: str, fresh: LocalServer) -> None:
    spooled(folder, range(6), n2="", n4="")
    result = run("spool", folder, "--deliver", "--target", fresh.url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("spool: crm/events cmd-2 refused: "), result.stderr
    assert lines[1].startswith("spool: crm/events cmd-4 refused: ")
    assert "delivered 4 commands, 2 refused, 0 kept" in result.stdout
    assert TOKEN not in result.stderr + result.stdout
    assert sorted(command_ids(fresh)) == ["cmd-0", "cmd-1", "cmd-3", "cmd-5"]
    assert inspect(folder).commands == 0  # refused for good: not sent again


def test_a_folder_of_another_user_or_open_to_others_is_refused(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    spooled(folder, range(3))
    os.chmod(folder, 0o777)
    reasons = [f"{folder} can be written by others (mode 777)"]
    if os.geteuid() == 0:
        reasons.append(f"{folder} belongs to another user (uid 65534;")
    for reason in reasons:
        if "uid" in reason:
            os.chmod(folder, 0o700)
            os.chown(folder, 65534, 65534)
        for args in ([folder], [folder, "--deliver", "--target", "http://127.0.0.1:9"]):
            assert cli.main(["spool", *args]) == 2
            result = capsys.readouterr()
            assert reason in result.err and result.out == "", result.err
    os.chown(folder, os.geteuid(), os.getegid())
    os.chmod(folder, 0o700)
    assert inspect(folder).commands == 3  # nothing was taken


def test_missing_folder_is_a_usage_error(folder: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([folder], [folder, "--deliver", "--target", "http://127.0.0.1:9"]):
        assert cli.main(["spool", *args]) == 2
        result = capsys.readouterr()
        assert result.err.count("\n") == 1 and f"{folder} does not exist" in result.err and result.out == ""
    assert not os.path.exists(folder)
    assert cli.main(["spool", folder, "--deliver", "--timeout", "0"]) == 2
    assert "--timeout must be > 0" in capsys.readouterr().err


def deliver_here(*args: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> "Tuple[int, str, str]":
    monkeypatch.delenv("SEVEN_SEGMENTS_TARGET", raising=False)
    status = cli.main(["spool", *args, "--deliver", "--retry-deadline", "1"])
    result = capsys.readouterr()
    return status, result.out, result.err


def test_deliver_skips_a_record_that_is_no_command_and_delivers_the_rest(
    folder: str, fresh: LocalServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its request was refused as a whole (400) and kept: exit 1 for ever, nothing delivered (issue 24).
    spooled(folder, range(1000), poison=b"")
    status, out, err = deliver_here(folder, "--target", fresh.url, monkeypatch=monkeypatch, capsys=capsys)
    assert (status, err) == (0, "") and "delivered 1000 commands, 0 refused, 0 kept" in out
    assert sorted(command_ids(fresh)) == sorted(f"cmd-{n}" for n in range(1000))
    assert inspect(folder).files == []


def test_deliver_sends_each_file_to_its_own_target_unless_told_otherwise(
    folder: str, fresh: LocalServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every file went to the one target given (issue 24).
    with LocalServer() as other:
        spooled(folder, range(0, 3), target=fresh.url)
        spooled(folder, range(3, 5), target=other.url)
        status, out, err = deliver_here(folder, monkeypatch=monkeypatch, capsys=capsys)
        assert (status, err) == (0, "") and "delivered 5 commands, 0 refused, 0 kept" in out
        assert sorted(command_ids(fresh)) == ["cmd-0", "cmd-1", "cmd-2"]
        assert sorted(command_ids(other)) == ["cmd-3", "cmd-4"]
        spooled(folder, range(5, 7), target=other.url)
        status, out, err = deliver_here(folder, "--target", fresh.url, monkeypatch=monkeypatch, capsys=capsys)
        assert status == 0 and "delivered 2 commands" in out
        assert len(other.events()) == 2 and sorted(command_ids(fresh))[-2:] == ["cmd-5", "cmd-6"]
        spooled(folder, range(7, 9), target=other.url)
        spooled(folder, range(9, 11), target=fresh.url)
    status, out, err = deliver_here(folder, "--timeout", "1", monkeypatch=monkeypatch, capsys=capsys)
    assert status == 1 and "2 commands kept" in err  # the other target is gone: only its own stay
    assert len(fresh.events()) == 7 and inspect(folder).commands == 2
    assert {entry.target for entry in inspect(folder).files} == {other.url}


@pytest.mark.parametrize("status", [401, 404])
def test_deliver_keeps_everything_when_a_request_fails_for_another_reason_than_its_commands(
    status: int, folder: str, fresh: LocalServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A client's engine fails such commands for good, and confirms them; made on the folder by
    # --deliver, it deleted them from the spool at the first 401 (a wrong token, found while moving
    # deliver onto the engine). They stay, for a run with the right target or token.
    spooled(folder, range(5), target=fresh.url)
    fresh.faults.fail_next(1, status=status)
    status_code, out, err = deliver_here(folder, monkeypatch=monkeypatch, capsys=capsys)
    assert status_code == 1 and "delivered 0 commands, 0 refused, 5 kept" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spool: bulk: ") and "5 commands kept in" in lines[0], err
    assert TOKEN not in out + err
    assert inspect(folder).commands == 5 and fresh.events() == []


def test_deliver_leaves_the_files_of_a_target_that_is_no_url_and_delivers_the_others(
    folder: str, fresh: LocalServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spooled(folder, range(3), target="not a url")
    spooled(folder, range(3, 5), target=fresh.url)
    status, out, err = deliver_here(folder, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 1 and "delivered 2 commands, 0 refused, 3 kept" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"; 3 commands kept in {folder}"), err
    assert sorted(command_ids(fresh)) == ["cmd-3", "cmd-4"]
    assert {entry.target for entry in inspect(folder).files} == {"not a url"} and inspect(folder).commands == 3

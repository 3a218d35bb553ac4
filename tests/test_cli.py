"""The command line, run as a real subprocess against a LocalServer: SEED's commands, exit codes, secrets.

(``serve`` and ``demo`` are tested elsewhere.)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from typing import Dict, Iterator, List, Optional

import pytest

from seven_segments import cli
from seven_segments.testing import LocalServer

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "seven_segments.py")
SEED_TOKEN = "12345678-90ab-cdef-1234-567890abcdef"
SECRET_TOKEN = "cli-token-SECRET-8675309"
PASSWORD = "pw-SECRET-correct-horse-42"
BANNER = '<img src="/my-awesome-banner-1.png" />'
FUNNEL_ID = "2f86608f-24f5-11e3-9950-c48508494cf5"
ANALYSES = {FUNNEL_ID: {"type": "funnel", "name": "Conversion funnel", "steps": ["visit", "purchase"]}}

SEED_SCRIPT = """
COMPANY_TOKEN='12345678-90ab-cdef-1234-567890abcdef'
CUSTOMER='john123'

# Track event
./seven_segments.py track "$COMPANY_TOKEN" "$CUSTOMER" purchase --properties product=bottle amount=5

# Update customer properties
./seven_segments.py update "$COMPANY_TOKEN" "$CUSTOMER" first_name=John last_name=Smith

# Get HTML from campaign
./seven_segments.py get_html "$COMPANY_TOKEN" "$CUSTOMER" banner
"""


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalServer]:
    with LocalServer(
        campaigns={"banner": BANNER, "Banner left": BANNER}, analyses=ANALYSES, users={"alice": PASSWORD}
    ) as local:
        yield local


@pytest.fixture
def server(shared: LocalServer) -> LocalServer:
    shared.reset()
    return shared


def environment(**extra: str) -> Dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SEVEN_SEGMENTS_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def run(args: List[str], env: Optional[Dict[str, str]] = None, module: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "seven_segments"] if module else [sys.executable, SCRIPT]
    return subprocess.run(
        command + args, cwd=ROOT, env=env or environment(), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=30,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *secrets: str) -> None:
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for secret in secrets:
        assert secret not in result.stderr


# -- SEED's commands -------------------------------------------------------------------------------


@pytest.mark.slow
def test_seed_commands_exactly_as_written(server: LocalServer) -> None:
    result = subprocess.run(
        ["bash", "-e", "-c", SEED_SCRIPT], cwd=ROOT, env=environment(SEVEN_SEGMENTS_TARGET=server.url),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == BANNER + "\n"
    assert result.stderr == ""
    requests = server.requests()
    assert [request["path"] for request in requests] == ["/crm/events", "/crm/customers", "/campaigns/html/get"]
    track, update, html = (request["body"] for request in requests)
    assert track["company_id"] == SEED_TOKEN
    assert track["customer_ids"] == {"registered": "john123"}
    assert track["type"] == "purchase"
    assert track["properties"] == {"product": "bottle", "amount": 5}
    assert type(track["properties"]["amount"]) is int
    assert set(track) == {"company_id", "customer_ids", "type", "properties", "timestamp", "command_id"}
    assert update["ids"] == {"registered": "john123"}
    assert update["properties"] == {"first_name": "John", "last_name": "Smith"}
    assert html == {"company_id": SEED_TOKEN, "customer_ids": {"registered": "john123"}, "html_campaign_name": "banner"}
    assert server.customer("john123") == {"first_name": "John", "last_name": "Smith"}


@pytest.mark.slow
def test_track_with_target_option(server: LocalServer) -> None:
    result = run(["track", SEED_TOKEN, "john123", "purchase", "--properties", "product=bottle", "amount=5",
                  "vip=true", "--target", server.url])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    (event,) = server.events()
    assert event["properties"] == {"product": "bottle", "amount": 5, "vip": True}
    assert event["properties"]["vip"] is True


@pytest.mark.slow
def test_target_option_wins_over_env(server: LocalServer) -> None:
    env = environment(SEVEN_SEGMENTS_TARGET="http://127.0.0.1:9")
    result = run(["update", SEED_TOKEN, "john123", "vip=true", "--target", server.url], env=env)
    assert result.returncode == 0, result.stderr
    assert server.customer("john123") == {"vip": True}


@pytest.mark.slow
def test_track_without_properties_and_with_timestamp(server: LocalServer) -> None:
    result = run(["track", SEED_TOKEN, "john123", "visit", "--timestamp", "1700000000.5", "--target", server.url])
    assert result.returncode == 0, result.stderr
    (event,) = server.events()
    assert event["properties"] == {} and event["timestamp"] == 1700000000.5


@pytest.mark.slow
def test_dict_customer_and_json_values(server: LocalServer) -> None:
    result = run(["update", SEED_TOKEN, '{"cookie": "abc"}', "tags=[1,2]", "name=John Smith", "n=null",
                  "--target", server.url])
    assert result.returncode == 0, result.stderr
    (request,) = server.requests()
    assert request["body"]["ids"] == {"cookie": "abc"}
    assert request["body"]["properties"] == {"tags": [1, 2], "name": "John Smith", "n": None}


@pytest.mark.slow
def test_get_html_with_module_entry_point(server: LocalServer) -> None:
    result = run(["get_html", SEED_TOKEN, "john123", "Banner left", "--target", server.url], module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == BANNER + "\n"


# -- failures --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_unknown_campaign_exits_1(server: LocalServer) -> None:
    result = run(["get_html", SECRET_TOKEN, "john123", "missing", "--target", server.url])
    assert result.returncode == 1
    assert_one_line_error(result, SECRET_TOKEN)
    assert "404" in result.stderr and "InvalidRequest" in result.stderr


@pytest.mark.slow
def test_refused_token_exits_1_without_token() -> None:
    with LocalServer(tokens=["only-this-one"]) as local:
        result = run(["track", SECRET_TOKEN, "john123", "purchase", "--target", local.url])
        assert result.returncode == 1
        assert_one_line_error(result, SECRET_TOKEN)
        assert "401" in result.stderr and "AuthenticationError" in result.stderr
        assert len(local.requests()) == 1  # not retried
        assert local.events() == []


@pytest.mark.parametrize(
    "args, shown",
    [
        (["track", SEED_TOKEN, "john123"], "EVENT_TYPE"),
        (["track", SEED_TOKEN, "john123", "purchase", "--properties", "noequals"], "noequals"),
        (["track", SEED_TOKEN, "john123", "purchase", "--properties", "=5"], "=5"),
        (["track", SEED_TOKEN, "john123", "purchase", "--timestamp", "nan"], "timestamp"),
        (["track", SEED_TOKEN, "", "purchase"], "customer"),
        (["track", SEED_TOKEN, "{bad json", "purchase"], "{bad json"),
        (["update", SEED_TOKEN, "john123"], "KEY=VALUE"),
        (["get_html", SEED_TOKEN, "john123"], "CAMPAIGN_NAME"),
        (["track", "", "john123", "purchase"], "token"),
        (["track", SEED_TOKEN, "john123", "purchase", "--target", "ftp://x"], "ftp://x"),
        (["export", "funnel", "{}"], "--username"),
        (["export", "funnels", '{"analysis_id": "a"}', "--username", "alice"], "funnels"),
        (["export", "funnel", "not json", "--username", "alice"], "not json"),
        (["frobnicate"], "frobnicate"),
        ([], "COMMAND"),
    ],
)
@pytest.mark.slow
def test_usage_errors_exit_2(server: LocalServer, args: List[str], shown: str) -> None:
    if "--target" not in args and args and args[0] != "export":
        args = args + ["--target", server.url]
    result = run(args, env=environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD, SEVEN_SEGMENTS_TARGET=server.url))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert shown.lower() in result.stderr.lower()
    assert PASSWORD not in result.stderr
    assert server.requests() == []


@pytest.mark.parametrize(
    "command, words",
    [
        ("track", ["COMPANY_TOKEN", "CUSTOMER", "EVENT_TYPE", "--properties", "--target"]),
        ("update", ["COMPANY_TOKEN", "CUSTOMER", "KEY=VALUE", "--target"]),
        ("get_html", ["COMPANY_TOKEN", "CUSTOMER", "CAMPAIGN_NAME", "--target"]),
        ("export", ["ANALYSIS_TYPE", "JSON", "--username", "--token", "SEVEN_SEGMENTS_PASSWORD"]),
    ],
)
@pytest.mark.slow
def test_help_of_each_command(command: str, words: List[str]) -> None:
    result = run([command, "--help"])
    assert result.returncode == 0, result.stderr
    for word in words:
        assert word in result.stdout


@pytest.mark.slow
def test_top_level_help_via_module() -> None:
    result = run(["--help"], module=True)
    assert result.returncode == 0, result.stderr
    for word in ("track", "update", "get_html", "export"):
        assert word in result.stdout


# -- export ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_prints_json(server: LocalServer) -> None:
    for customer, types in (("a", ["visit", "purchase"]), ("b", ["visit"])):
        for index, event_type in enumerate(types):
            run_result = run(["track", SEED_TOKEN, customer, event_type, "--timestamp", str(1700000000 + index * 10),
                              "--target", server.url])
            assert run_result.returncode == 0, run_result.stderr
    result = run(
        ["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice", "--target", server.url],
        env=environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD),
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["success"] is True
    assert answer["name"] == "Conversion funnel"
    assert answer["steps"] == ["visit", "purchase"]
    assert answer["total"]["counts"] == [2, 1]
    assert answer["total"]["times"] == [-1, 10, 10]
    assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
    export_request = server.requests()[-1]
    assert export_request["path"] == "/analytics/funnel"
    assert export_request["user"] == "alice"


@pytest.mark.slow
def test_export_with_token_option(server: LocalServer) -> None:
    result = run(
        ["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice", "--token", SECRET_TOKEN,
         "--target", server.url],
        env=environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"]["counts"] == [0, 0]
    assert server.requests()[-1]["path"] == f"/analytics/funnel?company={SECRET_TOKEN}"


@pytest.mark.slow
def test_export_without_password_and_no_tty(server: LocalServer) -> None:
    result = run(["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice",
                  "--target", server.url])
    assert result.returncode == 2
    assert "SEVEN_SEGMENTS_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
    assert server.requests() == []


@pytest.mark.slow
def test_export_wrong_password_exits_1(server: LocalServer) -> None:
    wrong = "pw-SECRET-wrong-guess-99"
    result = run(
        ["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice", "--target", server.url],
        env=environment(SEVEN_SEGMENTS_PASSWORD=wrong),
    )
    assert result.returncode == 1
    assert_one_line_error(result, wrong, PASSWORD)
    assert "401" in result.stderr


@pytest.mark.slow
def test_export_unknown_analysis_exits_1(server: LocalServer) -> None:
    result = run(
        ["export", "report", json.dumps({"analysis_id": "nope"}), "--username", "alice", "--target", server.url],
        env=environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD),
    )
    assert result.returncode == 1
    assert_one_line_error(result, PASSWORD)
    assert "404" in result.stderr


@pytest.mark.slow
def test_values_json_cannot_carry_stay_strings(server: LocalServer) -> None:
    result = run(
        ["track", SEED_TOKEN, "john123", "purchase", "--properties", "x=NaN", "y=Infinity", "z=1e400", "--target", server.url]
    )
    assert result.returncode == 0, result.stderr
    assert server.events()[0]["properties"] == {"x": "NaN", "y": "Infinity", "z": "1e400"}


# -- options anywhere, properties, timestamps, the token from the environment ----------------------


@pytest.mark.slow
def test_options_before_the_command(server: LocalServer) -> None:
    result = run(["--target", server.url, "--timeout", "5", "track", SEED_TOKEN, "john123", "purchase"])
    assert result.returncode == 0, result.stderr
    assert [event["type"] for event in server.events()] == ["purchase"]


@pytest.mark.slow
def test_an_option_before_serve_is_refused_in_one_line() -> None:
    result = run(["--target", "http://127.0.0.1:9", "serve"])
    assert result.returncode == 2
    assert_one_line_error(result)
    assert "--target" in result.stderr


@pytest.mark.slow
def test_properties_before_the_event_type_and_repeated(server: LocalServer) -> None:
    first = run(["track", SEED_TOKEN, "john123", "--properties", "a=1", "purchase", "--target", server.url])
    assert first.returncode == 0, first.stderr
    second = run(["track", SEED_TOKEN, "john123", "--properties", "a=1", "--properties", "b=x", "view",
                  "--properties", "c=true", "d=2", "--target", server.url])
    assert second.returncode == 0, second.stderr
    purchase, view = server.events()
    assert (purchase["type"], purchase["properties"]) == ("purchase", {"a": 1})
    assert (view["type"], view["properties"]) == ("view", {"a": 1, "b": "x", "c": True, "d": 2})


@pytest.mark.slow
def test_timestamp_in_iso_8601_with_a_zone(server: LocalServer) -> None:
    result = run(["update", SEED_TOKEN, "john123", "vip=true", "--timestamp", "2023-11-14T23:13:20.500+01:00",
                  "--target", server.url])
    assert result.returncode == 0, result.stderr
    assert server.requests()[0]["body"]["timestamp"] == 1700000000.5


@pytest.mark.slow
def test_a_naive_iso_timestamp_is_refused_in_one_line(server: LocalServer) -> None:
    result = run(["track", SEED_TOKEN, "john123", "purchase", "--timestamp", "2023-11-14T22:13:20", "--target", server.url])
    assert result.returncode == 2
    assert_one_line_error(result)
    assert "'2023-11-14T22:13:20' has no time zone" in result.stderr
    assert server.requests() == []


@pytest.mark.slow
def test_the_token_from_the_environment(server: LocalServer) -> None:
    env = environment(SEVEN_SEGMENTS_TOKEN=SECRET_TOKEN, SEVEN_SEGMENTS_TARGET=server.url)
    for args in (["track", "john123", "purchase", "--properties", "a=1"], ["update", "john123", "a=1", "b=2"],
                 ["get_html", "john123", "banner"], ["track", SEED_TOKEN, "john123", "given"]):
        result = run(args, env=env)
        assert result.returncode == 0, (args, result.stderr)
    tokens = [request["body"]["company_id"] for request in server.requests()]
    assert tokens == [SECRET_TOKEN, SECRET_TOKEN, SECRET_TOKEN, SEED_TOKEN]  # the positional wins
    assert server.customer("john123", company_id=SECRET_TOKEN) == {"a": 1, "b": 2}


@pytest.mark.slow
def test_no_token_anywhere_says_where_to_put_it(server: LocalServer) -> None:
    result = run(["get_html", "john123", "banner", "--target", server.url])
    assert result.returncode == 2
    assert_one_line_error(result)
    assert "CAMPAIGN_NAME" in result.stderr
    helped = run(["track", "--help"])
    assert "SEVEN_SEGMENTS_TOKEN" in helped.stdout


@pytest.mark.slow
def test_verbose_logs_one_line_per_request_without_the_token(server: LocalServer) -> None:
    server.faults.fail_next(1, status=503)
    result = run(["--verbose", "track", SECRET_TOKEN, "john123", "purchase", "--target", server.url])
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    requests_logged = [line for line in lines if "POST /crm/events: HTTP" in line]
    assert len(requests_logged) == 2, lines
    assert re.search(r"HTTP 503, 1 command, \d+\.\d ms$", requests_logged[0]), lines
    assert re.search(r"HTTP 200, 1 command, \d+\.\d ms$", requests_logged[1]), lines
    assert any("retrying" in line for line in lines)
    assert SECRET_TOKEN not in result.stderr


@pytest.mark.slow
def test_export_verbose_with_the_token_from_the_environment(server: LocalServer) -> None:
    env = environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD, SEVEN_SEGMENTS_TOKEN=SECRET_TOKEN)
    result = run(["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice",
                  "--target", server.url, "--verbose"], env=env)
    assert result.returncode == 0, result.stderr
    assert "POST /analytics/funnel: HTTP 200, 0 commands" in result.stderr
    assert SECRET_TOKEN not in result.stderr and PASSWORD not in result.stderr
    assert server.requests()[-1]["path"] == f"/analytics/funnel?company={SECRET_TOKEN}"


@pytest.mark.slow
def test_a_wrong_password_says_it_was_not_accepted(server: LocalServer) -> None:
    result = run(["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice",
                  "--target", server.url], env=environment(SEVEN_SEGMENTS_PASSWORD="a"))
    assert result.returncode == 1
    assert_one_line_error(result)
    assert "the username or password was not accepted" in result.stderr
    assert "required" not in result.stderr  # they were sent


@pytest.mark.parametrize(
    "args, path",
    [
        (["get_html", SEED_TOKEN, "john123", "banner"], "/campaigns/html/get"),
        (["export", "funnel", json.dumps({"analysis_id": FUNNEL_ID}), "--username", "alice"], "/analytics/funnel"),
    ],
)
@pytest.mark.slow
def test_a_reader_that_closes_the_pipe_early(server: LocalServer, args: List[str], path: str) -> None:
    with subprocess.Popen(
        [sys.executable, SCRIPT, *args, "--target", server.url], cwd=ROOT,
        env=environment(SEVEN_SEGMENTS_PASSWORD=PASSWORD), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the program writes anything: its write meets a closed pipe
        stderr = process.stderr.read()
        assert process.wait(timeout=30) == 141
    assert stderr == b""
    assert [request["path"] for request in server.requests()] == [path]


# -- pure decisions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "words, expected",
    [
        (["T", "c", "--properties", "a=1", "purchase"], ["T", "c", "--properties", "a=1", "purchase"]),
        (["T", "c", "e", "--properties", "a=1", "b=2"], ["T", "c", "e", "--properties", "a=1", "--properties", "b=2"]),
        (["T", "c", "e", "--properties=a=1", "b=2", "--target", "u"],
         ["T", "c", "e", "--properties=a=1", "--properties", "b=2", "--target", "u"]),
        (["T", "c", "e", "--prop", "a=1", "b=2"], ["T", "c", "e", "--prop", "a=1", "--properties", "b=2"]),
        (["--properties", "noequals", "b=2"], ["--properties", "noequals", "--properties", "b=2"]),
        (["--properties", "a=1", "--", "b=2"], ["--properties", "a=1", "--", "b=2"]),
        (["T", "c", "e", "--properties"], ["T", "c", "e", "--properties"]),
    ],
)
def test_one_property_per_option(words: List[str], expected: List[str]) -> None:
    assert cli._one_property_per_option(words) == expected


@pytest.mark.parametrize(
    "text, seconds",
    [("1700000000.5", 1700000000.5), ("2023-11-14T22:13:20Z", 1700000000.0), ("2023-11-14T22:13:20z", 1700000000.0),
     ("2023-11-14T22:13:20+00:00", 1700000000.0), ("2023-11-14T17:13:20-05:00", 1700000000.0)],
)
def test_parse_timestamp(text: str, seconds: float) -> None:
    assert cli.parse_timestamp(text) == seconds


@pytest.mark.parametrize("text", ["nan", "inf", "2023-11-14T22:13:20", "yesterday", "2023-13-01T00:00:00Z"])
def test_parse_timestamp_refuses_naming_the_value(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(text))):
        cli.parse_timestamp(text)


def test_find_command_skips_the_options_before_it() -> None:
    assert cli._find_command(["--target", "http://x", "--verbose", "track", "T"]) == 3
    assert cli._find_command(["--target=http://x", "get_html"]) == 1
    assert cli._find_command(["--verbose"]) is None

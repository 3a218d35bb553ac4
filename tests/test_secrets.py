"""Secrets stay out of messages, reprs, exception chains and log lines, and messages stay readable.

Messages never have a secret formatted in; URL query values are redacted by parsing; the server's
``errors`` are quoted with a secret redacted only where it stands whole (long secrets) or quoted
(short ones), so a short token such as ``"e"`` never turns "token" into "tok***n".
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator, List

import pytest
import requests

from seven_segments import AuthenticatedSevenSegments, AuthenticationError, SevenSegments, SevenSegmentsError
from seven_segments.testing import LocalServer
from seven_segments.transport import Transport, redact_urls

pytestmark = pytest.mark.timeout(60)

LONG_TOKEN = "company-token-0123456789-secret"
PASSWORD = "pw-SECRET-correct-horse-42"
FUNNEL_ID = "2f86608f-24f5-11e3-9950-c48508494cf5"
ANALYSES = {FUNNEL_ID: {"type": "funnel", "name": "Conversion funnel", "steps": ["visit", "purchase"]}}


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it leads to through ``__cause__`` and ``__context__``."""
    seen: List[BaseException] = []
    pending: List[Any] = [error]
    while pending:
        link = pending.pop()
        if link is None or any(link is known for known in seen):
            continue
        seen.append(link)
        pending.extend([link.__cause__, link.__context__])
    return iter(seen)


def assert_nowhere(error: BaseException, *secrets: str) -> None:
    for link in chain(error):
        shown = [str(link), repr(link), *map(str, getattr(link, "errors", ()))]
        for secret in secrets:
            assert not any(secret in text for text in shown), (secret, shown)


# -- pure decisions --------------------------------------------------------------------------------


def test_redact_urls_parses_queries_and_user_information() -> None:
    text = ("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
            "/analytics/funnel?company=abc%2Fd&x=1 (Caused by NewConnectionError('refused'))")
    assert redact_urls(text) == (
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/analytics/funnel?company=***&x=*** (Caused by NewConnectionError('refused'))"
    )
    assert redact_urls("proxy http://jane:pw@proxy:3128/ refused") == "proxy http://***@proxy:3128/ refused"
    assert redact_urls("Is this a question? Yes.") == "Is this a question? Yes."


@pytest.mark.parametrize(
    "secret, text, expected",
    [
        ("e", "company_id is not a known company token", "company_id is not a known company token"),
        ("a", "HTTP Basic credentials of an export API user are required", None),
        ("e", "no campaign named 'e'", "no campaign named '***'"),
        (LONG_TOKEN, f"unknown company_id {LONG_TOKEN}.", "unknown company_id ***."),
        (LONG_TOKEN, f"no campaign named {LONG_TOKEN!r}", "no campaign named '***'"),
        (LONG_TOKEN, f"/{LONG_TOKEN}/crm/events", "/***/crm/events"),
        (LONG_TOKEN, f"prefix-{LONG_TOKEN}", None),  # part of a longer word: not the secret standing whole
        ("tok en/+", "company=tok%20en%2F%2B", "company=***"),
    ],
)
def test_scrub_redacts_only_whole_secrets(secret: str, text: str, expected: Any) -> None:
    transport = Transport("http://127.0.0.1:9", timeout=1, secrets=[secret])
    assert transport.scrub(text) == (text if expected is None else expected)
    transport.close()


# -- messages from real answers ------------------------------------------------------------------


def test_a_one_letter_token_leaves_the_401_readable() -> None:
    with LocalServer(tokens=["the-only-known-token"]) as server:
        client = SevenSegments("e", "john", target=server.url)
        with pytest.raises(AuthenticationError) as caught:
            client.track("purchase")
    message = str(caught.value)
    assert "the company token was not accepted" in message
    assert "company_id is not a known company token" in message
    assert "***" not in message and "***" not in repr(caught.value)


def test_a_one_letter_password_leaves_the_401_readable() -> None:
    with LocalServer(users={"alice": PASSWORD}, analyses=ANALYSES) as server:
        client = AuthenticatedSevenSegments("alice", "a", target=server.url)
        with pytest.raises(AuthenticationError) as caught:
            client.export_analysis("funnel", {"analysis_id": FUNNEL_ID})
    message = str(caught.value)
    assert "the username or password was not accepted" in message
    assert "the username or password is not that of an export API user" in message  # the server's words, whole
    assert "required" not in message and "***" not in message
    assert_nowhere(caught.value, PASSWORD)


def test_a_long_token_echoed_by_the_server_is_not_shown(server: LocalServer) -> None:
    client = SevenSegments(LONG_TOKEN, "john", target=server.url)
    with pytest.raises(SevenSegmentsError) as quoted:
        client.get_html(LONG_TOKEN)  # the server answers: no campaign named '<token>'
    assert "no campaign named '***'" in str(quoted.value)
    assert_nowhere(quoted.value, LONG_TOKEN)
    prefixed = SevenSegments(LONG_TOKEN, "john", target=f"{server.url}/{LONG_TOKEN}")
    with pytest.raises(SevenSegmentsError) as bare:
        prefixed.track("purchase")  # 404: unknown path /<token>/crm/events
    assert "unknown path /***/crm/events" in str(bare.value)
    assert_nowhere(bare.value, LONG_TOKEN)


def test_connection_errors_redact_the_query_and_keep_the_reason(dead_url: str) -> None:
    client = AuthenticatedSevenSegments("alice", "a", target=dead_url, retry_deadline=0.1)
    with pytest.raises(SevenSegmentsError) as caught:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token="e")
    message = str(caught.value)
    assert "Connection refused" in message and "***" not in message
    try:  # requests' own exception quotes the URL with its query; the client quotes it redacted
        requests.post(f"{dead_url}/analytics/funnel", params={"company": LONG_TOKEN}, timeout=2)
    except requests.ConnectionError as error:
        assert LONG_TOKEN in str(error)
        quoted = client._transport.scrub(str(error))
        assert "/analytics/funnel?company=*** (Caused by" in quoted and "Connection refused" in quoted
    else:
        pytest.fail("a request to a closed port succeeded")
    with pytest.raises(SevenSegmentsError) as long_caught:
        client.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=LONG_TOKEN)
    assert_nowhere(long_caught.value, LONG_TOKEN, "a-password")


def test_reprs_show_no_secret() -> None:
    assert LONG_TOKEN not in repr(SevenSegments(LONG_TOKEN, "john", target="http://127.0.0.1:9"))
    assert PASSWORD not in repr(AuthenticatedSevenSegments("alice", PASSWORD, target="http://127.0.0.1:9"))


# -- logs ------------------------------------------------------------------------------------------


def test_no_log_line_at_debug_shows_the_token_or_the_password(
    caplog: pytest.LogCaptureFixture, dead_url: str
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger's records, ours and urllib3's
    with LocalServer(users={"alice": PASSWORD}, analyses=ANALYSES) as server:
        server.faults.fail_next(1, status=503)  # a retry, logged with its reason
        client = SevenSegments(LONG_TOKEN, "john", target=server.url)
        client.track("purchase", {"amount": 5})
        client.update({"vip": True})
        with pytest.raises(SevenSegmentsError):
            client.get_html("Banner left")
        buffered = SevenSegments(LONG_TOKEN, "john", target=server.url, buffered=True)
        buffered.track("view")
        assert buffered.flush(timeout=5)
        buffered.close()
        exporter = AuthenticatedSevenSegments("alice", PASSWORD, target=server.url)
        server.faults.fail_next(1, status=503)
        exporter.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=LONG_TOKEN)
        with pytest.raises(SevenSegmentsError):
            AuthenticatedSevenSegments("alice", "wrong-" + PASSWORD, target=server.url).export_analysis(
                "funnel", {"analysis_id": FUNNEL_ID}, token=LONG_TOKEN
            )
    refused = AuthenticatedSevenSegments("alice", PASSWORD, target=dead_url, retry_deadline=0.1)
    with pytest.raises(SevenSegmentsError):
        refused.export_analysis("funnel", {"analysis_id": FUNNEL_ID}, token=LONG_TOKEN)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    lines = [formatter.format(record) for record in caplog.records]
    assert any("urllib3" in line and "/analytics/funnel?company=*** HTTP/" in line for line in lines), lines
    assert any("retrying" in line for line in lines), lines  # our own debug lines were captured too
    for line in lines:
        assert LONG_TOKEN not in line and PASSWORD not in line, line


def test_the_log_filter_leaves_other_requests_alone(caplog: pytest.LogCaptureFixture, server: LocalServer) -> None:
    caplog.set_level(logging.DEBUG)
    client = SevenSegments(LONG_TOKEN, "john", target=server.url)
    logging.getLogger("urllib3.connectionpool").debug('"%s %s"', "GET", "/search?q=shoes&company=" + LONG_TOKEN)
    assert caplog.records[-1].getMessage() == '"GET /search?q=shoes&company=***"'
    client.close()


# -- a spool replayed by another client --------------------------------------------------------------


DEAD_TOKEN = "dead-client-TOKEN-0123456789"


class _EchoingRefusals(BaseHTTPRequestHandler):
    """A server that refuses every bulk command, quoting its company token back."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        commands = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["commands"]
        results = [{"status": "error", "errors": [f"unknown company_id {command['data']['company_id']}"]}
                   for command in commands]
        answer = json.dumps({"success": True, "results": results}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def replayed_to_an_echoing_server(folder: str, payloads: List[bytes], caplog: pytest.LogCaptureFixture) -> List[str]:
    """``payloads`` left in ``folder`` by a dead client of a server that refuses every command quoting
    its token, replayed by a client with another token that tracks one event; the command ids
    ``on_error`` got, after checking that no text shown (logs, errors, commands) holds a token."""
    from seven_segments.spool import Spool

    echo = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingRefusals)
    thread = threading.Thread(target=echo.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    target = f"http://127.0.0.1:{echo.server_address[1]}"
    dead = Spool(folder, target=target)  # a client of that target, with another token, died with commands spooled
    for payload in payloads:
        dead.append(payload)
    dead.close()
    reports: List[Any] = []
    try:
        with caplog.at_level(logging.DEBUG):
            client = SevenSegments(LONG_TOKEN, "john", target=target, buffered=True, spool=folder, flush_interval=0.01,
                                   on_error=lambda error, commands: reports.append((error, commands)))
            client.track("view")
            assert client.flush(10) is False
            client.close()
    finally:
        echo.shutdown()
        echo.server_close()
        thread.join(5)
    shown = [caplog.text] + [text for error, commands in reports
                             for text in (str(error), repr(error), *error.errors, json.dumps(commands))]
    assert any("unknown company_id ***" in text for text in shown)
    for text in shown:
        assert DEAD_TOKEN not in text and LONG_TOKEN not in text, text
    return [command["data"]["command_id"] for _, commands in reports for command in commands]


def dead_command(command_id: str) -> bytes:
    """A command of the dead client, with its token."""
    from seven_segments.protocol import PATH_EVENTS
    from seven_segments.serialization import BulkCommandEncoder

    return BulkCommandEncoder(DEAD_TOKEN).encode((PATH_EVENTS, {"registered": "x"}, "view", {}, 1.7e9, command_id))


def test_the_token_of_a_replayed_spool_is_masked_like_our_own(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    ids = replayed_to_an_echoing_server(str(tmp_path / "spool"), [dead_command("dead-1")], caplog)
    assert len(ids) == 2 and "dead-1" in ids  # the dead client's command and ours, both refused


def test_a_token_that_is_no_text_is_masked_without_raising() -> None:
    # Masking a replayed token holding a lone surrogate raised UnicodeEncodeError in the middle of
    # the replay: the chunk read from the spool was never queued (flush() said True all the same).
    transport = Transport("http://127.0.0.1:9", timeout=1)
    strange = DEAD_TOKEN + "\ud800"
    transport.add_secret(strange)
    assert transport.scrub(f"unknown company_id {strange}, ?company={DEAD_TOKEN}%ED%A0%80") == (
        "unknown company_id ***, ?company=***"
    )


def test_a_replayed_record_whose_token_is_no_text_neither_stops_the_replay_nor_shows(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Such a record is no command (no client writes it): skipped as damaged, the others replayed.
    strange = dead_command("dead-1").replace(DEAD_TOKEN.encode(), json.dumps(DEAD_TOKEN + "\ud800").strip('"').encode())
    ids = replayed_to_an_echoing_server(str(tmp_path / "spool"), [strange, dead_command("dead-2")], caplog)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(ids) == 2 and "dead-2" in ids and "not a command" in caplog.text

"""Buffered mode against the local server: batching, flush, close, retries, drops, reporting."""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import Any, Dict, List

import pytest
from freezegun import freeze_time

from seven_segments import (
    ClientClosedError,
    InvalidRequest,
    QueueFull,
    ServiceUnavailable,
    SevenSegments,
    SevenSegmentsError,
)
from seven_segments.testing import LocalServer

from ..conftest import collector, TOKEN, wait_until

pytestmark = pytest.mark.timeout(60)



def buffered(server: LocalServer, **settings: Any) -> SevenSegments:
    settings.setdefault("flush_interval", 0.05)
    return SevenSegments(TOKEN, "john123", target=server.url, buffered=True, **settings)


def bulk_bodies(server: LocalServer) -> List[Dict[str, Any]]:
    return [request["body"] for request in server.requests() if request["path"] == "/bulk"]


def test_track_and_update_arrive_in_bulk_with_protocol_bodies(server: LocalServer) -> None:
    with buffered(server) as client:
        client.track("purchase", {"product": "bottle", "amount": 5})
        client.update({"first_name": "John"})
        assert client.flush(5) is True
    commands = [command for body in bulk_bodies(server) for command in body["commands"]]
    assert [command["name"] for command in commands] == ["crm/events", "crm/customers"]
    event, update = commands[0]["data"], commands[1]["data"]
    assert set(event) == {"company_id", "customer_ids", "type", "properties", "timestamp", "command_id"}
    assert event["customer_ids"] == {"registered": "john123"} and event["type"] == "purchase"
    assert event["properties"] == {"product": "bottle", "amount": 5}
    assert abs(event["timestamp"] - time.time()) < 5
    assert set(update) == {"company_id", "ids", "properties", "timestamp", "command_id"}
    assert event["command_id"] != update["command_id"]
    assert server.customer("john123") == {"first_name": "John"}


def test_batches_respect_batch_size(server: LocalServer) -> None:
    with buffered(server, batch_size=10, flush_interval=60) as client:
        for number in range(35):
            client.track("view", {"n": number})
        assert client.flush(5)
        stats = client.stats()
    sizes = [len(body["commands"]) for body in bulk_bodies(server)]
    assert sum(sizes) == 35 and max(sizes) <= 10
    assert sorted(sizes, reverse=True)[:3] == [10, 10, 10]  # requests in flight may land in any order
    assert stats["batches"] == len(sizes) and stats["sent"] == 35 and stats["queued"] == 35


def test_a_full_batch_goes_out_without_waiting_for_the_timer(server: LocalServer) -> None:
    with buffered(server, batch_size=20, flush_interval=60) as client:
        for number in range(20):
            client.track("view", {"n": number})
        assert server.wait_for_events(20, timeout=5)


def test_the_timer_sends_a_partial_batch(server: LocalServer) -> None:
    with buffered(server, flush_interval=0.05) as client:
        client.track("view")
        assert server.wait_for_events(1, timeout=5)
        assert client.stats()["pending"] == 0 or wait_until(lambda: client.stats()["pending"] == 0)


def test_properties_are_captured_at_the_call(server: LocalServer) -> None:
    """The command is its bytes when ``track`` returns: changing the dicts after it changes nothing
    sent, nested (the careful path) or flat (the one-loop path, written by orjson when installed)."""
    properties: Dict[str, Any] = {"cart": ["a"], "n": 1}
    flat: Dict[str, Any] = {"product": "bottle", "n": 1}
    with buffered(server, flush_interval=60) as client:
        client.track("view", properties)
        client.update(flat)
        properties["cart"].append("b")
        properties["n"] = 2
        flat["n"] = 2
        flat["new"] = True
        assert client.flush(5)
    assert server.events()[0]["properties"] == {"cart": ["a"], "n": 1}
    assert server.customer({"registered": "john123"}) == {"product": "bottle", "n": 1}


def test_timestamp_is_the_moment_of_the_call_not_of_delivery(server: LocalServer) -> None:
    with buffered(server, flush_interval=60) as client:
        client.track("view")
        called = time.time()
        server.faults.fail_next(1, status=503, retry_after=0.2)
        assert client.flush(5)
    assert abs(server.events()[0]["timestamp"] - called) < 0.1


def test_flush_and_close_finish_under_freezegun_and_timestamps_follow_the_frozen_clock(server: LocalServer) -> None:
    with freeze_time("2024-01-02T03:04:05Z"):
        client = buffered(server, flush_interval=0.05)
        client.track("view")
        assert server.wait_for_events(1, timeout=5), "the flush timer must run under freeze_time"
        client.track("view")
        assert client.flush(5) is True
        client.close(5)
    assert [event["timestamp"] for event in server.events()] == [1704164645.0, 1704164645.0]


def test_transient_failures_are_retried_with_the_same_command_id(server: LocalServer) -> None:
    server.faults.fail_next(1, status=500)
    server.faults.fail_next(1, status=429, retry_after=0.2)
    server.faults.drop_next(1, after_apply=True)
    server.faults.drop_next(1, after_apply=False)
    with buffered(server, flush_interval=60) as client:
        client.track("purchase")
        assert client.flush(10) is True
        stats = client.stats()
    bodies = bulk_bodies(server)
    ids = {body["commands"][0]["data"]["command_id"] for body in bodies}
    assert len(bodies) == 5 and len(ids) == 1
    assert len(server.events()) == 1 and server.stats()["duplicates"] == 1
    assert stats["sent"] == 1 and stats["retried"] == 4 and stats["failed"] == 0


def test_retry_after_is_honoured(server: LocalServer) -> None:
    server.faults.fail_next(1, status=429, retry_after=0.4)
    with buffered(server, flush_interval=60) as client:
        client.track("view")
        assert client.flush(10)
    times = [request["time"] for request in server.requests() if request["path"] == "/bulk"]
    assert len(times) == 2 and times[1] - times[0] >= 0.39


def test_per_command_retry_and_error_results(server: LocalServer) -> None:
    reports, on_error = collector()
    server.faults.command_results(2, "retry")
    server.faults.command_results(1, "error")
    with buffered(server, flush_interval=60, on_error=on_error) as client:
        for number in range(5):
            client.track("view", {"n": number})
        assert client.flush(10) is False  # one command was refused for good
        stats = client.stats()
    assert sorted(event["properties"]["n"] for event in server.events()) == [0, 1, 3, 4]
    assert stats == {**stats, "sent": 4, "failed": 1, "retried": 2, "pending": 0}
    [(error, commands)] = reports
    assert isinstance(error, InvalidRequest) and error.errors
    assert [command["data"]["properties"] for command in commands] == [{"n": 2}]
    assert commands[0]["name"] == "crm/events"


def test_one_answer_refusing_1000_commands_is_one_warning_and_one_on_error_call(server: LocalServer, caplog: Any) -> None:
    """It was 1,000 warnings and 1,000 calls of one command each."""
    reports, on_error = collector()
    server.tokens = ["another-company"]  # every command refused, for one of two reasons:
    server.faults.command_results(600, "error")  # the first 600 by an injected fault
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        with buffered(server, flush_interval=60, on_error=on_error) as client:
            command_ids = [client.track("view", {"n": number}) for number in range(1000)]
            assert client.flush(10) is False
            stats = client.stats()
    assert len(bulk_bodies(server)) == 1 and stats["failed"] == 1000 and stats["sent"] == 0
    [warning] = [record.getMessage() for record in caplog.records if record.name.startswith("seven_segments")]
    assert warning == (
        "seven_segments: 1000 commands could not be delivered: bulk: the server refused them for good:"
        ' "injected fault: command refused" (600 commands), "company_id is not a known company token" (400 commands)'
    )
    [(error, commands)] = reports
    assert isinstance(error, InvalidRequest) and error.status == 200 and str(error).startswith("bulk: 1000 commands were refused")
    assert [command["data"]["command_id"] for command in commands] == command_ids
    assert error.errors == ("injected fault: command refused",) * 600 + ("company_id is not a known company token",) * 400


def test_413_splits_the_batch(server: LocalServer) -> None:
    server.faults.fail_next(2, status=413)
    with buffered(server, flush_interval=60) as client:
        for number in range(8):
            client.track("view", {"n": number})
        assert client.flush(10) is True
    sizes = [len(body["commands"]) for body in bulk_bodies(server)]
    # 8 refused, then one half of 4 refused, then 2 + 2 and the other 4 (in flight at once: any order)
    assert sorted(sizes) == [2, 2, 4, 4, 8] and sizes[0] == 8
    assert sorted(event["properties"]["n"] for event in server.events()) == list(range(8))


@pytest.mark.parametrize("status", [400, 413])
def test_a_server_refusing_every_request_as_a_whole_is_one_warning_and_one_on_error_call(
    server: LocalServer, caplog: Any, status: int
) -> None:
    """Each batch refused as a whole is split down to single commands, each refused alone in turn:
    that was one warning and one on_error call per command (a flood, as in issue 24's point 9)."""
    reports, on_error = collector()
    server.faults.fail_next(100_000, status=status)
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        with buffered(server, flush_interval=60, on_error=on_error) as client:
            command_ids = [client.track("view", {"n": number}) for number in range(64)]
            assert client.flush(10) is False
            stats = client.stats()
            assert stats["failed"] == 64 and stats["sent"] == 0
    warnings = [record.getMessage() for record in caplog.records if record.name.startswith("seven_segments")]
    assert len(warnings) == 1 and warnings[0].startswith("seven_segments: 64 commands could not be delivered")
    assert f"injected fault: HTTP {status}" in warnings[0]
    [(error, commands)] = reports
    assert isinstance(error, InvalidRequest) and error.status == status
    assert sorted(command["data"]["command_id"] for command in commands) == sorted(command_ids)
    assert len(error.errors) == 64 and set(error.errors) == {f"injected fault: HTTP {status}"}


def test_a_single_command_answered_413_fails_and_is_reported(server: LocalServer) -> None:
    reports, on_error = collector()
    server.faults.fail_next(1, status=413)
    with buffered(server, flush_interval=60, on_error=on_error) as client:
        client.track("view")
        assert client.flush(10) is False
        assert client.stats()["failed"] == 1
    assert isinstance(reports[0][0], InvalidRequest) and reports[0][0].status == 413


@pytest.mark.parametrize("spooled", [False, True])
def test_a_redirect_fails_the_batch_for_good_and_nothing_goes_to_the_other_host(
    server: LocalServer, witness: Any, tmp_path: Any, caplog: Any, spooled: bool
) -> None:
    reports, on_error = collector()
    server.faults.redirect_next(1, witness.url, status=307)
    spool = str(tmp_path / "spool") if spooled else None
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        with buffered(server, flush_interval=60, on_error=on_error, spool=spool) as client:
            for number in range(3):
                client.track("view", {"n": number})
            assert client.flush(10) is False
            assert client.stats() == {**client.stats(), "failed": 3, "sent": 0, "retried": 0, "kept_in_spool": 0}
            client.track("view", {"n": 3})
            assert client.flush(10) is True  # the next batch goes to the server named, as usual
    assert witness.connections == 0 and witness.received == b""
    assert len(bulk_bodies(server)) == 2 and [event["properties"]["n"] for event in server.events()] == [3]
    [(error, commands)] = reports
    assert type(error) is SevenSegmentsError and error.status == 307 and "redirect" in str(error)
    assert [command["data"]["properties"]["n"] for command in commands] == [0, 1, 2]
    assert any("3 commands could not be delivered" in record.getMessage() for record in caplog.records)
    if spooled:  # failed, but the API never refused them: they stay on disk for the next client
        from seven_segments.spool import inspect

        assert inspect(spool).commands == 3


def test_a_bad_token_fails_the_batch_without_retry() -> None:
    reports, on_error = collector()
    with LocalServer(tokens=["the-only-token"]) as server:
        with buffered(server, flush_interval=60, on_error=on_error) as client:
            client.track("view")
            assert client.flush(10) is False
        assert len(server.requests()) == 1
    [(error, commands)] = reports
    assert error.status == 200 or error.status == 401
    assert len(commands) == 1 and TOKEN not in str(error) and TOKEN not in repr(error)


def test_retries_end_at_the_retry_deadline_and_are_reported(server: LocalServer, caplog: Any) -> None:
    reports, on_error = collector()
    server.faults.fail_next(10_000, status=503)
    with buffered(server, flush_interval=60, retry_deadline=0.5, on_error=on_error) as client:
        client.track("view")
        client.track("view")
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="seven_segments"):
            assert client.flush(10) is False
        assert time.monotonic() - started < 3
        assert client.stats()["failed"] == 2
        server.faults.clear()
    [(error, commands)] = reports
    assert isinstance(error, ServiceUnavailable) and error.status == 503 and len(commands) == 2
    assert "2 commands could not be delivered" in caplog.text and TOKEN not in caplog.text


def test_a_full_queue_drops_counts_and_reports(server: LocalServer, caplog: Any) -> None:
    reports, on_error = collector()
    server.faults.delay_next(1, 1.0)  # long enough for 30 tracks, on however busy a machine
    with buffered(server, flush_interval=60, max_queue_size=10, on_error=on_error) as client:
        client.track("first")
        client.flush(0)  # starts the delayed request
        assert wait_until(lambda: client.stats()["in_flight"] == 1)
        with caplog.at_level(logging.WARNING, logger="seven_segments"):
            for number in range(30):
                client.track("view", {"n": number})  # never blocks
            assert client.stats()["dropped"] == 21  # 1 in flight + 9 queued = max_queue_size
            assert client.flush(10) is False  # something tracked since the last flush was dropped
        stats = client.stats()
        assert client.flush(10) is True  # nothing new was lost since
    assert stats["dropped"] == 21 and stats["sent"] == 10 and stats["failed"] == 0
    assert len(server.events()) == 10
    dropped = [command for error, commands in reports if isinstance(error, QueueFull) for command in commands]
    assert [command["data"]["properties"]["n"] for command in dropped] == list(range(9, 30))
    # One warning, or more when the pump woke to report the first drops while the caller still tracked
    assert sum(int(count) for count in re.findall(r"dropped (\d+) commands: the queue is full", caplog.text)) == 21


def test_on_error_exceptions_are_caught(server: LocalServer, caplog: Any) -> None:
    def broken(error: SevenSegmentsError, commands: List[Dict[str, Any]]) -> None:
        raise RuntimeError("callback bug")

    server.faults.command_results(1, "error")
    with buffered(server, flush_interval=60, on_error=broken) as client:
        client.track("view")
        assert client.flush(5) is False
        client.track("view")
        assert client.flush(5) is True  # the worker lives on
    assert "on_error callback raised" in caplog.text


def test_close_is_idempotent_and_later_calls_raise(server: LocalServer) -> None:
    client = buffered(server, flush_interval=60)
    client.track("view")
    client.close()
    client.close()
    assert len(server.events()) == 1
    with pytest.raises(ClientClosedError, match="closed"):
        client.track("view")
    with pytest.raises(ClientClosedError):
        client.update({"a": 1})
    assert client.flush(1) is True


def test_close_gives_up_at_its_timeout_and_logs_one_warning(dead_url: str, caplog: Any) -> None:
    reports, on_error = collector()
    client = SevenSegments(TOKEN, "john", target=dead_url, buffered=True, on_error=on_error)
    for _ in range(3):
        client.track("view")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        client.close(timeout=0.5)
    assert time.monotonic() - started < 1.5
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "3 commands were lost at close" in warnings[0]
    assert sum(len(commands) for _, commands in reports) == 3
    stats = client.stats()  # a retry in flight when the deadline passed is unconfirmed, not failed
    assert stats["failed"] + stats["unconfirmed"] == 3 and stats["pending"] == 0


def test_flush_with_timeout_returns_false_while_the_server_is_slow(server: LocalServer) -> None:
    server.faults.delay_next(1, 1.0)
    with buffered(server, flush_interval=60) as client:
        client.track("view")
        started = time.monotonic()
        assert client.flush(0.2) is False
        assert time.monotonic() - started < 0.6
        assert client.flush(5) is True


def test_invalid_settings_raise_at_construction(server: LocalServer) -> None:
    bad = [
        ({"batch_size": 1001}, "batch_size must be at most 1000"),
        ({"batch_size": 0}, "batch_size"),
        ({"flush_interval": -1}, "flush_interval must be a finite number > 0"),
        ({"flush_interval": float("nan")}, "flush_interval"),
        ({"max_queue_size": 0}, "max_queue_size"),
        ({"retry_deadline": -5}, "retry_deadline"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"timeout": 0}, "timeout"),
    ]
    for settings, message in bad:
        with pytest.raises(ValueError, match=message):
            SevenSegments(TOKEN, target=server.url, buffered=True, **settings)
    with pytest.raises(TypeError, match="on_error must be callable"):
        SevenSegments(TOKEN, target=server.url, buffered=True, on_error="print")  # type: ignore[arg-type]


def test_threads_share_one_client_with_per_call_customers(server: LocalServer) -> None:
    with buffered(server) as client:

        def produce(index: int) -> None:
            for number in range(200):
                client.track("view", {"n": number}, customer=f"user-{index}")

        threads = [threading.Thread(target=produce, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert client.flush(10)
    events = server.events()
    assert len(events) == 800
    for index in range(4):
        mine = [event["properties"]["n"] for event in events if event["customer_ids"] == {"registered": f"user-{index}"}]
        assert sorted(mine) == list(range(200))


def test_stats_account_for_every_command(server: LocalServer) -> None:
    server.faults.command_results(3, "error")
    with buffered(server, flush_interval=60) as client:
        for number in range(50):
            client.track("view", {"n": number})
        client.flush(10)
        stats = client.stats()
    assert stats["queued"] == stats["sent"] + stats["failed"] + stats["pending"]
    assert (stats["queued"], stats["sent"], stats["failed"], stats["pending"]) == (50, 47, 3, 0)


def test_repr_and_errors_never_show_the_token(server: LocalServer) -> None:
    client = buffered(server)
    assert TOKEN not in repr(client) and "buffered" in repr(client)
    client.close()


def test_invalid_buffered_settings_raise_in_blocking_mode_too(server: LocalServer) -> None:
    with pytest.raises(ValueError, match="batch_size must be at most 1000"):
        SevenSegments(TOKEN, target=server.url, batch_size=5000)
    with pytest.raises(ValueError, match="shutdown_timeout"):
        SevenSegments(TOKEN, target=server.url, shutdown_timeout=-1)


def test_max_queue_bytes_counts_each_command_as_its_json_and_a_small_constant(dead_url: str) -> None:
    """With the API down, a queue of ``max_queue_bytes`` holds as many commands as their JSON plus
    ``COMMAND_COST`` each fits: not their JSON alone (which let the real memory pass the bound)."""
    from seven_segments._buffered.settlement import COMMAND_COST
    from seven_segments.serialization import BulkCommandEncoder

    bound = 64 * 1024
    properties = {"product": "bottle", "amount": 5, "price": 12.5, "currency": "EUR", "first": True, "coupon": None}
    client = SevenSegments(
        TOKEN, "john123", target=dead_url, buffered=True, max_queue_bytes=bound, retry_deadline=600, flush_interval=0.01,
    )
    try:
        for _ in range(400):
            client.track("purchase", properties)
            time.sleep(0.0002)  # lets the worker take what was queued, as a real caller does
        accepted = 400 - client.stats()["dropped_queue_full"]
    finally:
        client.close(0)
    size = len(BulkCommandEncoder(TOKEN).encode(("crm/events", {"registered": "john123"}, "purchase", properties, 1.7e9, "x" * 22)))
    assert accepted * (size + COMMAND_COST) <= bound + 2 * (size + COMMAND_COST)
    assert accepted * (size + COMMAND_COST) >= 0.8 * bound


def test_what_callers_queue_is_counted_exactly_from_many_threads(fresh: LocalServer) -> None:
    """Callers count the commands and bytes they queue without a lock (one ``+=`` each): with eight
    threads tracking at once, what the pump took matches them exactly."""
    client = SevenSegments(TOKEN, "john", target=fresh.url, buffered=True)

    def produce() -> None:
        for number in range(3000):
            client.track("view", {"n": number})

    producers = [threading.Thread(target=produce) for _ in range(8)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    try:
        assert client.flush(30)
        core = client._engine._current()  # type: ignore[union-attr]
        budget = core.settlement.budget
        assert core.arrived == budget.taken == 24000 and core.arrived_bytes == budget.taken_bytes
        stats = client.stats()
        assert (stats["queued"], stats["sent"], stats["pending_bytes"]) == (24000, 24000, 0)
    finally:
        client.close()


def test_a_command_handed_to_the_current_core_is_queued_there_even_when_the_process_ids_disagree(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A core handed a command by another process's core queues it, whatever each read of the process
    id said: it never hands it on again. (Here the quick read of the id is made to disagree with
    os.getpid, which the engine's cores keep: patching os.getpid itself would confuse the watchdog.)"""
    from seven_segments import client as client_module
    from seven_segments._buffered import engine as engine_module

    client = SevenSegments(TOKEN, "c", target=server.url, buffered=True, flush_interval=60)
    monkeypatch.setattr(client_module, "_getpid", lambda: -12345)
    monkeypatch.setattr(engine_module, "_getpid", lambda: -12345)
    client.track("view")  # "process -12345": the core hands the command to the current one
    monkeypatch.undo()
    assert client.stats()["queued"] == 1
    client.close(5)
    assert [event["type"] for event in server.events()] == ["view"]

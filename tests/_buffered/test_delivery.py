"""The pump driven step by step: a fake clock, a scripted sender, no sockets, no sleeps.

Each test plays the senders' part: it looks at the batches the pump launched and hands back the
outcome it chooses (answered, failed in passing, refused), in any order.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from seven_segments._buffered.answers import Verdict
from seven_segments._buffered.batching import Batch
from seven_segments._buffered.lifecycle import Lifecycle, Phase
from seven_segments._buffered.limits import Limits
from seven_segments._buffered.pump import FlushTicket, Pump
from seven_segments._buffered.store import SpoolStore, Spooled
from seven_segments._buffered import reporting
from seven_segments._buffered.reporting import Reporter
from seven_segments._buffered.retry import RetryPolicy
from seven_segments._buffered.sender import Outcome
from seven_segments._buffered.settlement import FULL, Settlement
from seven_segments.serialization import BulkCommandEncoder
from seven_segments.errors import InvalidRequest, QueueFull, SevenSegmentsError, ServiceUnavailable
from seven_segments.transport import TransientError

from .fakes import FakeSpool

ALL_OK = Verdict([], [], [], True)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now




class Harness:
    """A pump with a scripted sender."""

    def __init__(self, spool: Optional[FakeSpool] = None, **limits: Any) -> None:
        self.clock = FakeClock()
        self.incoming: "deque[Any]" = deque()
        self.lifecycle = Lifecycle()
        self.lifecycle.move(Phase.RUNNING)
        self.reports: List[Tuple[SevenSegmentsError, List[Dict[str, Any]]]] = []
        self.reporter = Reporter(lambda error, commands: self.reports.append((error, commands)), self.clock)
        self.launched: Dict[int, Tuple[Batch, float, Callable[[Outcome], None]]] = {}
        settings = dict(batch_size=1000, flush_interval=0.5, max_in_flight=4, retry_deadline=60.0, timeout=10.0)
        settings.update(limits)
        self.limits = Limits(**settings)  # type: ignore[arg-type]
        self.settlement = Settlement(self.limits, self.reporter, self.lifecycle, self.clock, keep_drops=100)
        self.ledger = self.settlement.counts
        self.pump = Pump(
            limits=self.limits,
            incoming=self.incoming,
            lifecycle=self.lifecycle,
            settlement=self.settlement,
            launch=lambda number, batch, timeout, done: self.launched.__setitem__(number, (batch, timeout, done)),
            clock=self.clock,
            policy=RetryPolicy(60.0, backoff=lambda attempt: 1.0 * attempt),
            store=None if spool is None else SpoolStore(self.settlement, spool, self.limits, "secret-token", lambda secret: None),  # type: ignore[arg-type]
        )
        self.spool = spool
        self.serial = 0
        self.encoder = BulkCommandEncoder("secret-token")

    def track(self, count: int) -> None:
        for _ in range(count):
            self.serial += 1
            self.incoming.append(  # as a caller queues it: its bytes
                self.encoder.encode(
                    ("crm/events", {"registered": "john"}, "view", {"n": self.serial}, 1700000000.0, f"id-{self.serial}")
                )
            )

    def track_spooled(self, count: int) -> None:
        """As ``track``, with a spool: the caller encoded the command and wrote it down."""
        assert self.spool is not None
        for _ in range(count):
            self.serial += 1
            payload = b'{"name":"crm/events","data":{"n":%d}}' % self.serial
            self.incoming.append(Spooled(payload, self.spool.append(payload)))

    def flush(self) -> FlushTicket:
        ticket = FlushTicket()
        self.ledger.tickets_queued += 1
        self.incoming.append(ticket)
        return ticket

    def step(self) -> float:
        """Steps until the pump has taken everything (one step takes a bounded number of commands)."""
        for _ in range(100):
            delay = self.pump.step()
            if delay != 0.0 or not self.incoming:
                return delay
        raise AssertionError("the pump never finished taking")

    def answer(self, number: int, verdict: Optional[Verdict] = ALL_OK, error: Any = None) -> None:
        batch, _, done = self.launched.pop(number)
        done((number, verdict, error))

    def sizes(self) -> List[int]:
        return [len(batch) for batch, _, _ in self.launched.values()]


def test_one_request_in_flight_sends_the_next_batch_only_after_the_answer() -> None:
    run = Harness(max_in_flight=1)
    run.track(2500)
    ticket = run.flush()
    run.step()
    assert run.sizes() == [1000]
    for expected in ([1000], [500]):
        run.answer(min(run.launched))
        run.step()
        assert run.sizes() == expected
    assert not ticket.done.is_set()
    run.answer(min(run.launched))
    run.step()
    assert ticket.done.is_set() and ticket.delivered_all
    assert run.settlement.snapshot(0)["sent"] == 2500 and run.ledger.batches == 3


def test_several_requests_go_at_once_and_may_land_in_any_order() -> None:
    run = Harness(max_in_flight=4)
    run.track(2500)
    assert run.step() == pytest.approx(0.5)  # the last 500 wait for the flush interval
    assert run.sizes() == [1000, 1000]
    run.clock.now += 0.5
    run.step()
    assert sorted(run.sizes()) == [500, 1000, 1000]
    ticket = run.flush()
    run.step()
    for number in sorted(run.launched, reverse=True):  # the newest lands first
        assert not ticket.done.is_set()
        run.answer(number)
        run.step()
    assert ticket.done.is_set() and ticket.delivered_all and run.ledger.sent == 2500
    assert run.settlement.budget.held == 0 and run.settlement.budget.held_bytes == 0


def test_a_full_window_waits_for_an_answer_not_for_a_timer() -> None:
    run = Harness(max_in_flight=2)
    run.track(3000)
    assert run.step() == math.inf  # two in flight, a third batch ready: woken by an answer
    assert run.sizes() == [1000, 1000]
    run.answer(1)
    run.step()
    assert sorted(run.sizes()) == [1000, 1000]


def test_a_passing_failure_shrinks_the_window_and_holds_every_request_for_the_backoff() -> None:
    run = Harness(max_in_flight=4)
    run.track(3000)
    run.step()
    assert len(run.launched) == 3
    run.answer(2)
    run.answer(3)
    run.answer(1, None, TransientError("bulk: HTTP 503", status=503))
    delay = run.step()
    assert run.pump.window.limit == 1 and delay == pytest.approx(1.0)  # backoff(1) = 1 s
    run.track(1000)
    run.step()
    assert run.launched == {}  # no request at all before the backoff ends, fresh ones included
    run.clock.now += 1.0
    run.step()
    assert run.sizes() == [1000] and list(run.launched.values())[0][0].first_seq == 1  # the oldest first
    run.answer(min(run.launched))
    run.step()
    assert run.pump.window.limit == 2  # grows back one success at a time
    assert run.ledger.retried == 1000


def test_retry_after_is_honoured_and_one_beyond_the_deadline_fails_the_batch() -> None:
    run = Harness(max_in_flight=2)
    run.track(10)
    run.flush()
    run.step()
    run.answer(1, None, TransientError("bulk: HTTP 429", status=429, retry_after=5.0))
    assert run.step() == pytest.approx(5.0)
    run.clock.now += 5.0
    run.step()
    run.answer(2, None, TransientError("bulk: HTTP 429", status=429, retry_after=600.0))
    run.step()
    assert run.ledger.failed == 10
    error, commands = run.reports[0]
    assert isinstance(error, ServiceUnavailable) and error.status == 429 and "gave up after 2 attempts" in str(error)
    assert len(commands) == 10


def test_413_splits_the_batch_and_sends_both_halves_at_once() -> None:
    run = Harness(max_in_flight=4)
    run.track(8)
    run.flush()
    run.step()
    run.answer(1, None, InvalidRequest("bulk: the body is too large", status=413))
    run.step()
    assert sorted(run.sizes()) == [4, 4]


def test_per_command_results_settle_each_command() -> None:
    run = Harness(max_in_flight=1)
    run.track(3)
    ticket = run.flush()
    run.step()
    run.answer(1, Verdict([0], [1], [(2, ("type is bad",))], False))
    run.step()
    assert (run.ledger.sent, run.ledger.failed, run.ledger.retried) == (1, 1, 1)
    assert run.sizes() == [1] and list(run.launched.values())[0][0].first_seq == 2  # progress: at once
    error, commands = run.reports[0]
    assert isinstance(error, InvalidRequest) and error.errors == ("type is bad",)
    assert commands[0]["data"]["command_id"] == "id-3" and "company_id" not in commands[0]["data"]
    run.answer(2)
    run.step()
    assert ticket.done.is_set() and ticket.delivered_all is False  # one of its commands failed


def test_the_refusals_of_one_answer_are_one_warning_and_chunks_giving_each_command_its_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setattr(reporting, "CHUNK", 300)
    run = Harness(max_in_flight=1)
    run.track(1000)
    ticket = run.flush()
    run.step()
    refused = [(index, (f"reason {index}", "second")) for index in range(1, 1000, 2)]
    refused += [(index, ()) for index in range(0, 200, 2)]
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        run.answer(1, Verdict([index for index in range(200, 1000, 2)], [], refused, False))
        run.step()
    assert (run.ledger.sent, run.ledger.failed) == (400, 600)
    [warning] = [record.getMessage() for record in caplog.records]
    assert warning.startswith("seven_segments: 600 commands could not be delivered: bulk: the server refused them for good: ")
    assert warning.endswith(
        '"reason 1; second" (1 command), "reason 3; second" (1 command), "reason 5; second" (1 command) and 498 other reasons'
    )
    assert [len(commands) for _, commands in run.reports] == [300, 300]
    reasons = {}
    for error, commands in run.reports:
        assert isinstance(error, InvalidRequest) and error.status == 200 and len(error.errors) == len(commands)
        assert str(error).startswith(f"bulk: {len(commands)} commands were refused (HTTP 200): ")
        for command, reason in zip(commands, error.errors):
            reasons[int(command["data"]["command_id"][3:]) - 1] = reason
    assert reasons == {
        **{index: f"reason {index}; second" for index in range(1, 1000, 2)},
        **{index: "refused, with no reason given" for index in range(0, 200, 2)},
    }
    assert ticket.done.is_set() and ticket.delivered_all is False


def test_a_flush_answers_for_its_own_commands_not_for_later_ones() -> None:
    run = Harness(max_in_flight=4, batch_size=10)
    run.track(10)
    ticket = run.flush()
    run.track(10)
    run.step()
    assert len(run.launched) == 2
    run.answer(1)
    run.step()
    assert ticket.done.is_set() and ticket.delivered_all


def test_at_the_close_deadline_what_is_in_flight_is_unconfirmed_and_what_waits_failed(caplog: Any) -> None:
    run = Harness(max_in_flight=1, batch_size=1000)
    run.track(2500)
    run.step()
    run.pump.begin_close(2.0)
    run.lifecycle.move(Phase.DRAINING)
    assert run.step() == pytest.approx(2.0)
    run.clock.now += 2.0
    with caplog.at_level(logging.WARNING, logger="seven_segments"):
        assert run.step() == -1.0
    assert (run.ledger.unconfirmed, run.ledger.failed, run.ledger.sent) == (1000, 1500, 0)
    assert "2500 commands were lost at close" in caplog.text and "1000 unconfirmed" in caplog.text
    assert [len(commands) for _, commands in run.reports] == [1000, 1000, 500]  # chunks of at most 1000
    assert "may have been applied" in str(run.reports[0][0])
    run.answer(1)  # the request's answer comes late: nothing is counted twice
    run.pump.outcomes.apply()
    assert (run.ledger.sent, run.ledger.unconfirmed) == (0, 1000)


def test_a_request_cut_by_the_close_deadline_is_unconfirmed() -> None:
    run = Harness(max_in_flight=1)
    run.track(5)
    run.flush()
    run.step()
    run.pump.begin_close(0.1)
    run.lifecycle.move(Phase.DRAINING)
    run.clock.now += 0.1
    run.answer(1, None, TransientError("bulk: no complete answer within 0.1 s"))
    assert run.step() == -1.0
    assert (run.ledger.unconfirmed, run.ledger.failed) == (5, 0)


def test_drops_are_reported_with_their_own_reason() -> None:
    run = Harness()
    command = run.encoder.encode(("crm/events", {"registered": "john"}, "view", {}, 1.0, "id-x"))
    for _ in range(3):
        run.settlement.dropped(command, FULL)
    run.step()
    error, commands = run.reports[0]
    assert isinstance(error, QueueFull) and "queue is full" in str(error) and len(commands) == 3
    assert run.settlement.snapshot(0)["dropped_queue_full"] == 3


def outage(run: Harness, number: int) -> None:
    """Request ``number`` fails, and every retry of it, until retry_deadline (60 s) has passed."""
    while True:
        run.answer(number, None, TransientError("bulk: HTTP 503", status=503))
        run.step()  # let go of here, once retry_deadline has passed
        run.clock.now += 30.0  # past the backoff
        run.step()
        if not run.launched:
            return
        (number,) = run.launched


def test_with_a_spool_an_outage_lets_go_and_a_flush_reads_back_and_waits_for_what_it_let_go_of() -> None:
    spool = FakeSpool()
    run = Harness(spool=spool, max_queue_size=40)
    run.track_spooled(10)
    first = run.flush()
    run.step()
    outage(run, 1)
    assert first.done.is_set() and not first.delivered_all  # let go of, not delivered
    assert (run.ledger.kept, run.ledger.failed, run.reports, spool.confirmed) == (10, 0, [], [])
    second = run.flush()
    run.step()  # the flush starts reading them back (chunks of 40 // 4) ...
    run.step()  # ... and waits for them
    assert not second.done.is_set() and run.ledger.kept == 0 and run.launched
    while run.launched:
        run.answer(min(run.launched))
        run.step()
    assert second.done.is_set() and second.delivered_all
    assert sorted(spool.confirmed) == sorted(spool.payloads) and run.ledger.sent == 10


def test_a_flush_stops_waiting_once_what_it_read_back_is_let_go_of_again() -> None:
    spool = FakeSpool()
    run = Harness(spool=spool, max_queue_size=40)
    run.track_spooled(30)  # read back in three chunks of 10
    run.flush()
    run.step()
    outage(run, 1)
    ticket = run.flush()
    run.step()
    run.step()
    assert not ticket.done.is_set() and run.launched
    outage(run, min(run.launched))  # the first chunk read back fails again
    assert ticket.done.is_set() and not ticket.delivered_all
    assert run.ledger.kept + run.settlement.budget.held == 30 and spool.confirmed == []


def test_a_batch_refused_as_a_whole_400_is_split_until_the_bad_command_fails_alone() -> None:
    # A 400 for the whole batch failed all 1,000 of its commands for one bad one (issue 24).
    spool = FakeSpool()
    run = Harness(spool=spool, max_in_flight=8)
    run.track_spooled(8)
    bad = b'{"name":"crm/events","data":{"n":6}}'  # the command the server finds malformed
    ticket = run.flush()
    run.step()
    requests = 0
    while run.launched:
        number = min(run.launched)
        batch = run.launched[number][0]
        requests += 1
        if bad in batch.payloads:
            run.answer(number, None, InvalidRequest("bulk: HTTP 400: the body is not valid JSON", status=400))
        else:
            run.answer(number)
        run.step()
    assert (run.ledger.sent, run.ledger.failed) == (7, 1)
    assert requests == 1 + 2 + 2 + 2  # the whole, then halves of the half that holds it, down to one
    ((error, commands),) = run.reports
    assert isinstance(error, InvalidRequest) and error.status == 400 and commands == [{"name": "crm/events", "data": {"n": 6}}]
    assert sorted(spool.confirmed) == sorted(spool.payloads)  # the bad one too: failed and reported
    assert ticket.done.is_set() and ticket.delivered_all is False


def test_on_error_hears_of_every_command_even_when_one_cannot_be_decoded() -> None:
    # Decoding a payload that was no command raised: on_error never heard of the 999 others (issue 24).
    clock = FakeClock()
    heard: List[List[Dict[str, Any]]] = []
    reporter = Reporter(lambda error, commands: heard.append(commands), clock)
    good = b'{"name":"crm/events","data":{"company_id":"secret-token","command_id":"c1"}}'
    reporter.failed(SevenSegmentsError("refused"), [good, b"", b'{"name":"secret-token"}', good])
    reporter.drain()
    (commands,) = heard
    assert [command["name"] for command in commands] == ["crm/events", None, None, "crm/events"]
    assert commands[0]["data"] == {"command_id": "c1"} and commands[1]["undecodable"] == "JSONDecodeError"
    assert "secret-token" not in repr(commands)

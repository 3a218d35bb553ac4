"""The pump's decisions, driven step by step with a fake clock and a scripted transport in the style
of httpx's ``MockTransport`` (a function from a request to its answer): no socket, no thread, no sleep.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any, Callable, Dict, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from seven_segments._buffered.batching import Batch
from seven_segments._buffered.lifecycle import Lifecycle, Phase
from seven_segments._buffered.limits import Limits
from seven_segments._buffered.pump import FlushTicket, Pump
from seven_segments._buffered.reporting import Reporter
from seven_segments._buffered.retry import RetryPolicy
from seven_segments._buffered.sender import Outcome, attempt_batch
from seven_segments._buffered.settlement import Settlement
from seven_segments.errors import InvalidRequest
from seven_segments.transport import TransientError

from ..conftest import examples


class Request:
    """What the pump sent: the path and the commands of one ``bulk`` body."""

    def __init__(self, path: str, body: bytes) -> None:
        self.path = path
        self.commands: List[Dict[str, Any]] = json.loads(body)["commands"]


Handler = Callable[[Request], Dict[str, Any]]


class MockTransport:
    """A transport whose every ``post`` is answered by ``handler`` (which may raise, as a server's
    failure does); what it was asked is kept in ``requests``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: List[Request] = []

    def post(self, path: str, body: bytes, **_: Any) -> Dict[str, Any]:
        request = Request(path, body)
        self.requests.append(request)
        return self.handler(request)


def all_ok(request: Request) -> Dict[str, Any]:
    return {"success": True, "results": [{"status": "ok"} for _ in request.commands]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A pump whose attempts are answered at once by a ``MockTransport`` (applied at the next step)."""

    def __init__(self, handler: Handler, **limits: Any) -> None:
        self.clock = FakeClock()
        self.lifecycle = Lifecycle()
        self.lifecycle.move(Phase.RUNNING)
        self.incoming: "deque[Any]" = deque()
        self.reports: List[Tuple[Any, List[Dict[str, Any]]]] = []
        reporter = Reporter(lambda error, commands: self.reports.append((error, commands)), self.clock)
        settings = dict(batch_size=100, flush_interval=0.5, max_in_flight=2, retry_deadline=30.0, timeout=5.0)
        settings.update(limits)
        self.limits = Limits(**settings)  # type: ignore[arg-type]
        self.settlement = Settlement(self.limits, reporter, self.lifecycle, self.clock, keep_drops=100)
        self.transport = MockTransport(handler)
        self.pump = Pump(
            limits=self.limits,
            incoming=self.incoming,
            lifecycle=self.lifecycle,
            settlement=self.settlement,
            launch=self._launch,
            clock=self.clock,
            policy=RetryPolicy(30.0, backoff=lambda attempt: 1.0),
        )

    def _launch(self, number: int, batch: Batch, timeout: float, done: Callable[[Outcome], None]) -> None:
        done(attempt_batch(self.transport, None, number, batch, timeout))  # type: ignore[arg-type]

    def track(self, count: int) -> None:
        for number in range(count):
            self.incoming.append(b'{"name":"crm/events","data":{"n":%d}}' % number)

    def flush(self) -> FlushTicket:
        ticket = FlushTicket()
        self.settlement.flushes.queued(ticket)
        self.incoming.append(ticket)
        return ticket

    def step(self, seconds: float = 0.0) -> float:
        self.clock.now += seconds
        return self.pump.step()


def test_a_batch_waits_for_flush_interval_then_goes_and_is_delivered() -> None:
    run = Run(all_ok)
    run.track(10)
    assert run.step() == 0.5 and run.transport.requests == []  # not due before flush_interval
    run.step(0.5)
    assert [len(request.commands) for request in run.transport.requests] == [10]
    run.step()  # the answer is applied
    assert run.settlement.counts.sent == 10 and run.settlement.budget.held == 0


def test_a_flush_sends_at_once_and_is_answered_when_all_settled() -> None:
    run = Run(all_ok)
    run.track(150)
    ticket = run.flush()
    run.step()
    assert [len(request.commands) for request in run.transport.requests] == [100, 50]
    run.step()
    assert ticket.done.is_set() and ticket.delivered_all


def test_a_503_is_sent_again_after_the_backoff() -> None:
    answers = iter([TransientError("503", status=503)])

    def handler(request: Request) -> Dict[str, Any]:
        for error in answers:
            raise error
        return all_ok(request)

    run = Run(handler)
    run.track(5)
    run.flush()
    run.step()
    assert run.step() == 1.0  # the backoff: nothing to do for a second
    run.step(1.0)
    run.step()
    counts = run.settlement.counts
    assert (len(run.transport.requests), counts.sent, counts.retried) == (2, 5, 5)


def test_a_refused_command_fails_alone_and_reaches_on_error_with_its_reason() -> None:
    def handler(request: Request) -> Dict[str, Any]:
        results: List[Dict[str, Any]] = [{"status": "ok"} for _ in request.commands]
        results[1] = {"status": "error", "errors": ["bad property"]}
        return {"success": True, "results": results}

    run = Run(handler)
    run.track(3)
    ticket = run.flush()
    run.step()
    run.step()
    assert (run.settlement.counts.sent, run.settlement.counts.failed) == (2, 1)
    assert ticket.done.is_set() and not ticket.delivered_all
    error, commands = run.reports[0]
    assert isinstance(error, InvalidRequest) and error.errors == ("bad property",) and commands[0]["data"] == {"n": 1}


def test_a_413_splits_the_batch_until_the_command_at_fault_is_alone() -> None:
    def handler(request: Request) -> Dict[str, Any]:
        if any(command["data"]["n"] == 2 for command in request.commands):
            raise InvalidRequest("too large", status=413)
        return all_ok(request)

    run = Run(handler)
    run.track(4)
    run.flush()
    for _ in range(5):
        run.step()
    counts = run.settlement.counts
    assert (counts.sent, counts.failed) == (3, 1) and len(run.reports) == 1


def test_at_the_close_deadline_what_is_left_in_memory_is_lost_and_said() -> None:
    def down(request: Request) -> Dict[str, Any]:
        raise TransientError("connection refused")

    run = Run(down)
    run.track(7)
    ticket = run.flush()
    run.step()
    run.step()  # the failure is applied: the batch waits in line for its backoff
    run.lifecycle.move(Phase.DRAINING)
    run.pump.begin_close(2.0)
    assert run.step(2.0) == -1.0  # the close is done
    counts = run.settlement.counts
    assert counts.failed == 7 and counts.unsettled == 0
    assert ticket.done.is_set() and not ticket.delivered_all
    assert sum(len(commands) for _, commands in run.reports) == 7


def test_a_request_the_close_deadline_cuts_short_is_unconfirmed() -> None:
    def down(request: Request) -> Dict[str, Any]:
        raise TransientError("connection refused")

    run = Run(down)
    run.track(7)
    run.flush()
    run.step()  # sent; its failure comes back after the deadline
    run.lifecycle.move(Phase.DRAINING)
    run.pump.begin_close(2.0)
    assert run.step(2.0) == -1.0
    counts = run.settlement.counts
    assert (counts.unconfirmed, counts.failed, counts.unsettled) == (7, 0, 0)


def test_a_running_pump_passes_drops_to_on_error_a_chunk_at_a_time_within_its_share_of_time() -> None:
    """Dropped commands are decoded for on_error on the pump's thread: reported all at once, a queue that
    drops as fast as a caller tracks left the pump no time to deliver."""
    run = Run(all_ok)
    reports = run.reports

    def slow_on_error(error: Any, commands: List[Dict[str, Any]]) -> None:
        run.clock.now += 0.01  # each call takes 10 ms
        reports.append((error, commands))

    run.settlement.reporter.on_error = slow_on_error
    run.settlement.report_dropped("full", [b'{"name":"crm/events","data":{"n":1}}'] * 3000, 0)  # 3 chunks
    run.track(10)
    run.flush()
    delay = run.step()
    assert [len(request.commands) for request in run.transport.requests] == [10]  # delivery goes on
    assert [len(commands) for _, commands in reports] == [1000]  # one chunk of drops in this step ...
    assert abs(delay - 0.03) < 1e-6  # ... and the next when the pump has spent 3 times as long on the rest
    run.step()
    assert len(reports) == 1
    run.step(delay + 1e-6)
    assert len(reports) == 2
    run.lifecycle.move(Phase.DRAINING)  # a close reports them all
    run.pump.begin_close(5.0)
    run.step()
    assert [len(commands) for _, commands in reports] == [1000] * 3


def test_giving_up_at_the_close_passes_the_refusals_of_a_split_still_under_way_to_on_error() -> None:
    """The close path a closer runs when the pump does not come back (``Pump.give_up``): commands refused
    alone while another part of their split waits to be sent again reach on_error with their reason."""

    def handler(request: Request) -> Dict[str, Any]:
        numbers = [command["data"]["n"] for command in request.commands]
        if 0 in numbers:
            raise InvalidRequest("bad command", status=400, errors=("bad property",))
        raise TransientError("503", status=503)

    run = Run(handler)
    run.track(2)
    run.flush()
    for _ in range(3):
        run.step()  # refused as a whole, split; [0] refused alone, [1] waits for its backoff
    assert run.reports == [] and run.settlement.counts.failed == 1
    run.lifecycle.move(Phase.DRAINING)
    run.pump.begin_close(0.0)
    run.pump.give_up()
    run.settlement.reporter.drain()
    reported = {commands[0]["data"]["n"]: error for error, commands in run.reports}
    assert set(reported) == {0, 1}
    assert isinstance(reported[0], InvalidRequest) and reported[0].errors == ("bad property",)


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=3), st.just(None)), max_size=30))
def test_taken_items_split_at_flush_tickets_keep_their_order(shape: List[Any]) -> None:
    """Commands between flush tickets go on as runs (lists), each ticket alone, in the queue's order."""
    from seven_segments._buffered.pump import _split_at_tickets

    items = [FlushTicket() if item is None else item for item in shape]
    runs = _split_at_tickets(items)
    flattened: List[Any] = []
    for run in runs:
        if type(run) is FlushTicket:
            flattened.append(run)
        else:
            assert type(run) is list and run and all(type(item) is bytes for item in run)
            flattened.extend(run)
    assert [id(item) for item in flattened] == [id(item) for item in items]
    assert all(type(a) is FlushTicket or type(b) is FlushTicket for a, b in zip(runs, runs[1:]))  # runs never adjacent


def test_a_batch_cut_from_the_line_takes_the_oldest_commands() -> None:
    from seven_segments._buffered.line import Line

    line = Line(Limits())
    line.extend([b"a", b"bb", b"ccc"], 6)
    first = line.cut_fresh(2, 1.0)
    assert first.payloads == [b"a", b"bb"] and list(first.seqs) == [1, 2] and line.fresh_bytes == 3
    rest = line.cut_fresh(1, 2.0)
    assert rest.payloads == [b"ccc"] and list(rest.seqs) == [3] and not line.fresh and line.fresh_bytes == 0

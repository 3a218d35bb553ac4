"""The buffered engine's pure decisions, with plain values and a fake clock: no sockets, no sleeps."""

from __future__ import annotations

import json
from typing import List

import pytest

from seven_segments._buffered.answers import ALL_OK, answer_reader, read_results
from seven_segments._buffered.batching import Batch, fit_to_bytes, fresh_batch_due
from seven_segments._buffered.lifecycle import MOVES, Lifecycle, Phase
from seven_segments._buffered.retry import RetryPolicy
from seven_segments._buffered.window import Window


def due(**overrides: object) -> bool:
    values = dict(
        count=10, size=1000, oldest_at=0.0, now=0.1, batch_size=1000, max_batch_bytes=5_000_000,
        flush_interval=0.5, flush_waiting=False, draining=False,
    )
    values.update(overrides)
    return fresh_batch_due(**values)  # type: ignore[arg-type]


def test_a_partial_batch_waits_for_the_flush_interval() -> None:
    assert due() is False
    assert due(now=0.5) is True


@pytest.mark.parametrize(
    "overrides", [{"count": 1000}, {"size": 5_000_000}, {"flush_waiting": True}, {"draining": True}]
)
def test_a_full_batch_a_flush_or_a_close_sends_at_once(overrides: dict) -> None:
    assert due(**overrides) is True


def test_nothing_waiting_is_never_due() -> None:
    assert due(count=0, draining=True, flush_waiting=True) is False


def test_fit_to_bytes_keeps_at_least_one_command() -> None:
    assert fit_to_bytes([100, 100, 100], 250) == 2
    assert fit_to_bytes([1000], 10) == 1
    assert fit_to_bytes([10, 10], 10_000) == 2


def test_batch_halves_and_subsets_keep_their_history() -> None:
    batch = Batch(range(5, 9), [b"a", b"b", b"c", b"d"], since=3.0, attempts=2)
    front, back = batch.halves()
    assert list(front.seqs) == [5, 6] and list(back.seqs) == [7, 8] and front.since == back.since == 3.0
    again = batch.subset([1, 3], attempts=1, not_before=9.0)
    assert (list(again.seqs), again.payloads, again.since, again.not_before) == ([6, 8], [b"b", b"d"], 3.0, 9.0)


def test_the_window_shrinks_to_one_on_trouble_and_grows_back_one_by_one() -> None:
    window = Window(4)
    assert window.room(3, now=0.0) and not window.room(4, now=0.0)
    window.on_transient(now=10.0, retry_after=None)
    assert window.limit == 1 and window.room(0, 10.0) and not window.room(1, 10.0)
    for expected in (2, 3, 4, 4):
        window.on_success()
        assert window.limit == expected


def test_retry_after_closes_the_gate_for_every_request() -> None:
    window = Window(8)
    window.on_transient(now=10.0, retry_after=2.0)
    assert not window.room(0, now=11.9) and window.opens_at(11.9) == 12.0
    assert window.room(0, now=12.0) and window.opens_at(12.0) is None


def backoff(attempt: int) -> float:
    return 0.5 * attempt


def test_a_passing_failure_is_retried_after_the_backoff_never_before_retry_after() -> None:
    policy = RetryPolicy(retry_deadline=10.0, backoff=backoff)
    batch = Batch(range(1, 3), [b"x", b"y"], since=0.0, attempts=1)
    assert policy.after_transient(batch, now=1.0, retry_after=None) == 2.0  # backoff(2) = 1.0
    assert policy.after_transient(batch, now=1.0, retry_after=3.0) == 4.0


def test_retries_stop_at_the_retry_deadline_and_at_a_retry_after_beyond_it() -> None:
    policy = RetryPolicy(retry_deadline=10.0, backoff=backoff)
    batch = Batch(range(1, 2), [b"x"], since=0.0)
    assert policy.after_transient(batch, now=9.8, retry_after=None) is None
    assert policy.after_transient(batch, now=1.0, retry_after=60.0) is None


def test_commands_answered_retry_go_again_at_once_after_progress_after_a_backoff_without() -> None:
    policy = RetryPolicy(retry_deadline=10.0, backoff=backoff)
    batch = Batch(range(1, 3), [b"x", b"y"], since=0.0, attempts=0)
    assert policy.after_retry_results(batch, now=1.0, progress=True) == (0, 1.0)
    assert policy.after_retry_results(batch, now=1.0, progress=False) == (1, 1.5)
    assert policy.after_retry_results(batch, now=10.0, progress=True) is None


def test_reading_results_sorts_every_command() -> None:
    verdict = read_results(
        [{"status": "ok"}, {"status": "retry"}, {"status": "error", "errors": ["bad type"]}, "junk", {"status": "?"}],
        6,
    )
    assert not verdict.all_ok and verdict.progress
    assert verdict.ok == [0] and verdict.retry == [1, 3, 4, 5]  # junk, unknown and missing mean retry
    assert verdict.errors == [(2, ("bad type",))]


def test_an_all_ok_answer_is_read_at_once_and_a_missing_results_list_means_retry() -> None:
    assert read_results([{"status": "ok"}] * 3, 3).all_ok
    nothing = read_results(None, 2)
    assert nothing.retry == [0, 1] and not nothing.progress


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_the_usual_answer_is_recognised_byte_for_byte_without_decoding_each_result(separators: tuple) -> None:
    usual = json.dumps({"success": True, "results": [{"status": "ok"}] * 3}, separators=separators).encode()
    answer = answer_reader(3)(usual)
    assert answer == {"success": True, "results": ALL_OK} and read_results(answer["results"], 3).all_ok


@pytest.mark.parametrize(
    "body",
    [
        b'{"success":true,"results":[{"status":"ok"},{"status":"ok"}]}',  # one result missing
        b'{"success":true,"results":[{"status":"ok"},{"status":"ok"},{"status":"retry"}]}',
        b'{"success":true, "results":[{"status":"ok"},{"status":"ok"},{"status":"ok"}]}',  # unusual spacing
        b'{"results":[{"status":"ok"},{"status":"ok"},{"status":"ok"}],"success":true}',  # another order
    ],
)
def test_any_other_answer_is_decoded_and_read_entry_by_entry(body: bytes) -> None:
    answer = answer_reader(3)(body)
    assert answer == json.loads(body) and answer["results"] is not ALL_OK
    assert read_results(answer["results"], 3).all_ok is (answer["results"] == [{"status": "ok"}] * 3)


def test_the_life_cycle_moves_only_as_written() -> None:
    lifecycle = Lifecycle()
    assert lifecycle.phase is Phase.IDLE and lifecycle.admitting
    assert lifecycle.move(Phase.STOPPED) is False and lifecycle.phase is Phase.IDLE
    path: List[Phase] = [Phase.RUNNING, Phase.IDLE, Phase.RUNNING, Phase.DRAINING, Phase.STOPPED]
    for phase in path:
        assert lifecycle.move(phase) is True
    assert lifecycle.stopped.is_set() and not lifecycle.admitting
    assert MOVES[Phase.STOPPED] == frozenset()
    assert lifecycle.move(Phase.RUNNING) is False


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "body",
    [
        b'{"success":true,"results":[{"status":"ok"},{"status":"error","errors":["x"]},{"status":"ok"}]}',
        b'{"success": true, "n": NaN, "results": []}',  # json takes NaN, orjson does not
        b'{"success": true, "big": 123456789012345678901234567890, "s": "\\ud800"}',  # past 64 bits, a lone surrogate
        '{"success": true, "results": []}'.encode("utf-16"),  # json.loads detects UTF-16; orjson refuses it
    ],
)
def test_an_answer_is_decoded_as_json_loads_decodes_it_with_orjson_or_without(
    body: bytes, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from seven_segments._buffered import answers

    if not fast:
        monkeypatch.setattr(answers, "_orjson_loads", None)
    assert json.dumps(answers.decode_answer(body)) == json.dumps(json.loads(body))  # NaN != NaN: compared as text
    with pytest.raises(ValueError):
        answers.decode_answer(b'{"success": tr')

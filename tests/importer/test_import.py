"""``seven-segments import``: formats, bad lines and the rejects file, dry runs, resuming, its state files."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from seven_segments.cli import main
from seven_segments.importer.formats import LineError, parse_json_line
from seven_segments.importer.sources import id_prefix
from seven_segments.testing import LocalServer

from ..conftest import TOKEN

ROOT = Path(__file__).resolve().parents[2]
T0 = 1700000000


def event(i: int, **extra: Any) -> Dict[str, Any]:
    line: Dict[str, Any] = {"type": "purchase", "customer": f"c{i}", "properties": {"n": i}, "timestamp": T0 + i}
    line.update(extra)
    return line


def write_lines(path: Path, lines: List[Any]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SEVEN_SEGMENTS_TOKEN", TOKEN)
    return TOKEN


def run_import(*words: str) -> int:
    return main(["import", *words, "--progress-interval", "600"])


def rejects_of(path: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in Path(str(path) + ".import-rejects.jsonl").read_text().splitlines()]


def test_bad_lines_are_rejected_counted_and_written_to_the_rejects_file(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh.faults.command_results(1, "error")  # the API refuses the first command it receives (line 1)
    source = write_lines(tmp_path / "mixed.jsonl", [
        event(1),
        event(2),
        '{"type": "purchase", "customer": "c3", oops}',                      # 3: bad JSON
        event(4, properties=["not", "an", "object"]),                       # 4: bad type
        event(5, timestamp="2023-11-14T22:13:20"),                          # 5: naive timestamp
        event(6, timestamp=1700000000000),                                  # 6: milliseconds
        event(7, properties={"blob": "x" * 200_000}),                       # 7: oversized properties
        event(8, customer=12345),                                           # 8: bad customer
        {"type": "purchase", "customer": "c9", "timestmap": T0},            # 9: misspelt key
        "",                                                                 # 10: blank
        {"update": {"plan": "gold"}, "customer": "c11", "timestamp": "2023-11-14T22:13:20Z"},
        event(12, command_id="order-12"),
        json.dumps(event(13, properties={"huge": "y" * (5 << 20)})),         # 13: longer than any command
        event(14),
    ])
    assert run_import(str(source), "--target", fresh.url) == 1
    out, err = capsys.readouterr()
    assert "14 lines, 4 delivered, 9 rejected, 1 blank" in out
    rejects = rejects_of(source)
    reasons = {entry["line"]: entry["reason"] for entry in rejects}
    assert sorted(reasons) == [1, 3, 4, 5, 6, 7, 8, 9, 13]
    assert "longer than 4194304 bytes" in reasons[13]
    assert reasons[1].startswith("refused by the API")
    assert rejects[-1]["line"] == 1 and rejects[-1]["command"]["data"]["command_id"] == f"{id_prefix(_identity(source))}-1"
    assert "not JSON" in reasons[3]
    assert "properties" in reasons[4] and "list" in reasons[4]
    assert "no time zone" in reasons[5]
    assert "milliseconds" in reasons[6]
    assert "at most 102400" in reasons[7]
    assert "customer" in reasons[8]
    assert "'timestmap'" in reasons[9]
    assert all(entry["file"] == str(source) for entry in rejects)
    assert next(e for e in rejects if e["line"] == 9)["text"] == json.dumps({"type": "purchase", "customer": "c9", "timestmap": T0})
    for line in (3, 5, 6):
        assert f"{source}:{line}: " in err
    assert TOKEN not in err + out + Path(str(source) + ".import-rejects.jsonl").read_text()
    assert [e["properties"]["n"] for e in fresh.events()] == [2, 12, 14]
    assert fresh.events()[1]["command_id"] == "order-12"
    assert fresh.customer("c11") == {"plan": "gold"}
    # Run again: the checkpoint says it is done; the exit status still says not everything arrived.
    assert run_import(str(source), "--target", fresh.url) == 1
    assert "imported already" in capsys.readouterr().out
    assert len(fresh.events()) == 3


def _identity(path: Path) -> str:
    from seven_segments.importer.sources import file_identity

    return file_identity(str(path))


def test_max_errors_stops_the_import_and_a_rerun_stops_again(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "bad.jsonl", ["{"] * 5 + [event(i) for i in range(6, 3000)])
    assert run_import(str(source), "--target", fresh.url, "--max-errors", "2") == 1
    out = capsys.readouterr().out
    assert "stopped: more than --max-errors 2 lines were rejected" in out
    assert len(rejects_of(source)) == 3 and fresh.stats()["events"] == 0


def test_dry_run_checks_every_line_and_sends_nothing(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "dry.jsonl", [event(1), event(2, timestamp=1700000000000), event(3)])
    assert run_import(str(source), "--target", fresh.url, "--dry-run") == 1
    out, err = capsys.readouterr()
    assert "3 lines, 2 checked, 1 rejected" in out
    assert f"{source}:2: " in err and "milliseconds" in err
    assert fresh.stats()["requests"] == 0
    assert not [name for name in os.listdir(tmp_path) if name != "dry.jsonl"]  # no state written
    good = write_lines(tmp_path / "good.jsonl", [event(1)])
    assert run_import(str(good), "--dry-run") == 0  # no target is contacted


def test_csv_gzip_and_a_resume_after_the_file_grew_are_refused_or_read(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "customers.csv.gz"
    with gzip.open(source, "wt", newline="") as stream:
        stream.write("customer.registered,customer.cookie,timestamp,plan,age,command_id\n")
        stream.write("john,ck1,2023-11-14T22:13:20Z,gold,42,\n")
        stream.write(",ck2,1700000001,silver,,u-2\n")
        stream.write(",,1700000002,none,,\n")  # no customer
    assert run_import(str(source), "--target", fresh.url) == 1
    out = capsys.readouterr().out
    assert "4 lines, 2 delivered, 1 rejected" in out
    assert rejects_of(source)[0]["line"] == 4 and rejects_of(source)[0]["row"]["plan"] == "none"
    john = fresh.customer({"registered": "john", "cookie": "ck1"})
    assert john == {"plan": "gold", "age": 42}
    events = tmp_path / "events.csv"
    events.write_text("type,customer,timestamp,amount\npurchase,c1,1700000000,5\n")
    assert run_import(str(events), "--target", fresh.url) == 0
    assert fresh.events()[0]["properties"] == {"amount": 5}
    with open(events, "a") as stream:  # the file changed since its checkpoint: its ids would change
        stream.write("purchase,c2,1700000001,6\n")
    assert run_import(str(events), "--target", fresh.url) == 2
    assert "content changed since" in capsys.readouterr().err
    assert run_import(str(events), "--target", fresh.url, "--restart") == 0
    assert [e["properties"]["amount"] for e in fresh.events()] == [5, 5, 6]  # --restart: new ids, as it warns


@pytest.mark.slow
def test_standard_input_needs_a_source_id_and_resumes_by_it(tmp_path: Path, fresh: LocalServer) -> None:
    env = dict(os.environ, SEVEN_SEGMENTS_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    lines = "".join(json.dumps(event(i)) + "\n" for i in range(1, 4)).encode()
    command = [sys.executable, "-m", "seven_segments", "import", "-", "--target", fresh.url, "--state", str(tmp_path)]
    refused = subprocess.run(command, input=lines, env=env, capture_output=True)
    assert refused.returncode == 2 and b"--source-id" in refused.stderr
    done = subprocess.run(command + ["--source-id", "batch-7"], input=gzip.compress(lines), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "stdin-batch-7.import-checkpoint.json").exists()
    again = subprocess.run(command + ["--source-id", "batch-7", "--restart"], input=lines, env=env, capture_output=True)
    assert again.returncode == 0 and fresh.stats()["events"] == 3 and fresh.stats()["duplicates"] == 3


def test_state_files_are_not_followed_through_links(tmp_path: Path, fresh: LocalServer, token: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "a.jsonl", [event(1)])
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text("{}")
    os.symlink(elsewhere, str(source) + ".import-checkpoint.json")
    assert run_import(str(source), "--target", fresh.url) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert elsewhere.read_text() == "{}"


def test_state_is_never_kept_in_a_folder_others_can_write_to(tmp_path: Path, fresh: LocalServer, token: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: anyone may plant a checkpoint saying the input was imported already
    source = write_lines(shared / "a.jsonl", [event(1)])
    planted = {"version": 1, "identity": _identity(source), "confirmed_line": 1, "delivered": 1, "rejected": 0,
               "blank": 0, "finished": True}
    Path(str(source) + ".import-checkpoint.json").write_text(json.dumps(planted))
    assert run_import(str(source), "--target", fresh.url) == 2
    assert f"not kept in {shared}: others can make files in it" in capsys.readouterr().err
    assert run_import(str(source), "--state", str(tmp_path), "--target", fresh.url) == 0
    assert len(fresh.events()) == 1


def test_a_second_import_of_the_same_input_at_once_is_refused(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from seven_segments.importer.state import StateFiles

    source = write_lines(tmp_path / "a.jsonl", [event(1)])
    running = StateFiles(str(source))
    running.lock()
    try:
        assert run_import(str(source), "--target", fresh.url) == 2
        assert "another import of this input is running" in capsys.readouterr().err
    finally:
        running.unlock()
    assert run_import(str(source), "--target", fresh.url) == 0


def test_without_a_token_import_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SEVEN_SEGMENTS_TOKEN", raising=False)
    source = write_lines(tmp_path / "a.jsonl", [event(1)])
    assert run_import(str(source)) == 2
    assert "SEVEN_SEGMENTS_TOKEN" in capsys.readouterr().err


def test_json_line_shapes() -> None:
    call = parse_json_line(b'{"update": {"a": 1}, "customer": {"cookie": "x"}, "timestamp": "1700000000.5"}\n')
    assert call[0] is None and call[1] == {"a": 1} and call[3] == 1700000000.5
    for bad, words in [
        (b"[1]", "JSON object"),
        (b'{"customer": "a", "timestamp": 1}', "neither"),
        (b'{"type": "a", "update": {}, "customer": "a", "timestamp": 1}', "both"),
        (b'{"type": "a", "timestamp": 1}', '"customer"'),
        (b'{"type": "a", "customer": "a"}', '"timestamp"'),
        (b'{"update": [1], "customer": "a", "timestamp": 1}', "object"),
        (b'{"type": "a", "customer": "a", "timestamp": "yesterday"}', "ISO 8601"),
        (b'\xff{}', "UTF-8"),
    ]:
        with pytest.raises(LineError, match=words):
            parse_json_line(bad)


def test_an_unreachable_api_stops_the_import_and_the_next_run_delivers_everything(
    tmp_path: Path, fresh: LocalServer, dead_url: str, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "later.jsonl", [event(i) for i in range(1, 2001)])
    assert run_import(str(source), "--target", dead_url, "--retry-deadline", "0.2", "--timeout", "1") == 1
    out = capsys.readouterr().out
    assert "stopped: line 1 and others were not delivered (ServiceUnavailable" in out
    assert not Path(str(source) + ".import-rejects.jsonl").exists()  # not delivered is not rejected
    assert run_import(str(source), "--target", fresh.url) == 0
    assert fresh.stats()["events"] == 2000


def test_refusals_are_matched_to_their_lines_by_command_id(tmp_path: Path) -> None:
    from seven_segments.errors import InvalidRequest, ServiceUnavailable
    from seven_segments.importer.confirm import Confirmer
    from seven_segments.importer.state import Checkpoint, StateFiles

    rejected: List[Any] = []
    confirmer = Confirmer(None, StateFiles(str(tmp_path / "x")), Checkpoint("source:x"), "abc",
                          lambda line, reason, details: rejected.append((line, reason)), 1.0)
    confirmer.own_id(7, "order-7")
    commands = [{"name": "crm/events", "data": {"command_id": cid}} for cid in ("abc-3", "order-7")]
    confirmer.on_error(InvalidRequest("bulk: 2 commands were refused", status=200, errors=["bad a", "bad b"]), commands)
    assert rejected == [(3, "refused by the API: bad a"), (7, "refused by the API: bad b")]
    assert confirmer.refused == 2 and not confirmer.failed
    confirmer.on_error(ServiceUnavailable("bulk: gave up"), [{"name": "crm/events", "data": {"command_id": "abc-9"}}])
    assert confirmer.failure is not None and confirmer.failure[0] == 9


def test_a_csv_line_longer_than_any_command_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    import io
    import tracemalloc

    from seven_segments.importer.formats import CsvRows
    from seven_segments.importer.reading import MAX_LINE

    # A file with no line break (a dump given as CSV by mistake) was read whole, then refused.
    data = b"type,customer,timestamp,note\np,c1,1," + b"x" * (6 * MAX_LINE) + b"\r\np,c2,2,ok\n"
    tracemalloc.start()
    try:
        rows = [(number, call) for number, call, _ in CsvRows(io.BytesIO(data))]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * MAX_LINE  # a few pieces of text at a time, never the line (twice its size before)
    assert [number for number, _ in rows] == [2, 3]
    assert isinstance(rows[0][1], LineError) and "longer than" in str(rows[0][1])
    assert rows[1][1] == ("p", {"note": "ok"}, "c2", 2.0, None)


def test_a_gzip_input_cut_short_delivers_the_lines_before_and_says_so(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = gzip.compress("".join(json.dumps(event(i)) + "\n" for i in range(1, 3001)).encode())
    source = tmp_path / "partial.jsonl.gz"
    source.write_bytes(whole[: len(whole) // 2])  # a download cut short
    assert run_import(str(source), "--target", fresh.url) == 1
    out, err = capsys.readouterr()
    read = len(fresh.events())
    assert 0 < read < 3000 and f"stopped: it cannot be read past line {read}: its gzip content is cut short" in out
    checkpoint = json.loads(Path(str(source) + ".import-checkpoint.json").read_text())
    assert checkpoint["confirmed_line"] == checkpoint["delivered"] == read and not checkpoint["finished"]
    source.write_bytes(whole[:100] + b"\0" * 400 + whole[500:])
    assert run_import(str(source), "--dry-run") == 1
    assert "its gzip content is damaged" in capsys.readouterr().out


def test_short_csv_rows_never_overflow_the_queue_with_one_request_in_flight(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rows of a few bytes: tens of thousands of them between two looks at the queue, which held 8,000
    # commands with --max-in-flight 1; the rest were dropped, and every run stopped at the same place.
    source = tmp_path / "short.csv"
    source.write_text("type,customer,timestamp\n" + "".join(f"a,c,{i}\n" for i in range(20000)))
    fresh.latency = 0.01
    assert run_import(str(source), "--target", fresh.url, "--max-in-flight", "1") == 0
    assert "dropped" not in capsys.readouterr().err
    assert fresh.stats()["events"] == 20000


def test_options_out_of_range_are_refused_naming_the_option(
    tmp_path: Path, dead_url: str, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "a.jsonl", [event(1)])
    with pytest.raises(SystemExit) as exit_:  # --help says 1 to 32: 64 was taken, then refused as "max_in_flight"
        main(["import", str(source), "--target", dead_url, "--max-in-flight", "64"])
    assert exit_.value.code == 2 and "--max-in-flight: '64' must be 1 to 32" in capsys.readouterr().err
    assert main(["import", str(source), "--target", dead_url, "--progress-interval", "nan"]) == 2
    assert "--progress-interval must be a number > 0" in capsys.readouterr().err


def test_restart_of_an_input_imported_already_applies_nothing_twice(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_lines(tmp_path / "a.jsonl", [event(1), event(2)])
    assert run_import(str(source), "--target", fresh.url) == 0
    assert run_import(str(source), "--target", fresh.url) == 0
    assert "--restart sends it again, with the same command ids" in capsys.readouterr().out  # not "imports it again"
    assert run_import(str(source), "--target", fresh.url, "--restart") == 0
    assert len(fresh.events()) == 2 and fresh.stats()["duplicates"] == 2


def test_the_time_left_of_a_resumed_run_counts_from_where_it_resumed(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import types

    from seven_segments.importer import progress as progress_module

    now = [0.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    position = [0]
    stream = io.StringIO()
    progress = progress_module.Progress("a.jsonl", 1000, lambda: position[0], 5.0, stream=stream, dry_run=True,
                                        start_line=900)
    progress.update(progress_module.Counts(read=900, accepted=900))
    now[0], position[0] = 0.5, 901  # the 900 lines confirmed before are read past at once
    progress.update(progress_module.Counts(read=901, accepted=901))
    now[0], position[0] = 10.5, 950  # half of this run's 99 lines in 10 s: about 10 s left, not 1
    progress.update(progress_module.Counts(read=950, accepted=950), force=True)
    assert "95% read, about 10s left" in stream.getvalue()


def test_a_pipe_without_a_source_id_is_refused_not_hashed_away(
    tmp_path: Path, fresh: LocalServer, token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    fifo = tmp_path / "export.fifo"  # as bash's <(zcat export.gz): hashing read it all, then 0 lines imported, exit 0
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w") as writer:
            writer.write(json.dumps(event(1)) + "\n")

    def let_a_second_reader_end(done: threading.Event) -> None:  # a second open would wait for a writer for ever
        while not done.wait(0.02):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader
                pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    first_run_over = threading.Event()
    threading.Thread(target=let_a_second_reader_end, args=(first_run_over,), daemon=True).start()
    try:
        assert run_import(str(fifo), "--target", fresh.url) == 2
    finally:
        first_run_over.set()
    assert "is not a regular file (a pipe?)" in capsys.readouterr().err
    assert run_import(str(fifo), "--target", fresh.url, "--source-id", "export-1") == 0  # read once, by its name
    feeder.join(5)
    assert len(fresh.events()) == 1


def test_the_rejects_file_is_cut_back_one_entry_at_a_time(tmp_path: Path) -> None:
    import tracemalloc

    from seven_segments.importer.state import Rejects

    rejects = Rejects(str(tmp_path / "a.jsonl.import-rejects.jsonl"))
    text = "x" * (1 << 20)
    for line in range(1, 13):
        rejects.write({"file": "a.jsonl", "line": line, "reason": "bad", "text": text})
    rejects.close()
    with open(rejects.path, "ab") as cut:
        cut.write(b'{"file": "a.jsonl", "line": 3, "rea')  # the entry a kill cut short
    tracemalloc.start()
    try:
        assert rejects.keep_up_to(10) == 10
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # a resumed run read the whole file, then held its entries and the new file's content
    assert [json.loads(entry)["line"] for entry in Path(rejects.path).read_bytes().splitlines()] == list(range(1, 11))
    assert rejects.keep_up_to(10) == 10


def test_a_token_the_api_refuses_stops_the_import_and_confirms_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The API refuses a bulk request's commands one by one for their token: each line was "rejected",
    # the checkpoint finished, and a run with the right token said "imported already".
    server = LocalServer(tokens=["known"])
    server.start()
    try:
        source = write_lines(tmp_path / "a.jsonl", [event(i) for i in range(1, 41)])
        monkeypatch.setenv("SEVEN_SEGMENTS_TOKEN", "unknown")
        assert run_import(str(source), "--target", server.url) == 1
        out = capsys.readouterr().out
        assert "0 rejected" in out and "the API refused the company token" in out and "$SEVEN_SEGMENTS_TOKEN" in out
        assert not Path(str(source) + ".import-rejects.jsonl").exists()
        monkeypatch.setenv("SEVEN_SEGMENTS_TOKEN", "known")
        assert run_import(str(source), "--target", server.url) == 0
        assert len(server.events()) == 40
    finally:
        server.stop()


def test_the_import_takes_the_engines_window_by_default_and_its_bounds() -> None:
    """The import's defaults are the client's (written out there so that the command line does not
    import the engine)."""
    import argparse

    from seven_segments._buffered.limits import DEFAULT_MAX_IN_FLIGHT, MAX_IN_FLIGHT
    from seven_segments.importer import add_arguments
    from seven_segments.importer.job import IMPORT_MAX_IN_FLIGHT

    assert IMPORT_MAX_IN_FLIGHT == DEFAULT_MAX_IN_FLIGHT
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["x.jsonl"]).max_in_flight == DEFAULT_MAX_IN_FLIGHT
    assert f"1 to {MAX_IN_FLIGHT} (default: {DEFAULT_MAX_IN_FLIGHT})" in " ".join(parser.format_help().split())

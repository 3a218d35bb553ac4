"""Turn the aggregated results into the markdown tables that ``run.py`` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import libs

Results = Dict[str, Dict[str, Any]]


def number(value: Any) -> Optional[float]:
    """A finite float, or None for anything else (missing, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any) -> str:
    """Three significant figures, thousands separated; text unchanged; ``-`` for nothing."""
    x = number(value)
    if x is None:
        return "-" if value is None or isinstance(value, float) else str(value)
    if abs(x) >= 1000 or x == int(x):
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


@dataclass
class Figure:
    """One row of the summary: where the number is, and which way is better."""

    label: str
    key: str
    field: str
    lower_is_better: bool = True
    complete_only: bool = False  # only peers that delivered every event compete for "best"

    def value(self, results: Results, lib: str) -> Optional[float]:
        cell = results.get(lib, {}).get(self.key, {})
        if self.field == "script_s" and "script_s" not in cell and "queue_s" in cell:
            return number(cell["queue_s"] + cell["exit_s"])  # results saved before script_s existed
        return number(cell.get(self.field))

    def eligible(self, results: Results, lib: str) -> bool:
        cell = results.get(lib, {}).get(self.key, {})
        return not self.complete_only or cell.get("lost", 1) == 0


FIGURES = [
    Figure("caller: `track` median, 1 thread (µs)", "caller1", "median_us"),
    Figure("caller: `track` p99, 1 thread (µs)", "caller1", "p99_us"),
    Figure("caller: `track` median, 4 threads (µs)", "caller4", "median_us"),
    Figure("caller: `track` p99, 4 threads (µs)", "caller4", "p99_us"),
    Figure("delivery: events/s, first call until the server has all", "delivery", "events_per_s", False, True),
    Figure("CPU per delivered event (µs, client process)", "delivery", "cpu_us_per_event", True, True),
    Figure("memory per queued command, server down (bytes)", "memory", "bytes_per_command"),
    Figure("exit: script queuing 100k, first call until the process ended, no flush call (s)", "exit", "script_s", True, True),
    Figure("exit: same, with the library's flush/shutdown call (s)", "exit_explicit", "script_s", True, True),
    Figure("exit, server down: last call until the process ended (s)", "exit_down", "exit_s"),
]

def roundtrip_keys(results: Results) -> List[str]:
    """The roundtrip scenario keys present in ``results`` (``roundtrip50``...), by round trip."""
    keys = {key for entry in results.values() if isinstance(entry, dict) for key in entry if key.startswith("roundtrip")}
    return sorted(keys, key=lambda k: int(k[len("roundtrip"):] or 0))


def roundtrip_ms(key: str) -> int:
    return int(key[len("roundtrip"):] or 0)


def roundtrip_label(key: str) -> str:
    return f"delivery at {roundtrip_ms(key)} ms round trip (events/s)"


def figures(results: Results) -> List[Figure]:
    """The summary's rows: the fixed ones, with a row per round trip measured after the delivery rows."""
    extra = [Figure(roundtrip_label(key), key, "events_per_s", False, True) for key in roundtrip_keys(results)]
    return FIGURES[:6] + extra + FIGURES[6:]


#: Issue 8's goals at a round trip (ms): events/s with nothing lost.
ROUNDTRIP_GOALS = {50: 100_000, 100: 60_000}

TARGETS = [
    ("caller median, 1 thread <= 3 µs", "caller1", "median_us", lambda v: v <= 3),
    ("caller p99, 1 thread <= 20 µs", "caller1", "p99_us", lambda v: v <= 20),
    ("caller median, 4 threads <= 3 µs", "caller4", "median_us", lambda v: v <= 3),
    ("caller p99, 4 threads <= 20 µs", "caller4", "p99_us", lambda v: v <= 20),
    (">= 100,000 events/s delivered", "delivery", "events_per_s", lambda v: v >= 100_000),
    ("<= 10 µs CPU per event", "delivery", "cpu_us_per_event", lambda v: v <= 10),
    ("<= 300 bytes per queued command beyond its JSON", "memory", "bytes_beyond_json", lambda v: v <= 300),
]


def table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def error_of(results: Results, lib: str, key: str) -> str:
    entry = results.get(lib, {})
    if "install_error" in entry:
        return "not installed"
    cell = entry.get(key)
    if cell is None:
        return "not run"
    return str(cell.get("error", "-"))


#: How the naive clients are named in the tables.
LABELS = {"floor_bulk": "naive json", "floor_bulk_orjson": "naive orjson"}


def lib_label(lib: str) -> str:
    return LABELS.get(lib, lib)


def floor_cells(results: Results, figure: "Figure", floors: List[str], ours: Optional[float]) -> List[str]:
    """A naive client's figure per floor, then ours divided by each (``-`` where it was not run)."""
    values = [figure.value(results, f) if figure.key in results.get(f, {}) else None for f in floors]
    cells = [fmt(v) if v is not None else ("-" if figure.key not in results.get(f, {}) else error_of(results, f, figure.key))
             for f, v in zip(floors, values)]
    ratios = [f"{ours / v:.2f}×" if ours is not None and v else "-" for v in values]
    return cells + ratios


def summary(results: Results, peers: List[str], floors: List[str] = ()) -> str:
    floors = list(floors)
    rows = []
    for figure in figures(results):
        ours = figure.value(results, "ours")
        candidates = [(p, figure.value(results, p)) for p in peers]
        valid = [(p, v) for p, v in candidates if v is not None]
        eligible = [(p, v) for p, v in valid if figure.eligible(results, p)]
        pool, mark = (eligible, "") if eligible else (valid, " †")
        best: Optional[tuple] = None
        if pool:
            best = (min if figure.lower_is_better else max)(pool, key=lambda pv: pv[1])
        ours_text = fmt(ours) if ours is not None else error_of(results, "ours", figure.key)
        if best is None:
            best_text, ratio = ("-" if not peers else "no peer result"), "-"
        else:
            best_text = f"{fmt(best[1])} ({best[0]}{mark})"
            best_cell = results.get(best[0], {}).get(figure.key, {})
            if best_cell.get("capped"):
                best_text = f"{fmt(best[1])} ({best[0]}{mark}: {capped_text(best_cell)})"
            ratio = f"{ours / best[1]:.2f}×" if ours is not None and best[1] else "-"
        rows.append([figure.label, ours_text, *floor_cells(results, figure, floors, ours), best_text, ratio,
                     "lower" if figure.lower_is_better else "higher"])
    pad = ["-"] * (2 * len(floors))
    delivery = results.get("ours", {}).get("delivery", {})
    exit_ = results.get("ours", {}).get("exit", {})
    down = results.get("ours", {}).get("exit_down", {})
    rows.append(["delivery: lost / duplicated events", f"{fmt(delivery.get('lost'))} / {fmt(delivery.get('duplicates'))}",
                 *pad, "see detail", "-", "lower"])
    rows.append(["exit: events lost without a flush call", fmt(exit_.get("lost")), *pad, "see detail", "-", "lower"])
    rows.append(["exit, server down: loss reported", yes_no(down.get("loss_reported")), *pad, "see detail", "-", "yes"])
    header = ["figure", "ours", *(lib_label(f) for f in floors), *(f"ours/{lib_label(f)}" for f in floors), "best peer",
              "ratio ours/best", "better"]
    return table(header, rows)


def yes_no(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def floors_table(results: Results) -> str:
    cell = results.get("ours", {}).get("floors", {})
    if "error" in cell or not cell:
        return f"floors: {cell.get('error', 'not run')}"
    rows = [
        ["timer overhead (one `perf_counter_ns` pair around an empty call)", fmt(cell.get("timer_median_us")), fmt(cell.get("timer_p99_us")), "µs"],
        ["`queue.SimpleQueue.put` of one command", fmt(cell.get("put_median_us")), fmt(cell.get("put_p99_us")), "µs"],
        ["`json.dumps` of one command", fmt(cell.get("dumps_median_us")), fmt(cell.get("dumps_p99_us")), "µs"],
        ["one keep-alive POST of a 100-command `bulk` with requests", fmt(cell.get("post100_median_us")), fmt(cell.get("post100_p99_us")), "µs"],
        ["  = events/s one connection could carry, at 100 per request", fmt(cell.get("post100_events_per_s")), "", "events/s"],
        ["the same POST to the counting sink instead", fmt(cell.get("post100_sink_median_us")), fmt(cell.get("post100_sink_p99_us")), "µs"],
        ["  = events/s one connection could carry, at 100 per request", fmt(cell.get("post100_sink_events_per_s")), "", "events/s"],
    ]
    return table(["floor", "median", "p99", "unit"], rows) + f"\n\n(server: {cell.get('server', '?')})"


def ours_only(results: Results) -> str:
    blocking = results.get("ours", {}).get("blocking", {})
    cli = results.get("ours", {}).get("cli", {})
    rows = []
    if "error" in blocking or not blocking:
        rows.append(["blocking `track`", blocking.get("error", "not run"), "", ""])
    else:
        rows.append(["blocking `track` median (µs)", fmt(blocking.get("ours_median_us")), fmt(blocking.get("raw_median_us")),
                     f"{fmt(blocking.get('ratio_median'))}×"])
        rows.append(["blocking `track` p99 (µs)", fmt(blocking.get("ours_p99_us")), fmt(blocking.get("raw_p99_us")), "-"])
    sink = results.get("ours", {}).get("delivery_sink", {})
    if sink and "error" not in sink:
        rows.append(["delivery to the counting sink instead of the local server: events/s",
                     fmt(sink.get("events_per_s")), f"{fmt(sink.get('lost'))} lost", "-"])
        rows.append(["  CPU per delivered event (µs)", fmt(sink.get("cpu_us_per_event")), "", "-"])
    if "error" in cli or not cli:
        rows.append(["command line `track`", cli.get("error", "not run"), "", ""])
    else:
        rows.append(["`./seven_segments.py track ...` wall time (ms)", fmt(cli.get("cli_median_ms")),
                     fmt(cli.get("import_requests_median_ms")), f"{fmt(cli.get('ratio'))}×"])
        if cli.get("failures"):
            rows.append(["command line failures", str(cli.get("failures")), cli.get("failure", ""), ""])
    return table(["figure", "ours", "baseline (raw `requests.Session.post` / `python -c \"import requests\"`)", "ratio"], rows)


def capped_text(cell: Dict[str, Any]) -> str:
    """How far a run cut by its time limit got: "received N of M in T s"."""
    text = f"received {fmt(cell.get('delivered'))} in {fmt(cell.get('deliver_s'))} s"
    if cell.get("calls") is not None and cell.get("calls") != cell.get("events"):
        text += f", {fmt(cell.get('calls'))} of {fmt(cell.get('events'))} calls made by then"
    return text


def roundtrip_cell(cell: Dict[str, Any]) -> str:
    """One library at one round trip: events/s and what became of the events."""
    if cell.get("capped"):
        text = f"{fmt(cell.get('events_per_s'))}: {capped_text(cell)} (time limit {fmt(cell.get('max_s'))} s)"
    else:
        text = f"{fmt(cell.get('events_per_s'))}, {fmt(cell.get('lost'))} lost"
    if cell.get("dropped_reported"):
        text += f", {fmt(cell.get('dropped_reported'))} calls refused"
    if cell.get("errors"):
        text += f", {fmt(cell.get('errors'))} calls raised"
    if cell.get("duplicates"):
        text += f", {fmt(cell.get('duplicates'))} duplicated"
    return text


def roundtrip(results: Results, columns: List[str]) -> str:
    """Per library: events/s at each round trip, lost, requests, CPU per event."""
    rows = []
    for key in roundtrip_keys(results):
        for label, render in (
            (f"{roundtrip_ms(key)} ms: events/s, lost", roundtrip_cell),
            (f"{roundtrip_ms(key)} ms: requests / CPU µs per event", lambda c: f"{fmt(c.get('requests'))} / {fmt(c.get('cpu_us_per_event'))}"),
        ):
            row = [label]
            for lib in columns:
                entry = results.get(lib, {})
                cell = entry.get(key)
                row.append("not installed" if "install_error" in entry else "not run" if cell is None
                           else cell["error"] if "error" in cell else render(cell))
            rows.append(row)
    servers = {results.get("ours", {}).get(key, {}).get("server") for key in roundtrip_keys(results)} - {None}
    names = {"ours": "the local server (counting only, same latency)", "sink": "the sink"}
    note = (f"\n\n(ours and the naive clients sent to {', '.join(names.get(s, s) for s in sorted(servers))}; the peers to the sink; every answer delayed by the "
            "round trip; events/s from the first call until the server held every event)")
    return table(["figure"] + [lib_label(c) for c in columns], rows) + note


def targets(results: Results) -> str:
    rows = []
    for label, key, field, check in TARGETS:
        value = number(results.get("ours", {}).get(key, {}).get(field))
        rows.append([label, fmt(value) if value is not None else error_of(results, "ours", key),
                     "-" if value is None else ("met" if check(value) else "NOT met")])
    for key in roundtrip_keys(results):
        goal = ROUNDTRIP_GOALS.get(roundtrip_ms(key))
        cell = results.get("ours", {}).get(key)
        if goal is None or cell is None:
            continue
        value = number(cell.get("events_per_s"))
        met = value is not None and value >= goal and cell.get("lost") == 0
        rows.append([f">= {goal:,} events/s at {roundtrip_ms(key)} ms round trip, nothing lost",
                     fmt(value) if value is not None else str(cell.get("error", "-")),
                     "-" if value is None else ("met" if met else "NOT met")])
    return table(["target", "ours", "met?"], rows)


DETAIL: List[tuple] = [
    ("caller 1 thread: median / p99 / p99.9 µs", "caller1", lambda c: caller_cell(c)),
    ("caller 4 threads: median / p99 / p99.9 µs", "caller4", lambda c: caller_cell(c)),
    ("delivery: events/s", "delivery", lambda c: fmt(c.get("events_per_s"))),
    ("delivery: lost / duplicated / requests", "delivery", lambda c: f"{fmt(c.get('lost'))} / {fmt(c.get('duplicates'))} / {fmt(c.get('requests'))}"),
    ("delivery: calls refused / raised", "delivery", lambda c: f"{fmt(c.get('dropped_reported'))} / {fmt(c.get('errors'))}"),
    ("delivery: CPU µs per event", "delivery", lambda c: fmt(c.get("cpu_us_per_event"))),
    ("server down: bytes per held command", "memory", lambda c: fmt(c.get("bytes_per_command")) + (f" ({fmt(c.get('json_bytes'))} of them its JSON)" if c.get("json_bytes") else "")),
    ("server down: behaviour", "memory", lambda c: str(c.get("behaviour", "-"))),
    ("server down: call median / max µs", "memory", lambda c: f"{fmt(c.get('call_median_us'))} / {fmt(c.get('call_max_us'))}"),
    ("exit, no flush call: queueing s + after last call s / lost", "exit", lambda c: exit_cell(c)),
    ("exit, flush call: queueing s + after last call s / lost", "exit_explicit", lambda c: exit_cell(c)),
    ("exit, server down: after last call s / loss reported", "exit_down", lambda c: ("killed after time limit" if c.get("timed_out") else f"{fmt(c.get('exit_s'))} / {yes_no(c.get('loss_reported'))}") + (f" ({fmt(c.get('errors'))} calls raised)" if c.get("errors") else "")),
    ("exit, server down: what it said", "exit_down", lambda c: (c.get("exit_report") or "(nothing)")[:90]),
]


def exit_cell(c: Dict[str, Any]) -> str:
    text = f"{fmt(c.get('queue_s'))} + {fmt(c.get('exit_s'))} / {fmt(c.get('lost'))}"
    if c.get("errors"):
        text += f" ({fmt(c.get('errors'))} calls raised)"
    return text + (" (killed)" if c.get("timed_out") else "")


def caller_cell(c: Dict[str, Any]) -> str:
    text = f"{fmt(c.get('median_us'))} / {fmt(c.get('p99_us'))} / {fmt(c.get('p999_us'))}"
    return text + (f" ({fmt(c.get('dropped'))} calls refused)" if c.get("dropped") else "")


def detail(results: Results, columns: List[str]) -> str:
    rows = []
    for label, key, render in DETAIL:
        row = [label]
        for lib in columns:
            entry = results.get(lib, {})
            if "install_error" in entry:
                row.append("not installed")
                continue
            cell = entry.get(key)
            row.append("not run" if cell is None else cell["error"] if "error" in cell else render(cell))
        rows.append(row)
    notes = ["what it does at exit without a call"] + [libs.get(lib).exit_flush for lib in columns]
    rows.append(notes)
    return table(["figure"] + [lib_label(c) for c in columns], rows)


def render(results: Results, machine: Dict[str, str], versions: Dict[str, str], *, mode: str, repeat: int,
           sizes: Dict[str, int], peers: List[str], elapsed: float, max_seconds: float = 60.0,
           floors: List[str] = ()) -> str:
    floors = list(floors)
    columns = ["ours"] + floors + peers
    parts = [
        "## seven_segments benchmarks",
        "",
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['implementation']} {machine['python']}, "
        f"{machine['os']}; commit {machine['commit'] or '?'}; {machine['date']}",
        f"mode: {mode}, {repeat} round(s), medians of rounds; took {elapsed:.0f} s; counts: "
        + ", ".join(f"{k}={v:,}" for k, v in sizes.items()),
        "versions: " + ", ".join(f"{lib} {versions.get(lib) or '?'}" for lib in ["ours"] + peers),
        "",
        summary(results, peers, floors),
        "",
        "† no peer delivered every event here; best among those that delivered some. ratio < 1 is better for "
        "'lower' rows, > 1 for 'higher' rows."
        + (" naive json / naive orjson: a deque.append on the caller and one thread posting json.dumps / orjson.dumps "
           "of up to 1,000 events as `bulk` commands, gzip level 1, http.client, to the same server as ours; no checks, "
           "no retries, no bound" if floors else ""),
        "",
        "### Targets",
        "",
        targets(results),
        "",
        "### Floors (the same process, measured the same way)",
        "",
        floors_table(results),
        "",
        "### Blocking mode, command line, delivery to the sink (ours)",
        "",
        ours_only(results),
        "",
        "### Detail per library",
        "",
        detail(results, columns),
    ]
    if roundtrip_keys(results):
        parts[-3:-3] = [f"### Round trip: delivery when every answer comes late (time limit {max_seconds:.0f} s per run)",
                        "", roundtrip(results, columns), ""]
    return "\n".join(parts)

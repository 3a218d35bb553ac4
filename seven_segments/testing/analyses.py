"""Export API analyses of the local server, computed from the stored events of one company.

Definitions (the ``analyses`` mapping, analysis id -> definition); results are described in
``docs/local-server.md``. A *customer* is its ``customer_ids`` object (canonical JSON); events are taken in
timestamp order (arrival order between equal timestamps).

- ``{"type": "funnel", "name": N, "steps": [STEP, ...], "metric": {"step": I, "property": P}}``; a STEP is an
  event type, or ``{"name": N, "event": TYPE, "condition": C}`` (C on the event's properties); ``metric`` optional.
- ``{"type": "report", "name": N, "event": TYPE or [TYPE, ...], "property": P, "sum": P2}``: all optional but
  type; events (of those types) grouped by event type, or by the value of property ``P``.
- ``{"type": "retention", "name": N, "event": TYPE or [TYPE, ...], "days": D}``: ``days`` defaults to 7.
- ``{"type": "segmentation", "name": N, "property": P}``: customers split by merged customer property ``P``.
"""

from __future__ import annotations

import datetime
import json
import statistics
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..protocol import ANALYSIS_TYPES
from .campaigns import check_condition, matches
from .store import Store

JSONDict = Dict[str, Any]
_DAY = 86400.0


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _types(spec: Any, where: str) -> Optional[List[str]]:
    if spec is None:
        return None
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list) and spec and all(isinstance(item, str) for item in spec):
        return list(spec)
    raise ValueError(f"{where}.event must be an event type or a list of them")


def load_analyses(definitions: Mapping[str, Any]) -> Dict[str, JSONDict]:
    """Check and normalise analysis definitions; ``ValueError`` naming the bad analysis and field."""
    loaded: Dict[str, JSONDict] = {}
    for analysis_id, spec in definitions.items():
        where = f"analysis {analysis_id!r}"
        if not isinstance(spec, dict) or spec.get("type") not in ANALYSIS_TYPES:
            raise ValueError(f"{where} must be an object whose type is one of {sorted(ANALYSIS_TYPES)}")
        spec = dict(spec)
        spec.setdefault("name", analysis_id)
        kind = spec["type"]
        if kind == "funnel":
            steps = spec.get("steps")
            if not isinstance(steps, list) or not steps:
                raise ValueError(f"{where}.steps must be a non-empty list")
            normal: List[JSONDict] = []
            for index, step in enumerate(steps):
                if isinstance(step, str) and step:
                    normal.append({"name": step, "event": step, "condition": None})
                elif isinstance(step, dict) and isinstance(step.get("event"), str):
                    if step.get("condition") is not None:
                        check_condition(step["condition"], f"{where}.steps[{index}].condition")
                    normal.append({"name": str(step.get("name", step["event"])), "event": step["event"],
                                   "condition": step.get("condition")})
                else:
                    raise ValueError(f"{where}.steps[{index}] must be an event type or an object with event")
            spec["_steps"] = normal
            metric = spec.get("metric")
            if metric is not None and not (
                isinstance(metric, dict)
                and isinstance(metric.get("step"), int)
                and 0 <= metric["step"] < len(steps)
                and isinstance(metric.get("property"), str)
            ):
                raise ValueError(f"{where}.metric must be {{\"step\": index of a step, \"property\": name}}")
        elif kind == "report":
            _types(spec.get("event"), where)
            for field in ("property", "sum"):
                if spec.get(field) is not None and not isinstance(spec[field], str):
                    raise ValueError(f"{where}.{field} must be a property name")
        elif kind == "retention":
            _types(spec.get("event"), where)
            days = spec.setdefault("days", 7)
            if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 366:
                raise ValueError(f"{where}.days must be an integer from 1 to 366")
        elif kind == "segmentation":
            if not isinstance(spec.get("property"), str):
                raise ValueError(f"{where}.property must be a property name")
        loaded[analysis_id] = spec
    return loaded


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _plain(value: float) -> Any:
    return int(value) if float(value).is_integer() else value


def _median(values: Sequence[float]) -> Any:
    return _plain(statistics.median(values)) if values else -1


def funnel(analysis: JSONDict, rows: Sequence[Tuple[str, str, Dict[str, Any], float]]) -> JSONDict:
    """Funnel over events ``(customer_key, type, properties, timestamp)`` sorted by time."""
    steps: List[JSONDict] = analysis["_steps"]
    progress: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {}
    for customer, event_type, properties, timestamp in rows:
        done = progress.setdefault(customer, [])
        if len(done) < len(steps):
            step = steps[len(done)]
            if event_type == step["event"] and matches(step["condition"], properties):
                done.append((timestamp, properties))
    count = len(steps)
    counts = [sum(1 for done in progress.values() if len(done) > index) for index in range(count)]
    times: List[Any] = [-1]
    for index in range(1, count):
        times.append(_median([done[index][0] - done[index - 1][0] for done in progress.values() if len(done) > index]))
    times.append(_median([done[-1][0] - done[0][0] for done in progress.values() if len(done) == count]))
    metric = analysis.get("metric")
    total_metric: Any = None
    if metric is not None:
        total_metric = _plain(sum(
            _number(done[metric["step"]][1].get(metric["property"]))
            for done in progress.values()
            if len(done) > metric["step"]
        ))
    return {
        "name": analysis["name"],
        "steps": [step["name"] for step in steps],
        "total": {"counts": counts, "times": times, "metric": total_metric},
        "drill_down": {"type": "none", "series": []},
        "metric": dict(metric) if metric is not None else None,
    }


def report(analysis: JSONDict, rows: Sequence[Tuple[str, str, Dict[str, Any], float]]) -> JSONDict:
    """Events grouped by type or by a property value, with event and customer counts (and a sum)."""
    types = _types(analysis.get("event"), "report")
    prop: Optional[str] = analysis.get("property")
    sum_prop: Optional[str] = analysis.get("sum")
    groups: Dict[str, JSONDict] = {}
    customers: Dict[str, set] = {}  # type: ignore[type-arg]
    all_customers = set()
    total_events = 0
    total_sum = 0.0
    for customer, event_type, properties, _ts in rows:
        if types is not None and event_type not in types:
            continue
        value = event_type if prop is None else properties.get(prop)
        key = _key(value)
        group = groups.setdefault(key, {"key": value, "events": 0, "customers": 0, "sum": 0.0})
        group["events"] += 1
        customers.setdefault(key, set()).add(customer)
        all_customers.add(customer)
        total_events += 1
        if sum_prop is not None:
            amount = _number(properties.get(sum_prop))
            group["sum"] += amount
            total_sum += amount
    result_rows = []
    for key, group in sorted(groups.items(), key=lambda item: (-item[1]["events"], item[0])):
        group["customers"] = len(customers[key])
        if sum_prop is None:
            del group["sum"]
        else:
            group["sum"] = _plain(group["sum"])
        result_rows.append(group)
    total: JSONDict = {"events": total_events, "customers": len(all_customers)}
    if sum_prop is not None:
        total["sum"] = _plain(total_sum)
    return {
        "name": analysis["name"],
        "group_by": "type" if prop is None else {"property": prop},
        "rows": result_rows,
        "total": total,
    }


def _day(timestamp: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc).date()


def retention(analysis: JSONDict, rows: Sequence[Tuple[str, str, Dict[str, Any], float]]) -> JSONDict:
    """Cohorts by UTC day of first event; per day k, how many came back (had an event) on day k."""
    types = _types(analysis.get("event"), "retention")
    days: int = analysis["days"]
    active: Dict[str, set] = {}  # type: ignore[type-arg]
    first: Dict[str, datetime.date] = {}
    for customer, event_type, _props, timestamp in rows:
        if types is not None and event_type not in types:
            continue
        day = _day(timestamp)
        if customer not in first or day < first[customer]:
            first[customer] = day
        active.setdefault(customer, set()).add(day)
    cohorts: Dict[datetime.date, List[str]] = {}
    for customer, day in first.items():
        cohorts.setdefault(day, []).append(customer)
    result = []
    for day in sorted(cohorts):
        members = cohorts[day]
        counts = [
            sum(1 for customer in members if day + datetime.timedelta(days=k) in active[customer])
            for k in range(days)
        ]
        result.append({
            "date": day.isoformat(),
            "size": len(members),
            "counts": counts,
            "retention": [count / len(members) for count in counts],
        })
    return {"name": analysis["name"], "days": days, "cohorts": result}


def segmentation(analysis: JSONDict, customers: Mapping[str, Mapping[str, Any]]) -> JSONDict:
    """Customers (by canonical ids) split by the value of one merged customer property (missing: null)."""
    prop: str = analysis["property"]
    segments: Dict[str, JSONDict] = {}
    for properties in customers.values():
        value = properties.get(prop)
        segment = segments.setdefault(_key(value), {"value": value, "customers": 0})
        segment["customers"] += 1
    ordered = [segment for _key_text, segment in sorted(segments.items(), key=lambda i: (-i[1]["customers"], i[0]))]
    return {"name": analysis["name"], "property": prop, "segments": ordered, "total": len(customers)}


def compute(analysis: JSONDict, store: Store, company_id: str) -> JSONDict:
    """The result of ``analysis`` over ``company_id``'s data in ``store`` (without ``success``)."""
    kind = analysis["type"]
    if kind == "segmentation":
        return segmentation(analysis, store.customer_property_table(company_id))
    rows = store.event_rows(company_id)
    if kind == "funnel":
        return funnel(analysis, rows)
    if kind == "report":
        return report(analysis, rows)
    return retention(analysis, rows)

"""seven_segments.metrics with the real SDKs: OpenTelemetry (in-memory reader) and prometheus_client.

Tests that need an SDK skip when it is not installed; the package itself needs neither.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from typing import Any, Dict, Tuple

import pytest

from seven_segments import SevenSegments, metrics
from seven_segments.metrics import METRICS
from seven_segments.testing import LocalServer

from .conftest import TOKEN, exit_code, wait_until

Key = Tuple[str, str, str]  # (name, client, reason)


def _otel_reader() -> Tuple[Any, Any]:
    sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    reader = export.InMemoryMetricReader()
    return sdk.MeterProvider(metric_readers=[reader]), reader


def _otel_values(reader: Any) -> Dict[Key, float]:
    values: Dict[Key, float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    attributes = dict(point.attributes)
                    key = (metric.name, attributes["seven_segments.client"], attributes.get("reason", ""))
                    values[key] = point.value
    return values


def _prometheus_values(registry: Any) -> Dict[Key, float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    values: Dict[Key, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            values[(sample.name, sample.labels["client"], sample.labels.get("reason", ""))] = sample.value
    return values


def _as_stats(values: Dict[Key, float], client: str, otel: bool) -> Dict[str, float]:
    """The exporter's figures for ``client``, by ``stats()`` key."""
    shown = {}
    for metric in METRICS:
        if otel:
            name = metric.otel
        else:
            name = metric.prometheus + ("_total" if metric.kind == "counter" else "")
        shown[metric.key] = values[(name, client, metric.reason)]
    return shown


def test_both_exporters_show_exactly_what_stats_says_under_faults(fresh: LocalServer) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    provider, reader = _otel_reader()
    registry = CollectorRegistry()
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.01, max_queue_size=50)
    try:
        metrics.instrument(client, provider, name="shop")
        metrics.register_prometheus(client, registry, name="shop")
        fresh.faults.fail_next(2, status=503)  # retried
        fresh.faults.command_results(3, "error")  # refused: failed
        for n in range(200):  # past the queue's 50 while the first requests fail: dropped
            client.track("view", {"n": n})
        client.flush(10)
        stats = client.stats()
        assert stats["sent"] and stats["failed"] == 3 and stats["retried"] and stats["dropped_queue_full"]
        for otel in (True, False):
            shown = _as_stats(_otel_values(reader) if otel else _prometheus_values(registry), "shop", otel)
            assert shown == {metric.key: stats[metric.key] for metric in METRICS}

        # While a request is in flight: what is pending, its bytes, the request, the oldest's age.
        fresh.faults.delay_next(1, 0.6)
        for n in range(4):
            client.track("view", {"n": n})
        assert wait_until(lambda: client.stats()["in_flight"] == 1)
        before = client.stats()
        views = (_as_stats(_otel_values(reader), "shop", True), _as_stats(_prometheus_values(registry), "shop", False))
        after = client.stats()
        assert before["pending"] == 4 and before["pending_bytes"] > 0
        for shown in views:
            assert before["oldest_pending_seconds"] <= shown["oldest_pending_seconds"] <= after["oldest_pending_seconds"]
            assert {k: v for k, v in shown.items() if k != "oldest_pending_seconds"} == {
                k: before[k] for k in shown if k != "oldest_pending_seconds"
            }
        assert client.flush(10)
    finally:
        client.close()


def test_clients_are_told_apart_by_name_never_by_token(fresh: LocalServer) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    first = SevenSegments(TOKEN, "u", target=fresh.url)
    second = SevenSegments(TOKEN, "u", target=fresh.url)
    metrics.register_prometheus(first, registry)
    metrics.register_prometheus(second, registry)
    metrics.register_prometheus(first, registry)  # again: nothing changes
    first.track("view")
    host = fresh.url.split("//", 1)[1]
    values = _prometheus_values(registry)
    assert values[("seven_segments_commands_delivered_total", host, "")] == 1
    assert values[("seven_segments_commands_delivered_total", f"{host}-2", "")] == 0
    assert TOKEN not in repr(values)
    with pytest.raises(ValueError, match="already published as"):
        metrics.register_prometheus(first, CollectorRegistry(), name="other")
    third = SevenSegments(TOKEN, "u", target=fresh.url)
    with pytest.raises(ValueError, match="another client"):
        metrics.register_prometheus(third, registry, name=host)


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(TypeError, match="client must be a SevenSegments"):
        metrics.register_prometheus(object())
    with pytest.raises(TypeError, match="client must be a SevenSegments"):
        metrics.instrument("client")
    client = SevenSegments(TOKEN, target="http://127.0.0.1:9")
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        metrics.instrument(client, name="")
    pytest.importorskip("prometheus_client")
    with pytest.raises(TypeError, match="registry must be"):
        metrics.register_prometheus(client, registry={})


def test_a_registered_client_is_held_weakly(fresh: LocalServer) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    provider, reader = _otel_reader()
    registry = CollectorRegistry()
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True)
    metrics.register_prometheus(client, registry, name="gone")
    metrics.instrument(client, provider, name="gone")
    client.track("view")
    client.close()
    ref = weakref.ref(client)
    del client
    gc.collect()
    assert ref() is None
    assert not _prometheus_values(registry) and not _otel_values(reader)


def test_a_forked_child_reports_its_own_counts(fresh: LocalServer) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    client = SevenSegments(TOKEN, "u", target=fresh.url, buffered=True, flush_interval=0.01)
    metrics.register_prometheus(client, registry, name="app")
    for _ in range(5):
        client.track("view")
    assert client.flush(10)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            for _ in range(3):
                client.track("view")
            client.flush(10)
            values = _prometheus_values(registry)
            os.write(write, json.dumps([values[("seven_segments_commands_accepted_total", "app", "")],
                                        values[("seven_segments_commands_delivered_total", "app", "")]]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read() or "null")
    assert exit_code(os.waitpid(pid, 0)[1]) == 0
    assert child == [3, 3]
    assert _prometheus_values(registry)[("seven_segments_commands_accepted_total", "app", "")] == 5
    client.close()


@pytest.mark.slow
def test_the_package_imports_and_says_what_to_install_without_either_sdk() -> None:
    code = """
import sys
sys.modules['opentelemetry'] = None
sys.modules['prometheus_client'] = None
import seven_segments, seven_segments.metrics as metrics
client = seven_segments.SevenSegments('t0ken-for-import', target='http://127.0.0.1:9')
for call, extra in ((metrics.instrument, '[otel]'), (metrics.register_prometheus, '[prometheus]')):
    try:
        call(client)
    except ImportError as error:
        assert extra in str(error), error
    else:
        raise SystemExit('no ImportError')
print('ok')
"""
    plain = subprocess.run([sys.executable, "-c", "import sys, seven_segments.metrics, seven_segments; "
                            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus'))))"],
                           capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "[]", plain.stderr
    blocked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert blocked.stdout.strip() == "ok", blocked.stderr


def test_an_asyncio_client_is_published_too(fresh: LocalServer) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from seven_segments import AsyncSevenSegments

    registry = CollectorRegistry()
    client = AsyncSevenSegments(TOKEN, "u", target=fresh.url, stall_warning_after=60)
    metrics.register_prometheus(client, registry, name="async")
    client.track("view")
    assert client.sync.flush(10)
    assert _prometheus_values(registry)[("seven_segments_commands_delivered_total", "async", "")] == 1
    assert client.health().status == "ok"
    client.sync.close()

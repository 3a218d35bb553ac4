"""A client's ``stats()`` in the user's monitoring: OpenTelemetry instruments, a Prometheus collector.

::

    from seven_segments import metrics
    metrics.instrument(client)             # OpenTelemetry: the global MeterProvider, or meter_provider=
    metrics.register_prometheus(client)    # Prometheus: the default registry, or registry=

Each is a thin view of ``stats()``, read when the metrics are collected (observable instruments, a
custom collector): ``track`` pays nothing for them. Several clients in one process are told apart by
a ``client`` name (the attribute ``seven_segments.client``, the Prometheus label ``client``), the
``name=`` given, by default the target's host and port (``-2``, ``-3``, ... for later clients to the
same host); never a token. A forked child reports its own counts (``stats()`` is per process). The
views hold clients weakly: a client no longer referenced disappears from them.

``opentelemetry-api`` (extra ``[otel]``) and ``prometheus-client`` (extra ``[prometheus]``) are
imported only by the function that needs them.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple
from urllib.parse import urlsplit

from ._version import __version__

if TYPE_CHECKING:
    from .client import SevenSegments

__all__ = ["instrument", "register_prometheus", "METRICS"]


class Metric(NamedTuple):
    """One published figure: the ``stats()`` key it shows and its names in each ecosystem."""

    key: str
    #: OpenTelemetry name and unit (UCUM, with ``{...}`` annotations for counts).
    otel: str
    unit: str
    #: Prometheus name (a counter's exposition adds ``_total``).
    prometheus: str
    #: "counter" (only grows), "updown" (a count or size that goes up and down), "gauge" (a value).
    kind: str
    description: str
    #: The ``reason`` attribute, for the parts of one figure (dropped commands).
    reason: str = ""


_C, _B = "{command}", "By"
#: Every figure published, in order.
METRICS: Tuple[Metric, ...] = (
    Metric("queued", "seven_segments.commands.accepted", _C, "seven_segments_commands_accepted", "counter",
           "Commands accepted by track/update"),
    Metric("sent", "seven_segments.commands.delivered", _C, "seven_segments_commands_delivered", "counter",
           "Commands the API accepted"),
    Metric("failed", "seven_segments.commands.failed", _C, "seven_segments_commands_failed", "counter",
           "Commands that could not be delivered (refused, or not accepted within retry_deadline)"),
    Metric("unconfirmed", "seven_segments.commands.unconfirmed", _C, "seven_segments_commands_unconfirmed", "counter",
           "Commands in flight when a close gave up on them (perhaps applied)"),
    Metric("dropped_queue_full", "seven_segments.commands.dropped", _C, "seven_segments_commands_dropped", "counter",
           "Commands dropped at the call", "queue_full"),
    Metric("dropped_closed", "seven_segments.commands.dropped", _C, "seven_segments_commands_dropped", "counter",
           "Commands dropped at the call", "closed"),
    Metric("filtered", "seven_segments.commands.filtered", _C, "seven_segments_commands_filtered", "counter",
           "Commands before_send dropped by returning None"),
    Metric("discarded", "seven_segments.commands.discarded", _C, "seven_segments_commands_discarded", "counter",
           "Commands a disabled client discarded"),
    Metric("replayed", "seven_segments.commands.replayed", _C, "seven_segments_commands_replayed", "counter",
           "Commands taken from the spool, left by an earlier process"),
    Metric("not_spooled", "seven_segments.commands.not_spooled", _C, "seven_segments_commands_not_spooled", "counter",
           "Commands the spool could not take, sent from memory only"),
    Metric("retried", "seven_segments.commands.retried", _C, "seven_segments_commands_retried", "counter",
           "Commands sent again after a failed attempt"),
    Metric("batches", "seven_segments.requests.answered", "{request}", "seven_segments_requests_answered", "counter",
           "Bulk requests the API answered"),
    Metric("kept_in_spool", "seven_segments.commands.kept_in_spool", _C, "seven_segments_commands_kept_in_spool", "updown",
           "Commands kept in the spool, not delivered yet (an outage, or a close)"),
    Metric("pending", "seven_segments.commands.pending", _C, "seven_segments_commands_pending", "updown",
           "Commands accepted and not settled yet (queued, retrying, in flight)"),
    Metric("pending_bytes", "seven_segments.queue.size", _B, "seven_segments_queue_bytes", "updown",
           "Memory the pending commands take, as max_queue_bytes counts it"),
    Metric("in_flight", "seven_segments.requests.in_flight", "{request}", "seven_segments_requests_in_flight", "updown",
           "Requests in flight"),
    Metric("spool_bytes", "seven_segments.spool.size", _B, "seven_segments_spool_bytes", "updown",
           "Size of the spool's files"),
    Metric("oldest_pending_seconds", "seven_segments.commands.oldest_pending_age", "s",
           "seven_segments_oldest_pending_seconds", "gauge", "Age of the oldest command not delivered yet"),
)

_OTEL_CLIENT = "seven_segments.client"

#: The name of each client (weakly), the same in every view.
_names: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_names_lock = threading.Lock()


def _tracking_client(client: Any, where: str) -> "SevenSegments":
    from .client import SevenSegments

    sync = getattr(client, "sync", client)  # an AsyncSevenSegments: the client that does the work
    if not isinstance(sync, SevenSegments):
        raise TypeError(f"{where}: client must be a SevenSegments or AsyncSevenSegments, not {type(client).__name__}")
    return sync


def _check_name(name: Optional[str], where: str) -> None:
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"{where}: name must be a non-empty string, not {name!r}")


def _name_of(client: "SevenSegments", name: Optional[str], where: str) -> str:
    """The client's name in every view: ``name``, the one it already has, or its host[:port] made unique."""
    with _names_lock:
        known = _names.get(client)
        if known is not None:
            if name is not None and name != known:
                raise ValueError(f"{where}: this client is already published as {known!r}, not {name!r}")
            return known
        taken = set(_names.values())
        if name is None:
            host = urlsplit(client.target).netloc  # the target never holds credentials (refused)
            name, serial = host, 1
            while name in taken:
                serial += 1
                name = f"{host}-{serial}"
        elif name in taken:
            raise ValueError(f"{where}: another client is already published as {name!r}")
        _names[client] = name
        return name


class _Clients:
    """The clients one view publishes, weakly, with their names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._members: List[Tuple[str, "weakref.ref[SevenSegments]"]] = []

    def add(self, name: str, client: "SevenSegments") -> None:
        with self._lock:
            self._members = [(known, ref) for known, ref in self._members if ref() is not None]
            if not any(ref() is client for _, ref in self._members):
                self._members = self._members + [(name, weakref.ref(client))]

    def stats(self) -> Iterator[Tuple[str, Dict[str, float]]]:
        """Each live client's name and ``stats()``."""
        for name, ref in self._members:  # a list replaced whole on change: no lock needed here
            client = ref()
            if client is not None:
                yield name, client.stats()


# OpenTelemetry -----------------------------------------------------------------------------------

_otel_views: "weakref.WeakKeyDictionary[Any, _Clients]" = weakref.WeakKeyDictionary()
_otel_lock = threading.Lock()


def _observe(clients: _Clients, metrics: List[Metric]) -> Callable[[Any], Iterable[Any]]:
    from opentelemetry.metrics import Observation

    def callback(options: Any) -> Iterable[Any]:
        observations = []
        for name, stats in clients.stats():
            for metric in metrics:
                attributes = {_OTEL_CLIENT: name}
                if metric.reason:
                    attributes["reason"] = metric.reason
                observations.append(Observation(stats.get(metric.key, 0), attributes))
        return observations

    return callback


def instrument(client: Any, meter_provider: Any = None, *, name: Optional[str] = None) -> None:
    """Publish ``client``'s ``stats()`` as OpenTelemetry observable instruments (see ``METRICS``)
    through ``meter_provider`` (default: the global one), with the attribute ``seven_segments.client``
    = ``name`` (default: the target's host and port). Needs ``opentelemetry-api`` (the ``[otel]``
    extra). Idempotent for one client and provider."""
    where = "seven_segments.metrics.instrument"
    tracked = _tracking_client(client, where)
    _check_name(name, where)
    try:
        from opentelemetry import metrics as otel_metrics
    except ImportError:
        raise ImportError(f"{where} needs opentelemetry-api: pip install 'seven-segments[otel]'") from None
    if meter_provider is None:
        meter_provider = otel_metrics.get_meter_provider()
    elif not callable(getattr(meter_provider, "get_meter", None)):
        raise TypeError(f"{where}: meter_provider must be an OpenTelemetry MeterProvider, not {type(meter_provider).__name__}")
    label = _name_of(tracked, name, where)
    with _otel_lock:
        clients = _otel_views.get(meter_provider)
        if clients is None:
            clients = _otel_views[meter_provider] = _Clients()
            _create_instruments(meter_provider.get_meter("seven_segments", __version__), clients)
    clients.add(label, tracked)


def _create_instruments(meter: Any, clients: _Clients) -> None:
    by_name: Dict[str, List[Metric]] = {}
    for metric in METRICS:
        by_name.setdefault(metric.otel, []).append(metric)
    for otel_name, parts in by_name.items():
        first = parts[0]
        create = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[first.kind]
        create(otel_name, callbacks=[_observe(clients, parts)], unit=first.unit, description=first.description)


# Prometheus --------------------------------------------------------------------------------------

_prometheus_views: "weakref.WeakKeyDictionary[Any, _Clients]" = weakref.WeakKeyDictionary()
_prometheus_lock = threading.Lock()


class _Collector:
    """The collector of one Prometheus registry: every client registered on it, one label each."""

    def __init__(self, clients: _Clients) -> None:
        self._clients = clients

    def describe(self) -> List[Any]:
        return list(self._families([]))

    def collect(self) -> List[Any]:
        return list(self._families(list(self._clients.stats())))

    @staticmethod
    def _families(figures: List[Tuple[str, Dict[str, float]]]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families: Dict[str, Any] = {}
        for metric in METRICS:
            family = families.get(metric.prometheus)
            labels = ["client", "reason"] if metric.reason else ["client"]
            if family is None:
                kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                family = families[metric.prometheus] = kind(metric.prometheus, metric.description, labels=labels)
            for name, stats in figures:
                values = [name, metric.reason] if metric.reason else [name]
                family.add_metric(values, stats.get(metric.key, 0))
        return iter(families.values())


def register_prometheus(client: Any, registry: Any = None, *, name: Optional[str] = None) -> None:
    """Publish ``client``'s ``stats()`` to Prometheus (see ``METRICS``): one collector per ``registry``
    (default: ``prometheus_client.REGISTRY``) for all the clients registered on it, each with the label
    ``client`` = ``name`` (default: the target's host and port). Needs ``prometheus-client`` (the
    ``[prometheus]`` extra). Idempotent for one client and registry."""
    where = "seven_segments.metrics.register_prometheus"
    tracked = _tracking_client(client, where)
    _check_name(name, where)
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(f"{where} needs prometheus-client: pip install 'seven-segments[prometheus]'") from None
    if registry is None:
        registry = prometheus_client.REGISTRY
    elif not callable(getattr(registry, "register", None)):
        raise TypeError(f"{where}: registry must be a prometheus_client CollectorRegistry, not {type(registry).__name__}")
    label = _name_of(tracked, name, where)
    with _prometheus_lock:
        clients = _prometheus_views.get(registry)
        if clients is None:
            clients = _Clients()
            registry.register(_Collector(clients))  # raises if these names are registered already
            _prometheus_views[registry] = clients
    clients.add(label, tracked)

"""One adapter per benchmarked library, each in its documented default background mode.

Every adapter sends the same command: the event ``purchase`` of customer ``john123`` with the
properties ``{"product": "bottle", "amount": 5}`` (a fresh dict on every call, as an application
would build it). Adapters import their library lazily, so that this module loads anywhere.

How each one is pointed at the sink (read from the installed packages' source):

- ours: ``SevenSegments(token, customer=..., target=url, buffered=True)``; ``POST {url}/bulk``.
- segment: ``analytics.Client(write_key, host=url)``; ``POST {url}/v1/batch``, JSON, no gzip by default,
  batches of 100, one consumer thread, a queue of 10,000 that drops when full.
- posthog: ``Posthog(api_key, host=url)``; capture v0 (the default), ``POST {url}/batch/``, JSON, batches
  of 100 every 5 s, a queue of 10,000 that drops when full; at exit it flushes for at most 1 s.
- mixpanel: ``Mixpanel(token, consumer=BufferedConsumer(events_url=url + "/track", ...))``; form-encoded
  ``data=[...]`` in batches of 50. There is no background thread: every 50th ``track`` posts synchronously
  in the caller's thread, and whatever is buffered at exit is lost unless ``flush()`` is called.
- amplitude: ``Amplitude(api_key, configuration=Config(server_url=url + "/2/httpapi"))``; JSON batches of
  200 every 10 s through ``urllib`` (a new connection per request) on a pool of up to 16 threads; it
  registers ``shutdown()`` (a flush) to run at exit.

``Floor`` (not a library anyone ships: in the web-app scenario, ``cpu_per_event.py`` and, as ``FloorBulk``, the
naive columns of ``run.py``) is the naive
floor of issues 13 and 19: a ``deque.append`` per event and one thread posting ``json.dumps`` (``FloorOrjson``:
``orjson.dumps``) of up to 1,000 events, gzipped at level 1, with ``http.client``, to ``{url}/floor``
(``FloorBulk``: as ``bulk`` commands to ``{url}/bulk``).
Every adapter also has ``event(name, customer, properties)``, what the web-app scenario calls.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional, Type

TOKEN = "12345678-90ab-cdef-1234-567890abcdef"
CUSTOMER = "john123"
EVENT = "purchase"


def run_bounded(fn: Callable[[], Any], timeout: Optional[float]) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` s; True when it returned in time."""
    done = threading.Event()
    box: Dict[str, BaseException] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="bench-bounded").start()
    finished = done.wait(timeout)
    if "error" in box:
        raise box["error"]
    return finished


class Library:
    """The adapter interface; a subclass per library."""

    name = ""
    package = ""  # the pip distribution name
    module = ""  # an importable module that proves the package is there
    exit_flush = ""  # what the library does at interpreter exit without an explicit call
    down_behaviour_note = ""

    def open(self, url: str) -> None:
        """Create the client in its default background mode, pointed at ``url``."""
        raise NotImplementedError

    def track(self) -> bool:
        """Send the standard event; False when the library said it dropped it."""
        raise NotImplementedError

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        """Send event ``name`` of ``customer`` with ``properties`` (the web-app scenario); False when dropped."""
        raise NotImplementedError

    def flush(self, timeout: Optional[float]) -> bool:
        """The library's explicit flush; True when it returned within ``timeout``."""
        raise NotImplementedError

    def shutdown(self, timeout: Optional[float]) -> bool:
        """The library's documented shutdown call (flush, then stop the workers)."""
        return self.flush(timeout)

    def held(self) -> Optional[int]:
        """How many commands the client holds in memory now, when the library lets us see it."""
        return None

    def counters(self) -> Dict[str, Any]:
        """The library's own counters, when it has any."""
        return {}

    @staticmethod
    def version() -> str:
        return ""


class Ours(Library):
    name = "ours"
    package = "seven-segments"
    module = "seven_segments"
    exit_flush = "flushes at exit (bounded by shutdown_timeout) and logs how many commands were lost"

    def open(self, url: str) -> None:
        from seven_segments import SevenSegments

        self.client = SevenSegments(TOKEN, customer=CUSTOMER, target=url, buffered=True)
        self._track = self.client.track

    def track(self) -> bool:
        self._track(EVENT, properties={"product": "bottle", "amount": 5})
        return True

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        self._track(name, properties, customer=customer)
        return True

    def flush(self, timeout: Optional[float]) -> bool:
        return bool(self.client.flush(timeout=timeout))

    def shutdown(self, timeout: Optional[float]) -> bool:
        self.client.close(timeout=timeout)
        return True

    def counters(self) -> Dict[str, Any]:
        return dict(self.client.stats())

    def held(self) -> Optional[int]:
        stats = self.client.stats()
        for key in ("pending", "in_queue", "queue_size", "buffered"):
            if key in stats:
                return int(stats[key])
        if {"queued", "sent", "failed", "dropped"} <= set(stats):
            return int(stats["queued"]) - int(stats["sent"]) - int(stats["failed"]) - int(stats["dropped"])
        return None

    @staticmethod
    def version() -> str:
        from seven_segments._version import __version__

        return __version__


class Segment(Library):
    name = "segment"
    package = "segment-analytics-python"
    module = "segment.analytics"
    exit_flush = "atexit stops the consumer without draining the queue: queued events are lost without flush()"

    def open(self, url: str) -> None:
        from segment import analytics

        self.client = analytics.Client(TOKEN, host=url)
        self._track = self.client.track

    def track(self) -> bool:
        ok, _ = self._track(CUSTOMER, EVENT, {"product": "bottle", "amount": 5})
        return bool(ok)

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        ok, _ = self._track(customer, name, properties)
        return bool(ok)

    def flush(self, timeout: Optional[float]) -> bool:
        return run_bounded(self.client.flush, timeout)

    def shutdown(self, timeout: Optional[float]) -> bool:
        return run_bounded(self.client.shutdown, timeout)

    def held(self) -> Optional[int]:
        return self.client.queue.qsize()

    @staticmethod
    def version() -> str:
        from segment.analytics.version import VERSION

        return VERSION


class PostHog(Library):
    name = "posthog"
    package = "posthog"
    module = "posthog"
    exit_flush = "atexit flushes for at most 1 s, then stops the consumers"

    def open(self, url: str) -> None:
        from posthog import Posthog

        self.client = Posthog(TOKEN, host=url)
        self._capture = self.client.capture

    def track(self) -> bool:
        return self._capture(EVENT, distinct_id=CUSTOMER, properties={"product": "bottle", "amount": 5}) is not None

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        return self._capture(name, distinct_id=customer, properties=properties) is not None

    def flush(self, timeout: Optional[float]) -> bool:
        return run_bounded(lambda: self.client.flush(timeout_seconds=timeout), None if timeout is None else timeout + 1)

    def shutdown(self, timeout: Optional[float]) -> bool:
        return run_bounded(self.client.shutdown, timeout)

    def held(self) -> Optional[int]:
        queue = getattr(self.client, "queue", None)
        return queue.qsize() if queue is not None and hasattr(queue, "qsize") else None

    @staticmethod
    def version() -> str:
        from posthog.version import VERSION

        return VERSION


class Mixpanel(Library):
    name = "mixpanel"
    package = "mixpanel"
    module = "mixpanel"
    exit_flush = "nothing at exit: up to 49 buffered events are lost without flush(); flush is synchronous"

    def open(self, url: str) -> None:
        from mixpanel import BufferedConsumer, Mixpanel as MixpanelClient

        self.consumer = BufferedConsumer(events_url=url + "/track", people_url=url + "/engage")
        self.client = MixpanelClient(TOKEN, consumer=self.consumer)
        self._track = self.client.track

    def track(self) -> bool:
        self._track(CUSTOMER, EVENT, {"product": "bottle", "amount": 5})
        return True

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        self._track(customer, name, properties)
        return True

    def flush(self, timeout: Optional[float]) -> bool:
        return run_bounded(self.consumer.flush, timeout)

    def held(self) -> Optional[int]:
        return sum(len(buffer) for buffer in self.consumer._buffers.values())

    @staticmethod
    def version() -> str:
        import mixpanel

        return str(getattr(mixpanel, "__version__", ""))


class Amplitude(Library):
    name = "amplitude"
    package = "amplitude-analytics"
    module = "amplitude"
    exit_flush = "registers shutdown() (a flush) to run at exit"

    def open(self, url: str) -> None:
        from amplitude import Amplitude as AmplitudeClient, BaseEvent, Config

        self.client = AmplitudeClient(TOKEN, configuration=Config(server_url=url + "/2/httpapi"))
        self._event = BaseEvent
        self._track = self.client.track

    def track(self) -> bool:
        self._track(self._event(EVENT, user_id=CUSTOMER, event_properties={"product": "bottle", "amount": 5}))
        return True

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        self._track(self._event(name, user_id=customer, event_properties=properties))
        return True

    def flush(self, timeout: Optional[float]) -> bool:
        def flush_and_wait() -> None:
            for future in self.client.flush():
                if future is not None:
                    future.result()

        return run_bounded(flush_and_wait, timeout)

    def shutdown(self, timeout: Optional[float]) -> bool:
        return run_bounded(self.client.shutdown, timeout)

    def held(self) -> Optional[int]:
        timeline = getattr(self.client, "_Amplitude__timeline", None)
        if timeline is None:
            return None
        total = 0
        for plugins in timeline.plugins.values():
            for plugin in plugins:
                storage = getattr(plugin, "storage", None)
                if storage is not None and hasattr(storage, "total_events"):
                    total += storage.total_events
        return total

    @staticmethod
    def version() -> str:
        from amplitude.constants import SDK_VERSION

        return SDK_VERSION


class Floor(Library):
    """The naive floor (issues 13 and 19), not a library anyone ships.

    ``event`` appends a tuple to a ``collections.deque``; one daemon thread pops up to 1,000 events at a
    time, posts ``json.dumps`` of them, gzipped at level 1 (as our client's bodies are), to
    ``{url}/floor`` over one keep-alive ``http.client`` connection: no checks, no retries, no bound on
    the queue. At exit it posts what is left (at most 10 s). It is what tracking cannot cost less than
    with json. Subclasses change the encoder (:class:`FloorOrjson`) or the body (:class:`FloorBulk`).
    """

    name = "floor"
    package = ""
    module = "json"
    exit_flush = "posts what is left at exit (at most 10 s)"
    batch = 1000
    path = "/floor"

    def open(self, url: str) -> None:
        import atexit
        import collections
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.prefix = parts.path.rstrip("/")
        self.connect = lambda: http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        self.connection = self.connect()
        self.dumps = self.encoder()
        self.queue: Any = collections.deque()
        self.wake = threading.Event()
        self.sending = False
        self.posted = 0
        threading.Thread(target=self._run, daemon=True, name="floor-sender").start()
        atexit.register(self.shutdown, 10.0)

    @staticmethod
    def encoder() -> Callable[[Any], bytes]:
        """``value -> JSON bytes``."""
        import json

        dumps = json.dumps
        return lambda value: dumps(value).encode()

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        self.queue.append((name, customer, properties, time.time()))
        return True

    def track(self) -> bool:
        return self.event(EVENT, CUSTOMER, {"product": "bottle", "amount": 5})

    def body(self, events: Any) -> Any:
        """What is posted for ``events`` (tuples as ``event`` queued them), before encoding."""
        return [{"event": name, "customer": customer, "properties": properties, "timestamp": at}
                for name, customer, properties, at in events]

    def _post_some(self) -> int:
        import zlib

        queue = self.queue
        events = []
        self.sending = True
        try:
            for _ in range(self.batch):
                events.append(queue.popleft())
        except IndexError:
            pass
        if events:
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
            data = compressor.compress(self.dumps(self.body(events))) + compressor.flush()
            try:
                self.connection.request("POST", self.prefix + self.path, body=data, headers={
                    "Content-Type": "application/json", "Content-Encoding": "gzip"})
                self.connection.getresponse().read()
            except Exception:
                self.connection.close()  # no retries: the floor loses what fails
                self.connection = self.connect()
            self.posted += len(events)
        self.sending = False
        return len(events)

    def _run(self) -> None:
        while True:
            if not self._post_some():
                self.wake.wait(0.01)  # a poll, like a timer-driven flush; a post is never waited for otherwise

    def flush(self, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.queue or self.sending:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def shutdown(self, timeout: Optional[float]) -> bool:
        return self.flush(timeout)

    def held(self) -> Optional[int]:
        return len(self.queue)


class FloorOrjson(Floor):
    """The naive floor with ``orjson.dumps`` as its encoder."""

    name = "floor_orjson"
    package = "orjson"
    module = "orjson"
    path = "/floor_orjson"  # counted apart from the floor's by the sink

    @staticmethod
    def encoder() -> Callable[[Any], bytes]:
        import orjson

        return orjson.dumps  # type: ignore[no-any-return]


class FloorBulk(Floor):
    """The naive floor posting 7SEGMENTS ``bulk`` bodies (to the local server): each event a
    ``crm/events`` command with a ``command_id`` (a per-process prefix and a counter, made on the
    caller as ours is) so that the server counts it."""

    name = "floor_bulk"
    path = "/bulk"

    def open(self, url: str) -> None:
        import itertools
        import os

        self.ids = itertools.count()
        self.id_prefix = f"floor{os.getpid()}-"
        super().open(url)

    def event(self, name: str, customer: str, properties: Dict[str, Any]) -> bool:
        self.queue.append((name, customer, properties, time.time(), self.id_prefix + str(next(self.ids))))
        return True

    def body(self, events: Any) -> Any:
        return {"commands": [
            {"name": "crm/events", "data": {"company_id": TOKEN, "customer_ids": {"registered": customer}, "type": name,
                                            "properties": properties, "timestamp": at, "command_id": command_id}}
            for name, customer, properties, at, command_id in events
        ]}


class FloorBulkOrjson(FloorBulk):
    """:class:`FloorBulk` with ``orjson.dumps``."""

    name = "floor_bulk_orjson"
    package = "orjson"
    module = "orjson"
    path = "/bulk"
    encoder = staticmethod(FloorOrjson.encoder)


LIBRARIES: Dict[str, Type[Library]] = {cls.name: cls for cls in (Ours, Segment, PostHog, Mixpanel, Amplitude)}
PEERS = [name for name in LIBRARIES if name != "ours"]
#: Only in the web-app scenario.
EXTRAS: Dict[str, Type[Library]] = {cls.name: cls for cls in (Floor, FloorOrjson, FloorBulk, FloorBulkOrjson)}


def get(name: str) -> Library:
    return (LIBRARIES.get(name) or EXTRAS[name])()

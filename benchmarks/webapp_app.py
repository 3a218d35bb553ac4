"""The web application of the web-app scenario (:mod:`webapp`): a WSGI app that tracks K events per request.

Served by gunicorn (``gunicorn -k gthread --threads 8 -w 1 webapp_app:app``), or, where gunicorn is not
installed, by ``python webapp_app.py --port P`` (the standard library's threaded ``wsgiref`` server, for
the smoke test only: it is not what an application would run). Configured by the environment:

- ``BENCH_CLIENT``: ``none`` (the untracked app), ``ours``, ``floor`` (the naive floor of
  :class:`libs.Floor`) or a peer (``segment``, ``posthog``, ``mixpanel``, ``amplitude``);
- ``BENCH_K``: events tracked per request;
- ``BENCH_URL``: where the client sends (the sink or the local server);
- ``BENCH_COUNT_FILE``: at exit the app writes there, as JSON, how many requests it served, how many
  tracking calls returned accepted (``tracked``) and refused (``refused``: the library said it dropped the
  event), so that what arrived can be compared with what was tracked (``webapp.py`` counts both as tracked).

One module-level client, created when the worker imports this module (after gunicorn forked it),
at the library's defaults; ours is ``SevenSegments(token, buffered=True, target=BENCH_URL)``.
Each request does about 100 µs of ordinary Python (build a dict of an order, format an HTML template,
``json.dumps`` the answer) and then tracks K events of 6 properties, a fresh dict each.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

import libs  # noqa: E402

CLIENT = os.environ.get("BENCH_CLIENT", "none")
K = int(os.environ.get("BENCH_K", "1"))
URL = os.environ.get("BENCH_URL", "")
COUNT_FILE = os.environ.get("BENCH_COUNT_FILE", "")

_served = itertools.count()  # next() is atomic under the GIL: no lock in the request path
_refused = itertools.count()
_tracked = itertools.count()  # tracking calls that returned (one cut by the stop did not)


def _write_count() -> None:
    if not COUNT_FILE:
        return
    served = next(_served)  # the counters' next value is how many times they were advanced
    refused = next(_refused)
    tracked = next(_tracked)
    done = {"client": CLIENT, "k": K, "requests": served, "tracked": tracked if CLIENT != "none" else 0,
            "refused": refused, "pid": os.getpid()}
    Path(COUNT_FILE).write_text(json.dumps(done))


# Registered before the client exists, so that it runs after the client's own exit hooks (atexit is LIFO):
# the count is written even when a client's exit flush is slow.
atexit.register(_write_count)


def _make_client() -> Optional[Callable[[str, str, Dict[str, Any]], bool]]:
    if CLIENT == "none":
        return None
    if CLIENT == "ours":
        from seven_segments import SevenSegments

        client = SevenSegments(libs.TOKEN, buffered=True, target=URL)
        track = client.track

        def send(name: str, customer: str, properties: Dict[str, Any]) -> bool:
            track(name, properties, customer=customer)
            return True

        return send
    adapter = libs.get(CLIENT)
    adapter.open(URL)
    return adapter.event


SEND = _make_client()

TEMPLATE = (
    "<!doctype html><html><head><title>{title}</title></head><body><h1>Order {order_id} for {user}</h1>"
    "<table>{rows}</table><p>Total: {total:.2f} {currency} ({count} items)</p><footer>{footer}</footer></body></html>"
)
ROW = "<tr><td>{sku}</td><td>{name}</td><td>{qty}</td><td>{price:.2f}</td></tr>"


def _page(n: int) -> Tuple[bytes, str, List[Dict[str, Any]]]:
    """The request's own work: about 100 µs of ordinary Python."""
    user = f"user{n % 1000}"
    items = [{"sku": f"SKU-{(n + i) % 997:04d}", "name": f"Item number {i}", "qty": i % 3 + 1, "price": 1.25 * (i + 1)}
             for i in range(16)]
    total = sum(item["qty"] * item["price"] for item in items)
    rows = "".join(ROW.format(**item) for item in items)
    html = TEMPLATE.format(title="Your order", order_id=n, user=user, rows=rows, total=total, currency="EUR",
                           count=len(items), footer="Thank you for shopping with us")
    body = json.dumps({"user": user, "order": n, "items": items, "total": round(total, 2), "html": html}).encode()
    return body, user, items


def app(environ: Dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The WSGI application: ``/_health`` answers at once; every other path is a tracked page."""
    if environ.get("PATH_INFO") == "/_health":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    n = next(_served)
    body, user, items = _page(n)
    send = SEND
    if send is not None:
        path = environ.get("PATH_INFO", "/")
        for i in range(K):
            item = items[i % len(items)]
            properties = {"page": path, "sku": item["sku"], "price": item["price"], "quantity": item["qty"],
                          "currency": "EUR", "ab_group": "b" if n % 2 else "a"}
            if not send("purchase", user, properties):
                next(_refused)
            else:
                next(_tracked)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _serve_wsgiref(port: int) -> None:
    """The fallback server: threaded ``wsgiref``, ended by SIGTERM like gunicorn (exit hooks run)."""
    import signal
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Threaded(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 128

    server = make_server("127.0.0.1", port, app, server_class=Threaded, handler_class=Quiet)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="serve the web-app scenario's app with wsgiref (no gunicorn)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--time-page", action="store_true", help="print how long the page's own work takes")
    options = parser.parse_args()
    if options.time_page:
        import timeit

        runs = 20_000
        print(f"page work: {timeit.timeit(lambda: _page(12345), number=runs) / runs * 1e6:.1f} µs")
    else:
        _serve_wsgiref(options.port)

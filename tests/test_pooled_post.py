"""``bulk`` requests on the urllib3 pool of the session's adapter: which pool a request takes."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List

import pytest
import requests

from seven_segments.pooled_post import PooledPost
from seven_segments.transport import Transport

URL = "https://api.example.test/bulk"


def test_the_pool_key_is_worked_out_once_for_the_settings_in_use(monkeypatch: Any, tmp_path: Any) -> None:
    """requests looks at the CA bundle's path on the disk when it works out a pool's key: once for
    the settings in use, not at every request; a change of the session's TLS settings is followed."""
    session = requests.Session()
    adapter = session.get_adapter(URL)
    worked_out: List[Any] = []
    real = adapter.build_connection_pool_key_attributes

    def counted(*arguments: Any) -> Any:
        worked_out.append(arguments)
        return real(*arguments)

    monkeypatch.setattr(adapter, "build_connection_pool_key_attributes", counted)
    post = PooledPost(session, URL)
    first = post._pool()
    assert post._pool() is first and post._pool() is first
    assert len(worked_out) == 1

    bundle = tmp_path / "ca.pem"
    session.verify = str(bundle)
    other = post._pool()
    assert len(worked_out) == 2 and other is not first
    assert other.ca_certs == str(bundle)
    assert post._pool() is other and len(worked_out) == 2

    session.cert = (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    with_client_certificate = post._pool()
    assert len(worked_out) == 3 and with_client_certificate.cert_file == str(tmp_path / "client.pem")


class _Answers(BaseHTTPRequestHandler):
    """Answers bulk requests chunked, gzipped, or closing the connection, as the path says."""

    protocol_version = "HTTP/1.1"
    connections: List[int] = []

    def setup(self) -> None:
        super().setup()
        _Answers.connections.append(1)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"success":true,"results":[{"status":"ok"}]}'
        self.send_response(200)
        if "chunked" in self.path:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:10], body[10:]):
                self.wfile.write(b"%x\r\n%b\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        if "gzip" in self.path:
            body = gzip.compress(body)
            self.send_header("Content-Encoding", "gzip")
        if "close" in self.path:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("how, connections", [("chunked", 1), ("gzip", 1), ("close", 3), ("plain", 1)])
def test_bulk_answers_in_every_framing_and_the_connection_kept_when_it_may_be(
    how: str, connections: int, monkeypatch: Any
) -> None:
    from seven_segments import pooled_post

    exchanged: List[int] = []
    real = pooled_post.exchange
    monkeypatch.setattr(pooled_post, "exchange", lambda *arguments: exchanged.append(1) or real(*arguments))
    _Answers.connections = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    transport = Transport(f"http://127.0.0.1:{server.server_address[1]}/{how}", timeout=5)
    try:
        for _ in range(3):
            assert transport.post("bulk", b'{"commands":[]}') == {"success": True, "results": [{"status": "ok"}]}
    finally:
        transport.close()
        server.shutdown()
        server.server_close()
    assert len(_Answers.connections) == connections and len(exchanged) == 3

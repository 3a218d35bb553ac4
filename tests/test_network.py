"""Every network between the client and the API: a custom CA, mutual TLS, a real HTTP proxy (for
http:// targets, and CONNECT tunnels for https:// ones), the environment's settings and the keywords
that win over them, and the watchdog's bound on one attempt through all of them.

Certificates are made for the test (trustme); the proxy is proxy.py from PyPI, started once for the
module as a subprocess on loopback (the tests that need it skip where it is not installed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from seven_segments import AuthenticatedSevenSegments, SevenSegments, SevenSegmentsError
from seven_segments.aio import AsyncAuthenticatedSevenSegments, AsyncSevenSegments
from seven_segments.network import NetworkSettings
from seven_segments.testing import LocalServer

from .conftest import wait_until

trustme = pytest.importorskip("trustme")

TOKEN = "tok-9f8e7d6c5b4a-network"
PASSWORD = "pw-0a1b2c3d4e5f-network"
PROXY_USER, PROXY_PASSWORD = "proxyuser", "px-5e4d3c2b1a-secret"
#: Each attempt may take this long; a bounded attempt ends within it and this margin (busy machine).
ATTEMPT = 0.5
MARGIN = 2.0


# -- certificates and servers -------------------------------------------------------------------


class PKI:
    """Files of a server CA (and one that signed nothing here), a server certificate for loopback,
    and a client CA with a client certificate (as one PEM file, and as a certificate and a key)."""

    def __init__(self, folder: Path) -> None:
        ca, other, client_ca = trustme.CA(), trustme.CA(), trustme.CA()
        self.folder = folder
        self.ca = self._write("ca.pem", ca.cert_pem)
        self.other_ca = self._write("other-ca.pem", other.cert_pem)
        self.server = self._write("server.pem", ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem)
        self.client_ca = self._write("client-ca.pem", client_ca.cert_pem)
        client = client_ca.issue_cert("client@example.com")
        self.client = self._write("client.pem", client.private_key_and_cert_chain_pem)
        self.client_cert = self._write("client-cert.pem", client.cert_chain_pems[0])
        self.client_key = self._write("client-key.pem", client.private_key_pem)
        stranger = other.issue_cert("stranger@example.com")
        self.stranger = self._write("stranger.pem", stranger.private_key_and_cert_chain_pem)

    def _write(self, name: str, blob: Any) -> str:
        path = self.folder / name
        blob.write_to_path(str(path))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: PKI) -> Iterator[LocalServer]:
    with LocalServer(tls_cert=pki.server) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(pki: PKI) -> Iterator[LocalServer]:
    with LocalServer(tls_cert=pki.server, tls_client_ca=pki.client_ca) as server:
        yield server


@pytest.fixture
def tls(tls_server: LocalServer) -> LocalServer:
    tls_server.reset()
    return tls_server


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: Any) -> None:
    """The tests decide the environment's proxy and CA variables themselves."""
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle"):
            monkeypatch.delenv(name)


# -- the proxy ----------------------------------------------------------------------------------


class Proxy:
    """proxy.py on loopback, asking for a user name and password; its access log tells what it carried."""

    def __init__(self, folder: Path) -> None:
        self.log = folder / "proxy.log"
        port_file = folder / "port"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
             "--threaded", "--num-acceptors", "1", "--log-file", str(self.log), "--log-level", "INFO",
             "--basic-auth", f"{PROXY_USER}:{PROXY_PASSWORD}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not wait_until(lambda: port_file.exists() and port_file.read_text().strip(), timeout=20):
            self.close()
            raise RuntimeError("proxy.py did not start")
        self.port = int(port_file.read_text().split()[0])
        self.url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{self.port}"

    def carried(self, what: str) -> int:
        """Access-log lines (one per request or tunnel, written when it ends) that contain ``what``."""
        text = self.log.read_text() if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "access_log" in line and what in line)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: Any) -> Iterator[Proxy]:
    pytest.importorskip("proxy", reason="proxy.py (the test extra) is not installed")
    running = Proxy(tmp_path_factory.mktemp("proxy"))
    try:
        yield running
    finally:
        running.close()


# -- slow peers for the watchdog ----------------------------------------------------------------


class Trickler:
    """A listener that reads what a connection sends first, writes ``head``, then one byte of
    ``filler`` every 50 ms, forever: every read succeeds, the answer (a TLS handshake, a CONNECT
    reply) never ends."""

    def __init__(self, head: bytes, filler: bytes) -> None:
        self.head, self.filler = head, filler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.settimeout(5)
                connection.recv(65536)
                connection.sendall(self.head)
                while not self.stop.wait(0.05):
                    connection.sendall(self.filler)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def _bounded_failure(client: Any) -> Tuple[BaseException, float]:
    """Track through a blocking ``client`` whose server never finishes; the error and how long it took."""
    started = time.monotonic()
    with pytest.raises(SevenSegmentsError) as caught:
        client.track("slow")
    return caught.value, time.monotonic() - started


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_a_custom_ca_in_both_modes_and_from_the_environment(tls: LocalServer, pki: PKI, monkeypatch: Any) -> None:
    assert tls.url.startswith("https://127.0.0.1:")
    blocking = SevenSegments(TOKEN, "john", target=tls.url, verify=pki.ca)
    blocking.track("blocking")
    with SevenSegments(TOKEN, "john", target=tls.url, buffered=True, verify=Path(pki.ca)) as buffered:
        buffered.track("buffered")
        assert buffered.flush(5)
    # The environment's bundle as before; a verify= path wins over it.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.ca)
    SevenSegments(TOKEN, "john", target=tls.url).track("environment")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pki.other_ca)
    with pytest.raises(SevenSegmentsError, match="not trusted"):
        SevenSegments(TOKEN, "john", target=tls.url).track("wrong environment")
    SevenSegments(TOKEN, "john", target=tls.url, verify=pki.ca).track("keyword wins")
    assert [event["type"] for event in tls.events()] == ["blocking", "buffered", "environment", "keyword wins"]


def test_verify_takes_a_folder_of_hashed_certificates(tls: LocalServer, pki: PKI, tmp_path: Path) -> None:
    folder = tmp_path / "cas"
    folder.mkdir()
    (folder / "ca.pem").write_bytes(Path(pki.ca).read_bytes())
    try:
        subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no openssl command to hash the folder with")
    SevenSegments(TOKEN, "john", target=tls.url, verify=str(folder)).track("folder")
    assert [event["type"] for event in tls.events()] == ["folder"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SevenSegmentsError, match="not trusted"):
        SevenSegments(TOKEN, "john", target=tls.url, verify=str(empty)).track("x")


def test_a_wrong_ca_fails_at_once_naming_the_target_and_never_a_secret(tls: LocalServer, pki: PKI) -> None:
    started = time.monotonic()
    with pytest.raises(SevenSegmentsError) as caught:
        SevenSegments(TOKEN, "john", target=tls.url, verify=pki.other_ca, retry_deadline=5).track("x")
    message = str(caught.value)
    assert tls.url in message and "not trusted" in message and "verify=" in message
    assert time.monotonic() - started < MARGIN  # not retried: every attempt would fail alike
    with pytest.raises(SevenSegmentsError) as exported:  # the export API's ?company= token and password
        AuthenticatedSevenSegments("jane", PASSWORD, target=tls.url).export_analysis("funnel", {"analysis_id": "a"}, token=TOKEN)
    reported: List[Any] = []
    with SevenSegments(TOKEN, "john", target=tls.url, buffered=True, on_error=lambda error, commands: reported.append(error)) as buffered:
        buffered.track("x")
        assert not buffered.flush(5)
    assert len(reported) == 1 and tls.url in str(reported[0])
    for error in (caught.value, exported.value, reported[0]):
        text = f"{error} {error!r} {getattr(error, 'errors', '')}"
        assert TOKEN not in text and PASSWORD not in text, text
    assert tls.events() == []


def test_mutual_tls_refused_without_a_certificate_and_accepted_with_one(mtls_server: LocalServer, pki: PKI) -> None:
    mtls_server.reset()
    with pytest.raises(SevenSegmentsError, match="refused the TLS connection.*cert=") as caught:
        SevenSegments(TOKEN, "john", target=mtls_server.url, verify=pki.ca).track("no certificate")
    assert mtls_server.url in str(caught.value) and TOKEN not in str(caught.value)
    with pytest.raises(SevenSegmentsError, match="refused the TLS connection"):
        SevenSegments(TOKEN, "john", target=mtls_server.url, verify=pki.ca, cert=pki.stranger).track("unknown CA")
    SevenSegments(TOKEN, "john", target=mtls_server.url, verify=pki.ca, cert=pki.client).track("one file")
    with SevenSegments(TOKEN, "john", target=mtls_server.url, verify=pki.ca, cert=(pki.client_cert, pki.client_key),
                       buffered=True) as buffered:
        buffered.track("certificate and key")
        assert buffered.flush(5)
    mtls_server.users = {"jane": PASSWORD}
    mtls_server.analyses = {"a": {"type": "funnel", "steps": ["one file"]}}
    exporter = AuthenticatedSevenSegments("jane", PASSWORD, target=mtls_server.url, verify=pki.ca, cert=pki.client)
    assert exporter.export_analysis("funnel", {"analysis_id": "a"})["success"] is True
    assert [event["type"] for event in mtls_server.events()] == ["one file", "certificate and key"]
    assert mtls_server.stats()["tls_refused"] >= 2


def test_the_asyncio_clients_take_the_network_keywords(mtls_server: LocalServer, pki: PKI) -> None:
    mtls_server.reset()
    mtls_server.analyses = {"a": {"type": "funnel", "steps": ["async"]}}
    mtls_server.users = None

    async def main() -> Dict[str, Any]:
        async with AsyncSevenSegments(TOKEN, "john", target=mtls_server.url, verify=pki.ca, cert=pki.client) as client:
            client.track("async")
            assert await client.flush(5)
        async with AsyncAuthenticatedSevenSegments("jane", PASSWORD, target=mtls_server.url, verify=pki.ca,
                                                   cert=pki.client) as exporter:
            return await exporter.export_analysis("funnel", {"analysis_id": "a"})

    assert asyncio.run(main())["success"] is True
    assert [event["type"] for event in mtls_server.events()] == ["async"]
    with pytest.raises(ValueError, match="verify=False"):
        AsyncSevenSegments(TOKEN, target=mtls_server.url, verify=False)
    with pytest.raises(ValueError, match="cert"):
        AsyncAuthenticatedSevenSegments("jane", PASSWORD, target=mtls_server.url, cert="/no/such/client.pem")


@pytest.mark.slow
def test_serve_with_tls_options_requires_the_client_certificate(tmp_path: Path, pki: PKI) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "seven_segments", "serve", "--port", "0", "--tls-cert", pki.server,
         "--tls-client-ca", pki.client_ca],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on https://127.0.0.1:" in line, line
        url = line.split("listening on ")[1].split()[0]
        SevenSegments(TOKEN, "john", target=url, verify=pki.ca, cert=pki.client).track("served")
        with pytest.raises(SevenSegmentsError, match="refused the TLS connection"):
            SevenSegments(TOKEN, "john", target=url, verify=pki.ca).track("refused")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    refused = subprocess.run(
        [sys.executable, "-m", "seven_segments", "serve", "--port", "0", "--tls-cert", str(tmp_path / "none.pem")],
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 1 and "tls_cert" in refused.stderr and "none.pem" in refused.stderr


def test_local_server_tls_options_are_checked(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_cert.*no.pem"):
        LocalServer(tls_cert=str(tmp_path / "no.pem"))
    with pytest.raises(ValueError, match="need tls_cert"):
        LocalServer(tls_client_ca=pki.client_ca)
    with pytest.raises(ValueError, match="tls_cert.*cannot be loaded"):
        LocalServer(tls_cert=pki.ca)  # a certificate without its key
    with pytest.raises(ValueError, match="tls_client_ca"):
        LocalServer(tls_cert=pki.server, tls_client_ca=str(tmp_path))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    # OpenSSL asked for its pass phrase on the terminal: serve waited there for ever.
    with pytest.raises(ValueError, match="tls_cert and tls_key: .* \\(an encrypted private key is not supported\\)"):
        LocalServer(tls_cert=pki.client_cert, tls_key=str(encrypted))


# -- the proxy ------------------------------------------------------------------------------------


def test_an_http_target_through_the_proxy_in_both_modes(proxy: Proxy, fresh: LocalServer, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    before = proxy.carried(f"POST {fresh.url.split('://')[1]}/crm/events")
    client = SevenSegments(TOKEN, "john", target=fresh.url, proxies={"http": proxy.url})
    client.track("blocking")
    client.close()
    with SevenSegments(TOKEN, "john", target=fresh.url, buffered=True, proxies={"all": proxy.url}) as buffered:
        buffered.track("buffered")
        assert buffered.flush(5)
    assert [event["type"] for event in fresh.events()] == ["blocking", "buffered"]
    host = fresh.url.split("://")[1]
    assert wait_until(lambda: proxy.carried(f"POST {host}/crm/events") == before + 1)
    assert wait_until(lambda: proxy.carried(f"POST {host}/bulk") >= 1)
    assert PROXY_PASSWORD not in caplog.text + repr(client) + repr(client._transport.network)


def test_an_https_target_through_a_connect_tunnel(proxy: Proxy, tls: LocalServer, pki: PKI, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    host = tls.url.split("://")[1]
    before = proxy.carried(f"CONNECT {host}")
    with SevenSegments(TOKEN, "john", target=tls.url, buffered=True, verify=pki.ca,
                       proxies={"https": proxy.url}) as buffered:
        buffered.track("tunnelled")
        assert buffered.flush(5)
    assert [event["type"] for event in tls.events()] == ["tunnelled"]
    assert wait_until(lambda: proxy.carried(f"CONNECT {host}") > before)
    assert PROXY_PASSWORD not in caplog.text and TOKEN not in caplog.text


def test_the_environments_proxy_no_proxy_and_the_keyword_that_wins(proxy: Proxy, fresh: LocalServer, monkeypatch: Any) -> None:
    host = fresh.url.split("://")[1]
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    before = proxy.carried(f"POST {host}/crm/events")
    client = SevenSegments(TOKEN, "john", target=fresh.url)
    client.track("through the environment's proxy")
    client.close()
    assert wait_until(lambda: proxy.carried(f"POST {host}/crm/events") == before + 1)
    # NO_PROXY, proxies={} and a proxy of the keyword's own all keep the request off the environment's.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert SevenSegments(TOKEN, target=fresh.url)._transport.network.proxy is None
    monkeypatch.delenv("NO_PROXY")
    assert SevenSegments(TOKEN, target=fresh.url, proxies={})._transport.network.proxy is None
    other = "http://other-proxy.example:3128"
    assert SevenSegments(TOKEN, target=fresh.url, proxies={"http": other})._transport.network.proxy == other
    assert SevenSegments(TOKEN, target=fresh.url, proxies={"http": other, "no_proxy": "127.0.0.1"})._transport.network.proxy is None


def test_a_proxy_that_refuses_the_password_never_shows_it(proxy: Proxy, fresh: LocalServer, tls: LocalServer, pki: PKI) -> None:
    wrong = f"http://{PROXY_USER}:not-the-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    for target, proxies in ((fresh.url, {"http": wrong}), (tls.url, {"https": wrong})):
        with pytest.raises(SevenSegmentsError) as caught:
            SevenSegments(TOKEN, "john", target=target, verify=pki.ca, proxies=proxies, retry_deadline=0.2).track("x")
        text = f"{caught.value} {caught.value!r}"
        assert PROXY_PASSWORD not in text and TOKEN not in text, text
        assert f"the proxy http://***@127.0.0.1:{proxy.port} refused the credentials (HTTP 407" in text, text
    assert fresh.events() == [] and tls.events() == []


# -- the watchdog's bound through a proxy and over TLS --------------------------------------------


def test_an_answer_trickled_through_the_proxy_is_cut_at_the_deadline(proxy: Proxy, fresh: LocalServer) -> None:
    fresh.faults.trickle_next(1, seconds=0.05)
    client = SevenSegments(TOKEN, "john", target=fresh.url, proxies={"http": proxy.url}, timeout=ATTEMPT,
                           retry_deadline=0)
    error, took = _bounded_failure(client)
    assert "no complete answer" in str(error) and took < ATTEMPT + MARGIN, (error, took)


def test_an_answer_trickled_over_tls_through_a_tunnel_is_cut_at_the_deadline(proxy: Proxy, tls: LocalServer, pki: PKI) -> None:
    tls.faults.trickle_next(1, seconds=0.05)
    client = SevenSegments(TOKEN, "john", target=tls.url, verify=pki.ca, proxies={"https": proxy.url},
                           timeout=ATTEMPT, retry_deadline=0)
    error, took = _bounded_failure(client)
    assert "no complete answer" in str(error) and took < ATTEMPT + MARGIN, (error, took)


def test_a_proxy_that_trickles_its_connect_reply_is_cut_at_the_deadline(pki: PKI) -> None:
    stalling = Trickler(b"HTTP/1.1 200 Connection established\r\nX-Slow: ", b"a")
    try:
        client = SevenSegments(TOKEN, "john", target="https://127.0.0.1:9", verify=pki.ca,
                               proxies={"https": f"http://127.0.0.1:{stalling.port}"}, timeout=ATTEMPT, retry_deadline=0)
        error, took = _bounded_failure(client)
    finally:
        stalling.close()
    assert took < ATTEMPT + MARGIN, (error, took)


def test_a_tls_handshake_that_trickles_is_cut_at_the_deadline(pki: PKI) -> None:
    # A TLS record header announcing 16 KiB of handshake, whose bytes then come one at a time.
    stalling = Trickler(b"\x16\x03\x03\x40\x00", b"\x00")
    try:
        client = SevenSegments(TOKEN, "john", target=f"https://127.0.0.1:{stalling.port}", verify=pki.ca,
                               timeout=ATTEMPT, retry_deadline=0)
        error, took = _bounded_failure(client)
    finally:
        stalling.close()
    assert took < ATTEMPT + MARGIN, (error, took)


# -- bad input: at construction, naming the keyword, never a secret -------------------------------


@pytest.mark.parametrize("make", [
    lambda **kw: SevenSegments(TOKEN, target="https://127.0.0.1:9", **kw),
    lambda **kw: SevenSegments(TOKEN, target="https://127.0.0.1:9", buffered=True, **kw),
    lambda **kw: AuthenticatedSevenSegments("jane", PASSWORD, target="https://127.0.0.1:9", **kw),
])
def test_bad_network_keywords_are_refused_at_construction(make: Any, pki: PKI, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    shared_folder = tmp_path / "shared-cas"  # as /tmp: any user could add a CA the client then trusts
    shared_folder.mkdir(exist_ok=True)
    shared_folder.chmod(0o1777)
    shared_file = tmp_path / "shared-ca.pem"
    shared_file.write_bytes(Path(pki.ca).read_bytes())
    shared_file.chmod(0o666)
    cases = [
        ({"verify": str(shared_folder)}, ValueError, "verify: the CA bundle .*shared-cas.* can be written by any user"),
        ({"verify": str(shared_file)}, ValueError, "verify: the CA bundle .*shared-ca.pem.* can be written by any user"),
        ({"verify": False}, ValueError, "verify=False is refused"),
        ({"verify": missing}, ValueError, "verify: the CA bundle .*missing.pem.* does not exist"),
        ({"verify": str(not_pem)}, ValueError, "verify: the CA bundle .*not.pem.* holds no certificate"),
        ({"verify": 0}, TypeError, "verify must be True or the path"),
        ({"cert": missing}, ValueError, "cert: the certificate file .*missing.pem.* does not exist"),
        ({"cert": (pki.client_cert, missing)}, ValueError, "cert: the private key file .*missing.pem"),
        ({"cert": pki.client_cert}, ValueError, "cert: .*client-cert.pem.* cannot be loaded"),  # no key in it
        ({"cert": (pki.client_cert, pki.stranger)}, ValueError, "cert: .*cannot be loaded"),  # a key of another
        ({"cert": (pki.client_cert,)}, ValueError, "cert must be a path or a"),
        ({"cert": 42}, TypeError, "cert must be a file path"),
        ({"proxies": "http://proxy:3128"}, TypeError, "proxies must be a dict"),
        ({"proxies": {"https": 3128}}, TypeError, r"proxies\['https'\] must be a proxy URL"),
        ({"proxies": {"https": f"http://u:{PROXY_PASSWORD}@not a host:3128"}}, ValueError, r"proxies\['https'\] 'http://\*\*\*@not a host:3128' is not a URL"),
        ({"proxies": {"https": f"socks5://u:{PROXY_PASSWORD}@proxy:1080"}}, ValueError, r"must start with http:// or https://"),
        ({"proxies": {"https": f"http://u:{PROXY_PASSWORD}@proxy:99999"}}, ValueError, "proxies"),
    ]
    for keywords, kind, message in cases:
        with pytest.raises(kind, match=message) as caught:
            make(**keywords)
        assert PROXY_PASSWORD not in str(caught.value) and TOKEN not in str(caught.value), keywords


def test_encrypted_keys_are_refused_and_the_environments_bad_settings_are_named(pki: PKI, tmp_path: Path, monkeypatch: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(Path(pki.client_key).read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(ValueError, match="unencrypted private key"):
        SevenSegments(TOKEN, cert=(pki.client_cert, str(encrypted)))
    monkeypatch.setenv("HTTPS_PROXY", f"ftp://u:{PROXY_PASSWORD}@proxy:21")
    with pytest.raises(ValueError, match=r"\$HTTPS_PROXY.*ftp://\*\*\*@proxy:21") as caught:
        SevenSegments(TOKEN, target="https://127.0.0.1:9")
    assert PROXY_PASSWORD not in str(caught.value)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "gone.pem"))
    with pytest.raises(ValueError, match=r"\$REQUESTS_CA_BUNDLE: the CA bundle .*gone.pem"):
        SevenSegments(TOKEN, target="https://127.0.0.1:9")
    SevenSegments(TOKEN, target="http://127.0.0.1:9").close()  # unused by an http:// target: as before


def test_network_settings_decide_once_and_show_no_credentials(pki: PKI, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")  # no scheme: http://, as requests takes it
    settings = NetworkSettings.resolve("https://api.example.com")
    assert settings.proxy == "http://proxy.example:3128" and settings.ca_bundle is None
    secret = f"http://u:{PROXY_PASSWORD}@proxy.example:3128"
    settings = NetworkSettings.resolve("https://api.example.com", proxies={"https": secret}, verify=str(tmp_path),
                                       cert=pki.client)
    assert settings.proxy == secret and settings.ca_bundle == str(tmp_path) and settings.client_cert == (pki.client, None)
    assert PROXY_PASSWORD not in repr(settings) and "***@proxy.example:3128" in repr(settings)
    assert NetworkSettings.resolve("https://api.example.com", proxies={"http": secret}).proxy is None  # another scheme
    assert NetworkSettings.resolve("https://api.example.com", proxies={"https://api.example.com": secret}).proxy == secret

    # None for a scheme or host is requests' "no proxy for this one": it wins over "all", as there.
    assert NetworkSettings.resolve("https://api.example.com", proxies={"all": secret, "https": None}).proxy is None
    assert NetworkSettings.resolve("https://api.example.com",
                                   proxies={"all": secret, "https://api.example.com": None}).proxy is None
    client = SevenSegments(TOKEN, target="https://api.example.com", proxies={"https": secret}, buffered=True)
    try:
        session = client._transport._session
        assert session.proxies == {"https": secret} and session.trust_env is False and session.verify is True
        assert PROXY_PASSWORD not in repr(client)
    finally:
        client.close(0)

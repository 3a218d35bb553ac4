"""One HTTP/1.1 request and its answer, read from a real socket: framings, encodings, refusals."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
import time
import zlib
from typing import Iterator, List, Tuple

import pytest

from seven_segments import http_exchange
from seven_segments.http_exchange import exchange, request_head

HEAD = request_head("POST", "/bulk", [("Host", "api.test"), ("Content-Length", "2")])


def answered(*answers: bytes, pause: float = 0.0) -> Tuple[socket.socket, List[bytes], threading.Event]:
    """A socket whose peer sends ``answers`` (byte by byte when ``pause``), what the peer read, and
    an event set once it read."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    received: List[bytes] = []
    read = threading.Event()

    def peer() -> None:
        for answer in answers:
            if pause:
                for index in range(len(answer)):
                    theirs.sendall(answer[index:index + 1])
                    time.sleep(pause)
            else:
                theirs.sendall(answer)
        theirs.settimeout(1)
        try:
            received.append(theirs.recv(65536))
        except OSError:
            pass
        read.set()
        theirs.shutdown(socket.SHUT_WR)

    threading.Thread(target=peer, daemon=True).start()
    return ours, received, read


@pytest.fixture
def closing() -> Iterator[List[socket.socket]]:
    sockets: List[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def ask(closing: List[socket.socket], *answers: bytes, pause: float = 0.0) -> http_exchange.Exchanged:
    sock, _, _ = answered(*answers, pause=pause)
    closing.append(sock)
    return exchange(sock, HEAD, b"{}")


def test_the_request_goes_in_one_write_and_a_sized_answer_keeps_the_connection(closing: List[socket.socket]) -> None:
    sock, received, read = answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nRetry-After: 3\r\n\r\nok")
    closing.append(sock)
    answer = exchange(sock, HEAD, b"{}")
    assert (answer.status, answer.body, answer.reusable) == (200, b"ok", True)
    assert answer.headers["retry-after"] == "3" and answer.headers.get("RETRY-AFTER") == "3"
    assert read.wait(5)
    assert received == [b"POST /bulk HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\n{}"]


def test_a_chunked_answer_with_extensions_and_trailers(closing: List[socket.socket]) -> None:
    answer = ask(
        closing,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: 1\r\n\r\n",
    )
    assert (answer.body, answer.reusable) == (b"abc0123456789", True)


def test_a_head_split_into_single_bytes_is_read_whole(closing: List[socket.socket]) -> None:
    answer = ask(closing, b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy", pause=0.001)
    assert (answer.status, answer.body) == (503, b"busy")


@pytest.mark.parametrize(
    "coding, encoded",
    [("gzip", gzip.compress(b'{"success":true}')), ("deflate", zlib.compress(b'{"success":true}')),
     ("deflate", zlib.compress(b'{"success":true}')[2:-4]), ("identity", b'{"success":true}')],
)
def test_gzip_and_deflate_answers_are_decoded(closing: List[socket.socket], coding: str, encoded: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: %b\r\nContent-Length: %d\r\n\r\n" % (coding.encode(), len(encoded))
    answer = ask(closing, head + encoded)
    assert answer.body == b'{"success":true}'


def test_the_request_asks_for_gzip_only_and_another_encoding_is_refused(closing: List[socket.socket]) -> None:
    with pytest.raises(http.client.HTTPException, match="encoded as 'br'"):
        ask(closing, b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx")


def test_interim_answers_are_skipped(closing: List[socket.socket]) -> None:
    answer = ask(closing, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (answer.status, answer.body) == (200, b"ok")


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
     b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
     b"HTTP/1.1 200 OK\r\n\r\nok",  # no length: the connection's end ends it
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"],  # more than the answer: not to be trusted
)
def test_a_connection_the_answer_does_not_leave_whole_is_not_kept(closing: List[socket.socket], raw: bytes) -> None:
    answer = ask(closing, raw)
    assert answer.body == b"ok" and answer.reusable is False


def test_http_1_0_with_keep_alive_keeps_it(closing: List[socket.socket]) -> None:
    assert ask(closing, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok").reusable is True


def test_every_set_cookie_is_kept_and_other_repeated_headers_are_joined(closing: List[socket.socket]) -> None:
    answer = ask(
        closing, b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: x\r\nSet-Cookie: b=2\r\nVary: y\r\nContent-Length: 0\r\n\r\n"
    )
    assert answer.cookies == ["a=1", "b=2"] and answer.headers["Vary"] == "x, y"


@pytest.mark.parametrize(
    "raw, error",
    [(b"HTTP/2 200 OK\r\n\r\n", http.client.BadStatusLine),
     (b"<html>\r\n\r\n", http.client.BadStatusLine),
     (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nname : x\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nx", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+2\r\nab\r\n0\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", http.client.IncompleteRead),
     (b"HTTP/1.1 200 OK\r\nContent-Enc", http.client.RemoteDisconnected),
     (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", http.client.HTTPException),
     (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", http.client.LineTooLong),
     (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc", http.client.HTTPException)],
)
def test_what_is_no_well_formed_answer_is_refused(closing: List[socket.socket], raw: bytes, error: type) -> None:
    with pytest.raises(error):
        ask(closing, raw)


def test_bodies_past_the_bound_are_refused_before_and_after_decoding(
    closing: List[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_exchange, "MAX_BODY_BYTES", 1000)
    with pytest.raises(http.client.HTTPException, match="too long"):
        ask(closing, b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001)
    bomb = gzip.compress(b"x" * 5000)
    with pytest.raises(http.client.HTTPException, match="too long"):
        ask(closing, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(bomb), bomb))


@pytest.mark.parametrize("where", ["target", "name", "value"])
def test_a_line_break_never_reaches_the_wire(where: str) -> None:
    target, name, value = "/bulk", "X-A", "b"
    if where == "target":
        target = "/bulk\r\nX-Injected: 1"
    elif where == "name":
        name = "X\nA"
    else:
        value = "b\r\n\r\nGET / HTTP/1.1"
    with pytest.raises(ValueError, match="line break"):
        request_head("POST", target, [(name, value)])
    with pytest.raises(ValueError, match="space"):
        request_head("POST", "/bulk x", [])


def test_a_content_length_of_many_digits_is_read_or_refused_without_an_unexpected_error(closing: List[socket.socket]) -> None:
    assert ask(closing, b"HTTP/1.1 200 OK\r\nContent-Length: " + b"0" * 5000 + b"2\r\n\r\nok").body == b"ok"
    with pytest.raises(http.client.HTTPException, match="too long"):
        ask(closing, b"HTTP/1.1 200 OK\r\nContent-Length: 1" + b"0" * 5000 + b"\r\n\r\nok")


def test_endless_interim_answers_are_refused(closing: List[socket.socket]) -> None:
    with pytest.raises(http.client.HTTPException, match="interim"):
        ask(closing, b"HTTP/1.1 100 Continue\r\n\r\n" * 100)


def test_an_answer_sent_before_the_body_was_read_is_read_when_the_write_fails() -> None:
    """A proxy refusing a large body answers 413 after the head and closes: the write fails, the
    answer is what counts (the engine splits a batch refused so)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def refuse() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.recv(1024)  # some of the head
            peer.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
            peer.shutdown(socket.SHUT_WR)
            time.sleep(0.2)  # then closes with the body unread: a reset

    server = threading.Thread(target=refuse, daemon=True)
    server.start()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        answer = exchange(sock, HEAD, b"x" * (32 << 20))
    finally:
        sock.close()
        listener.close()
        server.join(5)
    assert (answer.status, answer.body, answer.reusable) == (413, b"too large", False)


def test_a_gzip_answer_of_several_members_is_read_whole_and_a_cut_one_refused(closing: List[socket.socket]) -> None:
    members = gzip.compress(b'{"success":') + gzip.compress(b"true}")
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
    assert ask(closing, head % len(members) + members).body == b'{"success":true}'
    cut = gzip.compress(b'{"success":true}')[:-6]
    with pytest.raises(http.client.HTTPException, match="inside a gzip member"):
        ask(closing, head % len(cut) + cut)


def test_head_lines_ending_in_a_bare_line_feed_are_read(closing: List[socket.socket]) -> None:
    answer = ask(closing, b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nX: y\r\n\n2\nok\n0\n\n")
    assert (answer.status, answer.body, answer.headers["X"], answer.reusable) == (200, b"ok", "y", True)

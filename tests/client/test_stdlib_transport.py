"""The CLI's HTTP/1.1 client (``StdlibTransport``) against canned answers from a real
socket: bodies by length, by chunks (split anywhere) and to the connection's end, lines
as they come, and answers that are malformed or too large (an API at a URL a user typed
is not trusted to be well-formed)."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loft.client import StdlibTransport, TransportError, _transport


def _serve(answer: list[bytes]) -> tuple[str, threading.Thread, list[bytes]]:
    """A one-connection server: reads the request head, sends ``answer`` piece by
    piece, closes. Returns its URL, thread and what it received."""
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn, server:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            got.append(data)
            for piece in answer:
                conn.sendall(piece)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}", t, got


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *at], [*at, len(data)], strict=True) if b > a]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    body=st.binary(max_size=3000),
    chunk_sizes=st.lists(st.integers(1, 500), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    framing=st.sampled_from(["length", "chunked", "close"]),
)
def test_bodies_come_whole_however_they_are_framed_and_split(
    body: bytes, chunk_sizes: list[int], cuts: list[int], framing: str
) -> None:
    if framing == "length":
        wire = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    elif framing == "close":
        wire = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body
    else:
        chunks, at, i = [], 0, 0
        while at < len(body):
            n = chunk_sizes[i % len(chunk_sizes)]
            chunks.append(b"%x;ext=1\r\n" % len(body[at : at + n]) + body[at : at + n] + b"\r\n")
            at, i = at + n, i + 1
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(chunks)
        wire += b"0\r\nX-Trailer: t\r\n\r\n"
    url, t, got = _serve(_pieces(wire, cuts))
    reply = StdlibTransport(url, timeout=10).request("POST", "/v1/x", body=b"in")
    assert reply.status == 200 and reply.read() == body
    t.join(10)
    assert got[0].startswith(b"POST /v1/x HTTP/1.1\r\n") and b"content-length: 2\r\n" in got[0]


def test_lines_come_as_they_arrive() -> None:
    lines = [b'{"type": "stdout"}\n', b'{"type": "exit", "code": 0}\n']
    wire = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    wire += [b"%x\r\n%s\r\n" % (len(line), line) for line in lines] + [b"0\r\n\r\n"]
    url, t, _ = _serve(wire)
    reply = StdlibTransport(url, timeout=10).request("GET", "/v1/x")
    assert list(reply.lines()) == lines
    t.join(10)


@pytest.mark.parametrize(
    "wire",
    [
        [b"SSH-2.0-not-http\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\n"],
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"],
        [b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000],
    ],
)
def test_malformed_answers_are_transport_errors(wire: list[bytes]) -> None:
    url, t, _ = _serve(wire)
    with pytest.raises(TransportError):
        StdlibTransport(url, timeout=10).request("GET", "/v1/x").read()
    t.join(10)


def test_an_answer_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_transport, "MAX_ANSWER", 1000)
    url, t, _ = _serve([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x" * 5000])
    with pytest.raises(TransportError, match="oversized"):
        StdlibTransport(url, timeout=10).request("GET", "/v1/x").read()
    t.join(10)


def test_nobody_there_says_where_it_looked() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="cannot reach the loft API"):
        StdlibTransport(f"http://127.0.0.1:{port}", timeout=5).request("GET", "/")

"""AgentNode's failures, against real sockets that misbehave as a broken agent would: no
socket at all, one that accepts and never answers, one that hangs up mid-answer, one
that answers nonsense, and a node error carried through with its hint. The happy paths
run against the real agent in test_control_up.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loft.api import ExecRequest
from loft.control.agentnode import AgentNode, BadGateway
from loft.control.errors import Conflict, NodeUnavailable, NotFound

pytestmark = pytest.mark.timeout(60)


@contextlib.contextmanager
def fake_agent(path: Path, answer: Callable[[socket.socket], None]) -> Iterator[None]:
    """A Unix socket whose every connection gets ``answer`` (after the request head)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def loop() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                answer(conn)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        server.close()


def _reply(status: int, body: bytes) -> Callable[[socket.socket], None]:
    def send(conn: socket.socket) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        conn.sendall(head + body)
        conn.close()

    return send


def test_agentnode_no_socket_is_unavailable(tmp_path: Path) -> None:
    node = AgentNode(tmp_path / "agent.sock")
    start = time.monotonic()
    with pytest.raises(NodeUnavailable, match="cannot reach the node agent") as e:
        asyncio.run(node.ping())
    assert e.value.hint and time.monotonic() - start < 1


def test_agentnode_wedged_agent_is_bounded_by_the_caller(tmp_path: Path) -> None:
    """An agent that accepts and never answers: the call is cancellable, so the control
    plane's deadline (asyncio.wait_for, as on_node does) ends it."""
    path = tmp_path / "agent.sock"
    with fake_agent(path, lambda conn: time.sleep(10)):
        node = AgentNode(path)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(node.states(["a", "b"]), 0.5))
        assert time.monotonic() - start < 2


@pytest.mark.parametrize(
    ("answer", "error", "says"),
    [
        (lambda c: c.close(), NodeUnavailable, "broke off"),
        (_reply(200, b"not json"), BadGateway, "malformed answer"),
        (_reply(500, b"oops"), BadGateway, "answered 500"),
        (_reply(404, b'{"error": "no workspace x", "hint": "h"}'), NotFound, "no workspace x"),
        (_reply(409, b'{"error": "it runs", "hint": "stop it"}'), Conflict, "it runs"),
    ],
    ids=["hangup", "nonsense", "500", "404", "409"],
)
def test_agentnode_broken_answers_are_clear_errors(
    tmp_path: Path, answer: Callable[[socket.socket], None], error: type[Exception], says: str
) -> None:
    path = tmp_path / "agent.sock"
    with fake_agent(path, answer):
        node = AgentNode(path)
        with pytest.raises(error, match=says):
            asyncio.run(node.stop("x"))
        with pytest.raises(error):  # a stream operation's refusal too
            asyncio.run(node.exec("x", ExecRequest(["true"])))


def test_agentnode_exec_stream_cut_short_is_unavailable(tmp_path: Path) -> None:
    """The agent switches protocols, sends some output, then dies without an exit (and
    without reading the input sent to it): the output that came is kept, then 503."""
    from loft.node import frames

    def half(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: loft-stream/1\r\n\r\n")
        conn.sendall(frames.encode(frames.Frame(frames.Channel.STDOUT, b"partial")))
        conn.close()

    path = tmp_path / "agent.sock"
    with fake_agent(path, half):

        async def run() -> list[object]:
            got: list[object] = []
            events = await AgentNode(path).exec("x", ExecRequest(["sleep", "9"]))
            with pytest.raises(NodeUnavailable):
                async for event in events:
                    got.append(event)
            return got

        got = asyncio.run(run())
    assert [getattr(e, "data", None) for e in got] == [b"partial"]

"""``/v1/workspaces/{name}/ports/{port}``: one TCP connection into a workspace as a
WebSocket (what ``loft forward`` opens per local connection), over the fake node, whose
``connect`` reaches the host's loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from controltool import Harness

from loft.client import Client, Conflict, Invalid

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def alice(control: Harness) -> Client:
    client = control.user("alice")
    control.workspace(client, "w")
    return client


@pytest.fixture
def echo() -> Iterator[int]:
    """A TCP server on the host's loopback that sends back what it reads, upper-cased."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def test_a_tunnel_carries_bytes_both_ways(control: Harness, alice: Client, echo: int) -> None:
    ws = alice.port("w", echo)
    big = b"x" * (3 << 20)
    ws.send_bytes(b"hello ")
    ws.send_bytes(big[: 1 << 20])
    got = b""
    while len(got) < 6 + (1 << 20):
        message = ws.recv()
        assert isinstance(message, bytes)
        got += message
    assert got == b"HELLO " + b"X" * (1 << 20)
    assert control.state.activity.is_busy(alice.workspace("w").id)  # a tunnel open is use
    ws.close()


def test_refusals_come_before_the_upgrade(alice: Client) -> None:
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # nothing listens there now
    with pytest.raises(Conflict):
        alice.port("w", port)
    with pytest.raises(Invalid):
        alice.port("w", 0)
    alice.stop("w")
    with pytest.raises(Conflict):
        alice.port("w", 8000)


def test_text_messages_are_refused(alice: Client, echo: int) -> None:
    ws = alice.port("w", echo)
    ws.send_json({"not": "bytes"})
    assert ws.recv() is None and ws.close_code == 1003

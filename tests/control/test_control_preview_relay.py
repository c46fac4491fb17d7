"""The preview proxy's body splice (loft.control.preview.relay) on real loopback TCP:
a body whose length is known goes from the workspace's socket to the client's through a
pipe, driven on a thread while one is free and by the event loop otherwise; both give
the same bytes and framing, a body cut short is an error, and a relay cancelled while
its peer is silent stops at once and leaves no thread or descriptor behind."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator

import h11
import pytest

from loft.control.preview import relay
from loft.control.preview.relay import Closed, Peer, relay_sized_body

BODY = os.urandom(3 * relay.READ_SIZE + 12345)  # several pipefuls, not a multiple


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=10)
        b, _ = server.accept()
    return a, b


async def _peers(length: int) -> tuple[Peer, Peer, socket.socket, socket.socket]:
    """(upstream peer, client peer, the workspace's end, the client's end): the proxy's
    side of both, after the workspace has sent a head announcing ``length`` bytes and
    the client's h11 has answered with the same head."""
    workspace, ours_up = _tcp_pair()
    client, ours_down = _tcp_pair()
    src = Peer(h11.Connection(h11.CLIENT), *await asyncio.open_connection(sock=ours_up))
    dst = Peer(h11.Connection(h11.SERVER), *await asyncio.open_connection(sock=ours_down))
    client.sendall(b"GET / HTTP/1.1\r\nhost: w\r\n\r\n")
    assert isinstance(await dst.next(5), h11.Request)
    assert isinstance(await dst.next(5), h11.EndOfMessage)
    head = [(b"content-length", str(length).encode())]
    await dst.send(h11.Response(status_code=200, headers=head))
    src.conn.send(h11.Request(method="GET", target="/", headers=[(b"host", b"w")]))
    src.conn.send(h11.EndOfMessage())
    workspace.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % length)
    assert isinstance(await src.next(5), h11.Response)
    return src, dst, workspace, client


def _read_all(sock: socket.socket, out: bytearray) -> threading.Thread:
    def run() -> None:
        while data := sock.recv(1 << 20):
            out.extend(data)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture(params=["thread", "event loop"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "event loop":  # every splice thread taken
        taken = threading.BoundedSemaphore(1)
        taken.acquire()
        monkeypatch.setattr(relay, "_threads", taken)
    yield request.param


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(60)
def test_preview_relay_splices_a_sized_body_exactly(driver: str) -> None:
    async def main() -> bytes:
        src, dst, workspace, client = await _peers(len(BODY))
        got = bytearray()
        reader = _read_all(client, got)
        sender = threading.Thread(target=workspace.sendall, args=(BODY,), daemon=True)
        sender.start()
        await relay_sized_body(src, dst, len(BODY), timeout=10)
        assert dst.conn.our_state is h11.DONE  # h11 counted every spliced byte
        dst.close()
        src.close()
        await asyncio.to_thread(reader.join, 10)
        workspace.close()
        client.close()
        return bytes(got)

    before = _fds()
    got = asyncio.run(main())
    assert got.split(b"\r\n\r\n", 1)[1] == BODY
    assert _fds() == before


@pytest.mark.timeout(60)
def test_preview_relay_a_body_cut_short_is_an_error(driver: str) -> None:
    async def main() -> None:
        src, dst, workspace, client = await _peers(len(BODY))
        workspace.sendall(BODY[: relay.READ_SIZE + 5])
        workspace.close()
        with pytest.raises(Closed, match="broke off"):
            await relay_sized_body(src, dst, len(BODY), timeout=10)
        src.close()
        dst.close()
        client.close()

    asyncio.run(main())


@pytest.mark.timeout(60)
def test_preview_relay_cancelled_while_the_workspace_is_silent_stops_at_once(
    driver: str,
) -> None:
    """A relay waiting on a silent workspace (its deadline far off) is cancelled, as a
    server stopping cancels its connections: it ends within a second, its thread ends
    and gives its place back, and its pipe and descriptor copies are closed."""
    free = relay._threads._value  # type: ignore[attr-defined]

    async def main() -> float:
        src, dst, workspace, client = await _peers(len(BODY))
        got = bytearray()
        reader = _read_all(client, got)
        workspace.sendall(BODY[: relay.READ_SIZE])  # then nothing more
        task = asyncio.ensure_future(relay_sized_body(src, dst, len(BODY), timeout=3600))
        while len(got) < relay.READ_SIZE:
            await asyncio.sleep(0.01)
        assert not task.done()
        t = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        took = time.monotonic() - t
        src.close()
        dst.close()
        await asyncio.to_thread(reader.join, 10)  # the client's end sees the close
        workspace.close()
        client.close()
        return took

    before = _fds()
    took = asyncio.run(main())
    assert took < 1.0
    deadline = time.monotonic() + 5
    while relay._threads._value != free:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the splice thread did not end"
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "loft-splice"]
    assert _fds() == before

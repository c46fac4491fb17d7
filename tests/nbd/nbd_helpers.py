"""An in-memory client/server pair over loft.nbd.protocol (no sockets)."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import uvloop

from loft.nbd import protocol as p
from loft.nbd.server import ExportRegistry, NBDServer


def feed(conn: p.Connection, data: bytes, mode: str = "whole") -> list[object]:
    """Feed ``data`` to ``conn`` whole or one byte at a time; return all events."""
    events: list[object] = []

    def drain() -> None:
        while True:
            e = conn.next_event()
            if e is p.NEED_DATA or e is p.PAUSED:
                return
            events.append(e)

    if mode == "bytewise":
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])
            drain()
    else:
        conn.receive_data(data)
        drain()
    return events


class ConnectionPair:
    """A client and a server connection wired together in memory."""

    def __init__(self, mode: str = "whole") -> None:
        self.client = p.Connection(p.CLIENT)
        self.server = p.Connection(p.SERVER)
        self.mode = mode

    def to_server(self, *events: object) -> list[object]:
        """Send events from the client; return what the server reads."""
        data = b"".join(self.client.send(e) for e in events)
        return feed(self.server, data, self.mode)

    def to_client(self, *events: object) -> list[object]:
        """Send events from the server; return what the client reads."""
        data = b"".join(self.server.send(e) for e in events)
        return feed(self.client, data, self.mode)

    def handshake(self, *, structured: bool = True, name: str = "") -> None:
        """Greeting, flags, optional structured replies, then GO."""
        assert self.to_client(p.Greeting()) == [p.Greeting()]
        assert self.to_server(p.ClientFlags()) == [p.ClientFlags()]
        if structured:
            assert self.to_server(p.StructuredReplyOption()) == [p.StructuredReplyOption()]
            ack = p.OptionAck(p.Option.STRUCTURED_REPLY)
            assert self.to_client(ack) == [ack]
        assert self.to_server(p.GoOption(name)) == [p.GoOption(name)]
        replies = [p.OptionInfoExport(p.Option.GO, 1 << 20, 1), p.OptionAck(p.Option.GO)]
        assert self.to_client(*replies) == replies
        assert self.server.state is p.TRANSMISSION and self.client.state is p.TRANSMISSION


# --- a real server in a thread, and a blocking socket client -------------------------


class ServerThread:
    """An NBDServer on a Unix socket (and optionally TCP), run by uvloop in a thread."""

    def __init__(self, registry: ExportRegistry, sock: Path, **kwargs: Any) -> None:
        self.registry = registry
        self.sock = sock
        self.kwargs = kwargs
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: NBDServer | None = None
        self.tcp: tuple[str, int] | None = None

    def call(self, coro: Any, timeout: float = 20) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        listen_tcp = self.kwargs.pop("listen_tcp", False)

        async def start() -> None:
            self.server = NBDServer(self.registry, **self.kwargs)
            await self.server.serve_unix(self.sock)
            if listen_tcp:
                self.tcp = await self.server.serve_tcp("127.0.0.1", 0)

        self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.call(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Client:
    """A blocking NBD client over loft.nbd.protocol (for tests of the server)."""

    def __init__(self, path: Path | None = None, *, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(path))
        self.sock = sock
        self.conn = p.Connection(p.CLIENT)
        self.handles = itertools.count(1)
        self.size = 0
        self.flags = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, *events: object) -> None:
        self.sock.sendall(b"".join(self.conn.send(e) for e in events))

    def next(self) -> object:
        while True:
            e = self.conn.next_event()
            if e is not p.NEED_DATA:
                return e
            data = self.sock.recv(1 << 20)
            self.conn.receive_data(data)

    def option(self, event: object) -> list[object]:
        """Send an option; return its replies up to and including the final one."""
        self.send(event)
        out = []
        while True:
            e = self.next()
            out.append(e)
            if isinstance(e, p.OptionAck | p.OptionError):
                return out

    def handshake(
        self,
        export: str = "",
        *,
        structured: bool = True,
        contexts: tuple[str, ...] = (),
        tls: ssl.SSLContext | None = None,
    ) -> list[object]:
        """Negotiate up to GO (after STARTTLS with ``tls``); returns GO's replies."""
        assert isinstance(self.next(), p.Greeting)
        self.send(p.ClientFlags())
        if tls is not None:
            assert self.option(p.StartTLSOption()) == [p.OptionAck(p.Option.STARTTLS)]
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
            self.conn.tls_established()
        if structured:
            assert self.option(p.StructuredReplyOption()) == [
                p.OptionAck(p.Option.STRUCTURED_REPLY)
            ]
        if contexts:
            self.option(p.SetMetaContextOption(export, contexts))
        replies = self.option(p.GoOption(export, (p.InfoType.NAME, p.InfoType.BLOCK_SIZE)))
        for r in replies:
            if isinstance(r, p.OptionInfoExport):
                self.size, self.flags = r.size, r.flags
        return replies

    def request(
        self,
        command: int,
        offset: int = 0,
        length: int = 0,
        flags: int = 0,
        payload: bytes | None = None,
    ) -> list[object]:
        """Send one request and return its reply events (through the final chunk)."""
        handle = next(self.handles)
        if payload is not None:
            length = len(payload)
        self.send(p.Request(command, handle, offset, length, flags, payload))
        return self.wait(handle)

    def wait(self, handle: int) -> list[object]:
        out = []
        while True:
            e = self.next()
            assert getattr(e, "handle", None) == handle, e
            out.append(e)
            if isinstance(e, p.SimpleReply) or getattr(e, "done", True):
                return out

    def read(self, offset: int, length: int, flags: int = 0) -> bytes:
        """READ and reassemble the data (structured or simple); raise on an error."""
        buf = bytearray(length)
        for e in self.request(p.Command.READ, offset, length, flags):
            if isinstance(e, p.SimpleReply):
                assert e.error == 0, e
                buf[:] = bytes(e.data or b"")
            elif isinstance(e, p.OffsetDataChunk):
                buf[e.offset - offset : e.offset - offset + len(e.data)] = e.data
            elif isinstance(e, p.ErrorChunk):
                raise OSError(e.error, e.message)
        return bytes(buf)

    def error_of(self, replies: list[object]) -> int:
        for e in replies:
            if isinstance(e, p.SimpleReply | p.ErrorChunk) and e.error:
                return e.error
        return 0

"""One HTTP exchange relayed between a client and a workspace, each side an h11
connection (:class:`Peer`), and a switched (WebSocket) connection spliced byte for byte.

Both sides are parsed, so framing is h11's on each (a request cannot smuggle a second
one past the proxy's checks: every request on a kept-alive connection is read and
authorized on its own). Bodies stream in pieces as they come, with back-pressure
(``drain``) both ways; nothing is buffered whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import h11

__all__ = ["READ_SIZE", "Closed", "Peer", "relay_body", "splice"]

#: Bytes read from a socket at once.
READ_SIZE = 1024 * 1024
#: Seconds one direction of a splice may go on after the other ended.
_LINGER = 1.0


class Closed(Exception):
    """The other side closed, broke the protocol, or was silent past a deadline."""


class Peer:
    """An h11 connection on a stream pair."""

    def __init__(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.conn = conn
        self.reader = reader
        self.writer = writer

    async def next(self, timeout: float) -> h11.Event | type[h11.PAUSED]:
        """The next event, reading as needed; :class:`Closed` past ``timeout`` seconds
        of silence. A peer's malformed bytes raise ``h11.RemoteProtocolError``."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            except TimeoutError:
                raise Closed("silent past the deadline") from None
            except OSError as e:
                raise Closed(str(e)) from None
            self.conn.receive_data(data)

    async def send(self, event: h11.Event) -> None:
        """Send ``event`` (waiting while the peer does not read)."""
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            try:
                await self.writer.drain()
            except OSError as e:
                raise Closed(str(e)) from None

    def close(self) -> None:
        """Close the socket (not waiting)."""
        self.writer.close()


async def relay_body(src: Peer, dst: Peer, timeout: float, on_data: Callable[[], None]) -> None:
    """Copy a message body from ``src`` to ``dst`` up to and including its end."""
    while True:
        event = await src.next(timeout)
        if isinstance(event, h11.Data):
            on_data()
            await dst.send(event)
        elif isinstance(event, h11.EndOfMessage):
            await dst.send(h11.EndOfMessage())
            return
        else:
            raise Closed(f"the body broke off ({type(event).__name__})")


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, on_data: Callable[[], None]
) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            on_data()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        pass


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    on_data: Callable[[], None],
) -> None:
    """Copy bytes both ways until both sides end (or one did, and the other has not
    within a second: a closing handshake's last bytes pass), then close both."""
    ab = asyncio.ensure_future(_pump(a[0], b[1], on_data))
    ba = asyncio.ensure_future(_pump(b[0], a[1], on_data))
    try:
        _, pending = await asyncio.wait({ab, ba}, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            await asyncio.wait(pending, timeout=_LINGER)
    finally:
        for task in (ab, ba):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for _, w in (a, b):
            w.close()

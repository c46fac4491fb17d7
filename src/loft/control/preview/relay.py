"""One HTTP exchange relayed between a client and a workspace, each side an h11
connection (:class:`Peer`), and a switched (WebSocket) connection spliced byte for byte.

Both sides are parsed, so framing is h11's on each (a request cannot smuggle a second
one past the proxy's checks: every request on a kept-alive connection is read and
authorized on its own). Bodies stream in pieces as they come, with back-pressure
(``drain``) both ways; nothing is buffered whole. A body whose length the head gives
moves from socket to socket inside the kernel (splice), on a thread of its own while one
of :data:`SPLICE_THREADS` is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import cast

import h11

__all__ = ["READ_SIZE", "Closed", "Peer", "relay_body", "relay_sized_body", "sized_body", "splice"]

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


async def relay_body(src: Peer, dst: Peer, timeout: float) -> None:
    """Copy a message body from ``src`` to ``dst`` up to and including its end."""
    while True:
        event = await src.next(timeout)
        if isinstance(event, h11.Data):
            await dst.send(event)
        elif isinstance(event, h11.EndOfMessage):
            await dst.send(h11.EndOfMessage())
            return
        else:
            raise Closed(f"the body broke off ({type(event).__name__})")


def sized_body(method: bytes, response: h11.Response) -> int | None:
    """The length of ``response``'s body when its head gives it and it has one (not the
    answer to a HEAD, not 204 or 304, not chunked); None otherwise."""
    if method == b"HEAD" or response.status_code in (204, 304):
        return None
    length = None
    for name, value in response.headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = int(value)  # h11 has checked it is one number
    return length


async def relay_sized_body(src: Peer, dst: Peer, length: int, timeout: float) -> None:
    """Copy a body of ``length`` bytes from ``src`` to ``dst``, up to its end. What
    ``src``'s h11 already holds goes through it; the rest is read straight from the
    socket, unparsed (a length needs no parsing: h11 on that side is not used again,
    one request per upstream connection), and passed through ``dst``'s h11 without
    being copied, which keeps its framing (and so keep-alive) right."""
    sent = 0

    async def out(data: bytes) -> None:
        nonlocal sent
        for piece in dst.conn.send_with_data_passthrough(h11.Data(data=data)) or ():
            dst.writer.write(piece)
        sent += len(data)
        try:
            await dst.writer.drain()
        except OSError as e:
            raise Closed(str(e)) from None

    while (event := src.conn.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            await out(event.data)
        elif isinstance(event, h11.EndOfMessage):
            await dst.send(h11.EndOfMessage())
            return
        else:
            raise Closed(f"the body broke off ({type(event).__name__})")
    buffered = getattr(src.reader, "_buffer", None)  # what the stream holds, unparsed
    if isinstance(buffered, bytearray) and buffered and sent < length:
        await out(await src.reader.read(min(len(buffered), length - sent)))
    if sent < length and _spliceable(src, dst) and not getattr(src.reader, "_buffer", b"x"):
        try:
            await dst.writer.drain()
        except OSError as e:
            raise Closed(str(e)) from None
        await _splice_body(src, dst, length - sent, timeout)
        await dst.send(h11.EndOfMessage())
        return
    while sent < length:
        try:
            data = await asyncio.wait_for(src.reader.read(min(READ_SIZE, length - sent)), timeout)
        except TimeoutError:
            raise Closed("silent past the deadline") from None
        except OSError as e:
            raise Closed(str(e)) from None
        if not data:
            raise Closed("the body broke off before its length")
        await out(data)
    await dst.send(h11.EndOfMessage())


def _spliceable(src: Peer, dst: Peer) -> bool:
    """Whether bytes can go from ``src``'s socket to ``dst``'s inside the kernel: both
    plain sockets (TLS is the transport's, so its bytes must pass through here)."""
    return all(
        p.writer.get_extra_info("sslcontext") is None
        and p.writer.get_extra_info("socket") is not None
        for p in (src, dst)
    )


#: Stands in for spliced bytes when h11 counts them (it reads only their length).
_COUNTED = memoryview(bytes(READ_SIZE))
_F_SETPIPE_SZ = 1031
#: Bodies spliced on threads of their own at once; more go through the event loop, so
#: clients that read slowly can hold threads but never stall anyone else's body.
SPLICE_THREADS = 16
_threads = threading.BoundedSemaphore(SPLICE_THREADS)


class _PipeCopy:
    """``length`` bytes from one socket into another through a pipe, with splice(2): no
    copy in this process. Never blocks: each :meth:`step` moves what it can and says
    what to wait for next, so a thread (poll) and the event loop (its selector) can
    both drive it."""

    def __init__(self, src: socket.socket, dst: socket.socket, length: int) -> None:
        self.length = length
        self.moved = 0
        self._in_pipe = 0
        self._fds: list[int] = []
        # Copies of the descriptors: the loop watches no descriptor a transport owns.
        try:
            self._fds.append(os.dup(src.fileno()))
            self._fds.append(os.dup(dst.fileno()))
            self._fds.extend(os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        except OSError as e:  # out of descriptors
            self.close()
            raise Closed(str(e)) from None
        self.src_fd, self.dst_fd, self._read_end, self._write_end = self._fds
        with contextlib.suppress(OSError):  # a pipe as large as a read: fewer system calls
            fcntl.fcntl(self._write_end, _F_SETPIPE_SZ, READ_SIZE)

    def step(self) -> tuple[int, bool] | None:
        """Move bytes until one side would block: then ``(descriptor, for_writing)`` to
        wait for; None once all ``length`` bytes are through."""
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while self.length or self._in_pipe:
            if self.length and self._in_pipe < READ_SIZE:
                try:
                    n = os.splice(
                        self.src_fd, self._write_end, min(READ_SIZE, self.length), flags=flags
                    )
                except BlockingIOError:
                    n = -1
                except OSError as e:
                    raise Closed(str(e)) from None
                if n == 0:
                    raise Closed("the body broke off before its length")
                if n > 0:
                    self.length -= n
                    self._in_pipe += n
                elif not self._in_pipe:
                    return self.src_fd, False
            if self._in_pipe:
                try:
                    m = os.splice(self._read_end, self.dst_fd, self._in_pipe, flags=flags)
                except BlockingIOError:
                    return self.dst_fd, True
                except OSError as e:
                    raise Closed(str(e)) from None
                self._in_pipe -= m
                self.moved += m
        return None

    def close(self) -> None:
        """Close the pipe and the copies of the descriptors."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


async def _splice_body(src: Peer, dst: Peer, length: int, timeout: float) -> None:
    """Move ``length`` bytes from ``src``'s socket to ``dst``'s (:class:`_PipeCopy`).
    ``src``'s transport stops reading for it (its connection is not used again);
    ``dst``'s has nothing queued, and its h11 is told of the bytes' length afterwards so
    its framing stays right. A thread drives the copy while one is free: waiting in
    poll(2) there costs less than a trip through the event loop for every wait, which
    was a third of the relay's CPU (bench/preview_proxy.py)."""
    transport = cast(asyncio.ReadTransport, src.writer.transport)
    transport.pause_reading()
    sockets = [cast(socket.socket, p.writer.get_extra_info("socket")) for p in (src, dst)]
    copy = _PipeCopy(sockets[0], sockets[1], length)
    if _threads.acquire(blocking=False):
        await _on_thread(copy, timeout, sockets)
    else:
        loop = asyncio.get_running_loop()
        try:
            while (wait := copy.step()) is not None:
                fd, writing = wait
                if writing:
                    await _ready(loop.add_writer, loop.remove_writer, fd, timeout)
                else:
                    await _ready(loop.add_reader, loop.remove_reader, fd, timeout)
        finally:
            copy.close()
    sent = copy.moved
    while sent:
        piece = min(sent, READ_SIZE)
        dst.conn.send_with_data_passthrough(h11.Data(data=cast(bytes, _COUNTED[:piece])))
        sent -= piece


async def _on_thread(copy: _PipeCopy, timeout: float, sockets: list[socket.socket]) -> None:
    """Drive ``copy`` on a thread of its own, which holds one of :data:`_threads` and
    closes the copy when it ends (so no descriptor number it uses is reused while it
    runs, however this coroutine ends). Cancelled, this shuts both sockets down, which
    wakes the thread's poll at once (its copies of the descriptors would keep a merely
    closed socket open). The thread is a daemon: a process exiting does not wait for a
    silent peer's deadline."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            _drive(copy, timeout)
        except BaseException as e:  # handed to the coroutine that awaits it
            error = e
        finally:
            copy.close()
            _threads.release()
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody awaits it
            loop.call_soon_threadsafe(settle, error)

    try:
        threading.Thread(target=run, name="loft-splice", daemon=True).start()
    except RuntimeError as e:  # no thread to be had
        copy.close()
        _threads.release()
        raise Closed(str(e)) from None
    try:
        await asyncio.shield(done)
    except asyncio.CancelledError:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Closed, OSError):
            await done
        raise


def _drive(copy: _PipeCopy, timeout: float) -> None:
    poller = select.poll()
    watched: int | None = None
    while (wait := copy.step()) is not None:
        fd, writing = wait
        if watched is not None:
            poller.unregister(watched)
        poller.register(fd, select.POLLOUT if writing else select.POLLIN)
        watched = fd
        if not poller.poll(timeout * 1000):
            raise Closed("silent past the deadline")


async def _ready(
    add: Callable[..., None], remove: Callable[[int], object], fd: int, timeout: float
) -> None:
    """Wait until ``fd`` is ready (``add``: the loop's add_reader or add_writer)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    add(fd, wake)
    try:
        await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        raise Closed("silent past the deadline") from None
    finally:
        remove(fd)


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

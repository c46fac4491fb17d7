"""Exec, shell and forward sessions: an upgraded node API connection on one side, a
process (or a port forwarder) in a workspace on the other, frames in between
(:mod:`loft.node.frames`).

Everything runs on the agent's event loop, without a thread per session: the process's
pipes (or its terminal's master) are non-blocking and watched with ``add_reader``, its
exit with a pidfd, so a node with many open shells costs descriptors, not threads.
Back-pressure both ways: output waits while the client does not read (``drain``), input
waits while the process does not read its standard input (a full pipe).

The last frame is EXIT (the status) or ERROR. What the process wrote before it exited is
all sent before EXIT: after the exit, what is left in its pipes is read to the end of
what is there (a background process still holding them does not keep the session open).
A client that goes away ends the session: the process gets SIGHUP (a terminal's hang-up)
or SIGTERM (runc passes it on), then SIGKILL after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from loft.node import frames
from loft.node.frames import Channel, Decoder, Frame
from loft.node.runcommand import RunLog
from loft.runtime.console import PtySession
from loft.runtime.forward import Forwarder
from loft.runtime.spec import WindowSize

__all__ = [
    "ConnectSession",
    "ExecSession",
    "ForwardSession",
    "LogsSession",
    "Usage",
    "readable",
    "tracked",
    "writable",
]

_READ = 65536
#: Seconds a process gets to end after its client went away, before SIGKILL.
_HANGUP_GRACE = 5.0


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def readable(fd: int) -> None:
    """Wait, on the running loop, until ``fd`` (non-blocking) can be read."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def writable(fd: int) -> None:
    """Wait, on the running loop, until ``fd`` (non-blocking) can be written."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


def _read(fd: int) -> bytes | None:
    """What ``fd`` has now: bytes, ``b""`` at its end, None when nothing is there."""
    try:
        return os.read(fd, _READ)
    except BlockingIOError:
        return None
    except OSError as e:  # a terminal's master reads EIO once every slave is closed
        if e.errno == errno.EIO:
            return b""
        raise


async def _send(writer: asyncio.StreamWriter, frame: Frame) -> None:
    writer.write(frames.encode(frame))
    await writer.drain()


class ExecSession:
    """A process in a workspace, with pipes (``process``) or a terminal (``pty``)."""

    def __init__(
        self, process: subprocess.Popen[bytes] | None = None, pty: PtySession | None = None
    ) -> None:
        assert (process is None) != (pty is None)
        self.pty = pty
        self.process = pty.process if pty is not None else process
        if pty is not None:
            self._outputs = [(pty.master, Channel.STDOUT)]
            self._stdin: int | None = pty.master
        else:
            assert process is not None and process.stdout and process.stderr and process.stdin
            self._outputs = [
                (process.stdout.fileno(), Channel.STDOUT),
                (process.stderr.fileno(), Channel.STDERR),
            ]
            self._stdin = process.stdin.fileno()
        for fd, _ in self._outputs:
            os.set_blocking(fd, False)
        if self._stdin is not None:
            os.set_blocking(self._stdin, False)

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> None:
        pumps = [asyncio.ensure_future(self._pump(fd, ch, writer)) for fd, ch in self._outputs]
        inputs = asyncio.ensure_future(self._input(reader, initial))
        exited = asyncio.ensure_future(self._exited())
        try:
            done, _ = await asyncio.wait({inputs, exited}, return_when=asyncio.FIRST_COMPLETED)
            if exited not in done:  # the client went away first
                await self._hang_up()
                return
            for p in pumps:
                p.cancel()
            for fd, channel in self._outputs:  # what the process wrote before exiting
                while data := _read(fd):
                    await _send(writer, Frame(channel, data))
            await _send(writer, frames.exit_status(exited.result()))
        finally:
            tasks = (*pumps, inputs, exited)
            for task in tasks:
                task.cancel()
            # Their readers go before the descriptors close: a number closed while still
            # registered is another session's pidfd or pipe the next moment, and a late
            # remove_reader would unregister that one's (it would never see its exit).
            await asyncio.gather(*tasks, return_exceptions=True)
            self._close()

    async def _pump(self, fd: int, channel: Channel, writer: asyncio.StreamWriter) -> None:
        while True:
            await readable(fd)
            data = _read(fd)
            if data is None:
                continue
            if not data:
                return
            await _send(writer, Frame(channel, data))

    async def _input(self, reader: asyncio.StreamReader, initial: bytes) -> None:
        """Client frames to the process, until the client closes the connection."""
        decoder = Decoder()
        if initial:
            decoder.receive_data(initial)
        while True:
            frame = decoder.next_frame()
            if frame is frames.NEED_DATA:
                decoder.receive_data(await reader.read(_READ))
                continue
            if frame is None:
                return
            assert isinstance(frame, Frame)
            if frame.channel is Channel.STDIN:
                await self._write_stdin(frame.payload)
            elif frame.channel is Channel.EOF:
                self._close_stdin()
            elif frame.channel is Channel.RESIZE and self.pty is not None:
                size = frames.json_of(frame)
                with contextlib.suppress(ValueError, TypeError, OSError):
                    self.pty.resize(WindowSize(int(size["rows"]), int(size["cols"])))

    async def _write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._stdin is not None:
            try:
                n = os.write(self._stdin, view)
            except BlockingIOError:
                await writable(self._stdin)
                continue
            except OSError:  # the process closed its input: drop what it will not read
                self._close_stdin()
                return
            view = view[n:]

    def _close_stdin(self) -> None:
        if self._stdin is None:
            return
        if self.pty is not None:  # a terminal's end of input is its EOF character
            with contextlib.suppress(OSError):
                os.write(self._stdin, b"\x04")
            return
        assert self.process is not None and self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        self._stdin = None

    async def _exited(self) -> int:
        assert self.process is not None
        pidfd = os.pidfd_open(self.process.pid)
        try:
            while self.process.poll() is None:
                await readable(pidfd)
        finally:
            os.close(pidfd)
        return self.process.returncode

    async def _hang_up(self) -> None:
        proc = self.process
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGHUP if self.pty is not None else signal.SIGTERM)
        try:
            await asyncio.wait_for(self._exited(), _HANGUP_GRACE)
        except TimeoutError:
            proc.kill()
            await self._exited()

    def _close(self) -> None:
        if self.pty is not None:
            with contextlib.suppress(OSError):
                os.close(self.pty.master)
        else:
            assert self.process is not None
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class ForwardSession:
    """A port forwarder that lives as long as its connection: it says where it listens
    (READY), then waits for the client to close or the workspace to stop."""

    def __init__(
        self,
        forwarder: Forwarder,
        listen: str,
        socket_path: Path | None,
        running: Callable[[], Awaitable[bool]],
    ) -> None:
        self.forwarder = forwarder
        self.listen = listen
        self.socket_path = socket_path
        self._running = running

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> None:
        try:
            await _send(writer, frames.ready(listen=self.listen))
            closed = asyncio.ensure_future(reader.read())
            while True:
                done, _ = await asyncio.wait({closed}, timeout=1.0)
                if done:
                    return
                if not await self._running():
                    await _send(writer, frames.error("the workspace stopped"))
                    return
        finally:
            self.forwarder.close()
            if self.socket_path is not None:
                self.socket_path.unlink(missing_ok=True)


class ConnectSession:
    """One TCP connection into a workspace (what the control plane's preview proxy asks
    for): after the switch the upgraded connection carries the connection's bytes
    as they are, both ways, until either side ends; no frames (a proxy relays them)."""

    def __init__(self, inside: socket.socket, seen: Callable[[], None]) -> None:
        self.inside = inside
        self._seen = seen

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> None:
        self.inside.setblocking(False)
        in_reader, in_writer = await asyncio.open_connection(sock=self.inside)
        try:
            if initial:
                in_writer.write(initial)
            there = asyncio.ensure_future(self._relay(reader, in_writer))
            back = asyncio.ensure_future(self._relay(in_reader, writer))
            try:
                await asyncio.gather(there, back)
            finally:
                there.cancel()
                back.cancel()
                await asyncio.gather(there, back, return_exceptions=True)
        finally:
            in_writer.close()

    async def _relay(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """``src`` to ``dst`` until its end, which is passed on (a half close)."""
        with contextlib.suppress(ConnectionError):
            while data := await src.read(_READ):
                self._seen()
                dst.write(data)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()


#: Chunks a log's follower may fall behind by before it is cut off (a client that does
#: not read must not make the node hold a command's whole output).
_FOLLOW_BACKLOG = 256


class LogsSession:
    """A ``[run] command``'s kept output: the newest ``tail`` bytes as STDOUT frames,
    READY, then (``follow``) every chunk as it is written, until the client closes."""

    def __init__(self, log: RunLog, tail: int, follow: bool) -> None:
        self.log = log
        self.tail = tail
        self.follow = follow

    async def __call__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        if self.follow:

            def tell(data: bytes) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, data)

            kept, unfollow = self.log.follow(self.tail, tell)
        else:
            kept, unfollow = self.log.tail(self.tail), (lambda: None)
        closed = asyncio.ensure_future(reader.read())
        try:
            for at in range(0, len(kept), _READ):
                await _send(writer, Frame(Channel.STDOUT, kept[at : at + _READ]))
            await _send(writer, frames.ready(kept=len(kept)))
            while self.follow:
                more = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({more, closed}, return_when=asyncio.FIRST_COMPLETED)
                if more not in done:
                    more.cancel()
                    return
                if queue.qsize() > _FOLLOW_BACKLOG:
                    await _send(writer, frames.error("the follower fell behind the output"))
                    return
                await _send(writer, Frame(Channel.STDOUT, more.result()))
        finally:
            unfollow()
            closed.cancel()
            await asyncio.gather(closed, return_exceptions=True)


class Usage:
    """When each workspace last had a session of the node's own in use: an exec or
    shell, a forwarded connection, a connection into it. One open now is use now (a
    quiet shell is somebody's); the idle reaper reads it (``activity``). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._forwards: dict[str, list[Forwarder]] = {}

    def seen(self, workspace: str) -> None:
        """Bytes moved for ``workspace`` now."""
        self._last[workspace] = time.time()

    def begin(self, workspace: str) -> None:
        with self._lock:
            self._open[workspace] += 1
        self.seen(workspace)

    def end(self, workspace: str) -> None:
        with self._lock:
            self._open[workspace] -= 1
            if self._open[workspace] <= 0:
                del self._open[workspace]
        self.seen(workspace)

    def forwarding(self, workspace: str, forwarder: Forwarder) -> None:
        """Count ``forwarder``'s connections as use while it lives (it relays on threads
        of its own, so it is asked, not told)."""
        with self._lock:
            self._forwards.setdefault(workspace, []).append(forwarder)

    def report(self, workspaces: Iterable[str]) -> dict[str, float]:
        """Epoch seconds of each workspace's last use; those never used are left out."""
        now = time.time()
        out: dict[str, float] = {}
        with self._lock:
            for ws in workspaces:
                fwds = self._forwards.get(ws, [])
                live = [f for f in fwds if not f.closed]
                if len(live) != len(fwds):
                    self._forwards[ws] = live
                last = max([self._last.get(ws, 0.0), *(f.last_used for f in fwds)])
                if ws in self._open or any(f.connections for f in live):
                    last = now
                if last:
                    out[ws] = last
        return out


def tracked(
    session: Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]],
    usage: Usage,
    workspace: str,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[None]]:
    """``session``, counted as use of ``workspace`` while it runs."""

    async def run(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> None:
        usage.begin(workspace)
        try:
            await session(reader, writer, initial)
        finally:
            usage.end(workspace)

    return run

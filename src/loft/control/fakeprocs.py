"""The real processes behind :class:`~loft.control.fakenode.FakeNode`'s streams: a
workspace's ``[run] command`` with its kept output (:class:`Server`, :class:`RunLog`),
and a shell under a PTY (:class:`PtyShell`). They run on the host as whoever runs the
tests: nothing here isolates anything (the real node runs them in the workspace).

Everything runs on the event loop: the PTY's master is non-blocking and watched with
``add_reader``, a server's output is read by a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

__all__ = ["LOG_KEEP", "PtyShell", "RunLog", "Server", "set_window"]

#: Bytes of a run command's output kept (the newest).
LOG_KEEP = 1 << 20
#: Seconds a process has to end after SIGTERM or SIGHUP before SIGKILL.
_GRACE = 2.0
_READ = 65536


class RunLog:
    """An append-only log that keeps its newest :data:`LOG_KEEP` bytes; readers may
    follow it."""

    def __init__(self, keep: int = LOG_KEEP) -> None:
        self.keep = keep
        self._data = bytearray()
        #: bytes dropped from the front (so offsets stay absolute)
        self._dropped = 0
        self._grew = asyncio.Event()

    @property
    def end(self) -> int:
        """The offset just past the last byte ever written."""
        return self._dropped + len(self._data)

    def append(self, data: bytes) -> None:
        """Add ``data``, dropping the oldest bytes past the limit, and wake followers."""
        self._data += data
        over = len(self._data) - self.keep
        if over > 0:
            del self._data[:over]
            self._dropped += over
        grew, self._grew = self._grew, asyncio.Event()
        grew.set()

    def since(self, offset: int) -> tuple[bytes, int]:
        """The bytes kept from ``offset`` on (from the oldest kept, when it was
        dropped), and the new end."""
        start = max(offset - self._dropped, 0)
        return bytes(self._data[start:]), self.end

    async def read(self, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """The last ``tail`` bytes, then (``follow``) what is appended, as it comes."""
        data, offset = self.since(max(self.end - tail, 0))
        if data:
            yield data
        while follow:
            grew = self._grew
            await grew.wait()
            data, offset = self.since(offset)
            if data:
                yield data


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Server:
    """A workspace's ``[run] command`` (``/bin/sh -c``), its output and exit going to
    its log."""

    def __init__(self, proc: asyncio.subprocess.Process, log: RunLog) -> None:
        self.proc = proc
        self.log = log
        self._pump = asyncio.ensure_future(self._copy())

    @classmethod
    async def start(cls, command: str, cwd: Path, log: RunLog) -> Server:
        """Start ``command`` in ``cwd``, in a session of its own (so stop reaches every
        process it starts)."""
        log.append(f"[loft] {_stamp()} start: {command}\n".encode())
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=_env(cwd),
        )
        return cls(proc, log)

    async def _copy(self) -> None:
        assert self.proc.stdout is not None
        while data := await self.proc.stdout.read(_READ):
            self.log.append(data)
        status = await self.proc.wait()
        self.log.append(f"[loft] {_stamp()} exited with status {status}\n".encode())

    async def stop(self) -> None:
        """SIGTERM to its whole session, SIGKILL after a grace period."""
        await _end_group(self.proc.pid, signal.SIGTERM, self.proc.wait)
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump


async def _end_group(pid: int, sig: signal.Signals, wait: Callable[[], Awaitable[int]]) -> None:
    """Signal the process group of ``pid``; SIGKILL it if ``wait`` has not returned
    within the grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    try:
        await asyncio.wait_for(wait(), _GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await wait()


def _env(home: Path) -> dict[str, str]:
    return {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TERM": "xterm-256color",
        "LANG": "C.UTF-8",
        "PS1": "$ ",
    }


def _take_terminal() -> None:  # pragma: no cover - runs in the child
    # The new session's controlling terminal, so the shell gets SIGWINCH and job control.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def set_window(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class PtyShell:
    """An interactive shell on a fresh PTY (a :class:`~loft.control.nodeclient.Terminal`)."""

    def __init__(self, master: int, proc: subprocess.Popen[bytes]) -> None:
        self.master = master
        self.proc = proc
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()

    async def _ready(self, writing: bool) -> None:
        """Wait until the master can be read (written); returns at once once closed.
        Registered only while waited on, and unregistered by :meth:`close` before the
        descriptor goes (its number is someone else's the moment after)."""
        loop = asyncio.get_running_loop()
        add, remove = (loop.add_writer, loop.remove_writer) if writing else (
            loop.add_reader, loop.remove_reader)  # fmt: skip
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.add(fut)
        add(self.master, _wake, fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self._closed:
                remove(self.master)

    @classmethod
    def spawn(cls, cwd: Path, rows: int, cols: int) -> PtyShell:
        """bash (sh without it), interactive, without rc files, in ``cwd``."""
        master, slave = os.openpty()
        try:
            set_window(slave, rows, cols)
            shell = shutil.which("bash") or "/bin/sh"
            argv = [shell, "--norc", "--noprofile", "-i"] if shell.endswith("bash") else [shell]
            proc = subprocess.Popen(
                argv,
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=cwd,
                env=_env(cwd),
                start_new_session=True,
                preexec_fn=_take_terminal,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(master, proc)

    async def read(self) -> bytes:
        while not self._closed:
            try:
                return os.read(self.master, _READ)
            except BlockingIOError:
                await self._ready(writing=False)
            except OSError as e:
                if e.errno == errno.EIO:  # every slave closed: the shell is gone
                    return b""
                raise
        return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._closed:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:
                await self._ready(writing=True)

    async def resize(self, rows: int, cols: int) -> None:
        if not self._closed:
            set_window(self.master, rows, cols)

    async def wait(self) -> int:
        status = await asyncio.to_thread(self.proc.wait)
        return 128 - status if status < 0 else status

    async def close(self) -> None:
        # One close for every caller (the session's and the workspace's stop may race):
        # a second os.close of the number would close whoever reused it meanwhile.
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await _end_group(self.proc.pid, signal.SIGHUP, self.wait)
        loop = asyncio.get_running_loop()
        self._closed = True
        loop.remove_reader(self.master)
        loop.remove_writer(self.master)
        for fut in self._waiters:
            _wake(fut)
        os.close(self.master)

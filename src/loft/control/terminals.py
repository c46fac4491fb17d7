"""Terminal sessions: a shell on a PTY in a workspace (``NodeClient.terminal``), carried
over a WebSocket, that outlives its WebSocket for a grace period so a client that lost
its connection gets the same shell back.

A session has at most one attached WebSocket; a newer one takes it over. While none is
attached, what the shell writes is kept (the newest :data:`BACKLOG` bytes) and sent on
the next attach. A session no one re-attaches within its grace is hung up. The shell's
end is sent as ``{"type": "exit", "code"}`` to the attached client (or kept for the
next attach within the grace), and ends the session.

The wire protocol is :mod:`loft.control.routes.terminal`'s; this module knows only that
a client receives bytes and JSON messages (:class:`Attachment`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loft.control.activity import Activity
from loft.control.metrics import Metrics
from loft.control.nodeclient import Terminal

__all__ = ["BACKLOG", "DEFAULT_GRACE", "Attachment", "TerminalSession", "TerminalSessions"]

log = logging.getLogger("loft.control.terminals")

#: Bytes of output kept while no client is attached.
BACKLOG = 64 * 1024
#: Seconds a detached session waits for its client to come back.
DEFAULT_GRACE = 60.0


@dataclass
class Attachment:
    """A client's side of a session: how to send it output, a message, and close it."""

    send_bytes: Callable[[bytes], Awaitable[None]]
    send_json: Callable[[dict[str, Any]], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]


@dataclass
class TerminalSession:
    """One shell, and who may attach to it."""

    id: str
    workspace: str
    user: int
    term: Terminal
    attached: Attachment | None = None
    backlog: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    expiry: asyncio.TimerHandle | None = None
    pump: asyncio.Task[None] | None = None


class TerminalSessions:
    """The terminal sessions of one control plane (the event loop's only)."""

    def __init__(self, activity: Activity, metrics: Metrics, grace: float = DEFAULT_GRACE):
        self.activity = activity
        self.metrics = metrics
        self.grace = grace
        self._sessions: dict[str, TerminalSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _background(self, call: Awaitable[None]) -> None:
        task = asyncio.ensure_future(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def open(self, workspace: str, user: int, term: Terminal) -> TerminalSession:
        """A new session around ``term`` (not attached yet)."""
        sess = TerminalSession(secrets.token_urlsafe(16), workspace, user, term)
        self._sessions[sess.id] = sess
        sess.pump = asyncio.ensure_future(self._pump(sess))
        self.metrics.terminals.set(len(self._sessions))
        return sess

    def find(self, id: str, workspace: str, user: int) -> TerminalSession | None:
        """The session ``id`` of ``user`` in ``workspace`` (None: no such, or not theirs)."""
        sess = self._sessions.get(id)
        if sess is None or sess.workspace != workspace or sess.user != user:
            return None
        return sess

    async def attach(self, sess: TerminalSession, client: Attachment) -> None:
        """Make ``client`` the session's (a previous one is closed), send it what it
        missed, and the exit if the shell ended meanwhile."""
        if sess.expiry is not None:
            sess.expiry.cancel()
            sess.expiry = None
        old, sess.attached = sess.attached, client
        if old is not None:
            with contextlib.suppress(Exception):  # it may be gone already
                await old.close(4001, "taken over by a newer connection")
        await client.send_json({"type": "session", "id": sess.id, "grace": self.grace})
        if sess.backlog:
            missed, sess.backlog = bytes(sess.backlog), bytearray()
            await client.send_bytes(missed)
        if sess.exit_code is not None:
            await self._send_exit(sess)

    def detach(self, sess: TerminalSession, client: Attachment) -> None:
        """``client`` went away: keep the shell for the grace period."""
        if sess.attached is not client:
            return
        sess.attached = None
        if sess.id in self._sessions:
            loop = asyncio.get_running_loop()
            sess.expiry = loop.call_later(self.grace, self._expire, sess)

    async def input(self, sess: TerminalSession, data: bytes) -> None:
        """The client typed ``data``."""
        self.activity.touch(sess.workspace)
        await sess.term.write(data)

    def warn(self, workspace: str, stop_in: float) -> None:
        """Tell every client attached to ``workspace`` that it sleeps in ``stop_in`` s."""
        for sess in list(self._sessions.values()):
            if sess.workspace == workspace and sess.attached is not None:
                message = {"type": "idle", "stop_in": round(stop_in, 1)}
                self._background(_quietly(sess.attached.send_json(message)))

    async def close_all(self) -> None:
        """Hang up every session (the control plane stops)."""
        for sess in list(self._sessions.values()):
            await self._end(sess)

    # --- inside --------------------------------------------------------------------------

    async def _pump(self, sess: TerminalSession) -> None:
        try:
            while data := await sess.term.read():
                self.activity.touch(sess.workspace)
                client = sess.attached
                if client is not None:
                    try:
                        await client.send_bytes(data)
                        continue
                    except Exception:  # the client is gone; its receive loop detaches it
                        pass
                sess.backlog += data
                del sess.backlog[:-BACKLOG]
            sess.exit_code = await sess.term.wait()
        except Exception as e:  # the node broke off: the shell is gone for us
            log.warning("terminal.broken session=%s error=%s", sess.id, e)
            sess.exit_code = 255
        if sess.attached is not None:
            await self._send_exit(sess)
        elif sess.expiry is None:  # nobody attached yet: the first attach gets the exit
            loop = asyncio.get_running_loop()
            sess.expiry = loop.call_later(self.grace, self._expire, sess)

    async def _send_exit(self, sess: TerminalSession) -> None:
        client = sess.attached
        self._forget(sess)
        if client is not None:
            await _quietly(client.send_json({"type": "exit", "code": sess.exit_code}))
            await _quietly(client.close(1000, "the shell ended"))
        await _quietly(sess.term.close())

    def _expire(self, sess: TerminalSession) -> None:
        if sess.attached is None:
            self._background(self._end(sess))

    async def _end(self, sess: TerminalSession) -> None:
        self._forget(sess)
        if sess.pump is not None:
            sess.pump.cancel()
        await _quietly(sess.term.close())
        if sess.attached is not None:
            await _quietly(sess.attached.close(1001, "the terminal was closed"))

    def _forget(self, sess: TerminalSession) -> None:
        self._sessions.pop(sess.id, None)
        if sess.expiry is not None:
            sess.expiry.cancel()
        self.metrics.terminals.set(len(self._sessions))


async def _quietly(call: Awaitable[object]) -> None:
    """Await ``call``; a client or shell already gone is not an error here."""
    try:
        await call
    except Exception as e:  # the peer went away: nothing to tell anyone
        log.debug("terminal.quiet_failure error=%s", e)

"""Waking a sleeping workspace for a request, and waiting until its server listens.

A wake is authorized before it gets here (the preview proxy checks the caller first:
an anonymous request never wakes a private workspace). Then:

- a wake under way is joined, not repeated (one ``start`` per workspace at a time);
- a new wake is rate-limited per workspace and per client (:class:`WakeLimits`), so a
  client cannot keep a workspace from sleeping, nor start many;
- a stop for idleness under way is waited out first (:class:`~loft.control.activity.Activity`);
- once started, the port is tried until it accepts or the request's deadline passes:
  :class:`~loft.control.errors.WakeTimeout` (the proxy answers 504).

:meth:`Waker.connect` is the whole path: a connection to the port, waking as needed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from loft.control.deps import on_node
from loft.control.errors import Conflict, NotListening, TooManyRequests, WakeTimeout
from loft.control.ratelimit import Buckets
from loft.control.state import ControlState

__all__ = ["DEFAULT_WAKE_WAIT", "Upstream", "WakeLimits", "Waker"]

#: Seconds a request waits for a workspace to wake and its server to listen.
DEFAULT_WAKE_WAIT = 20.0
#: First and longest pause between two tries of a port that does not listen yet.
_POLL_FIRST, _POLL_MAX = 0.005, 0.1


@dataclass
class WakeLimits:
    """How often wakes may start: a burst, then one per ``every`` seconds, per
    workspace and per client (its principal, or its address when anonymous)."""

    burst: float = 3
    every: float = 10.0
    client_burst: float = 6
    client_every: float = 10.0
    per_workspace: Buckets = field(init=False)
    per_client: Buckets = field(init=False)

    def __post_init__(self) -> None:
        self.per_workspace = Buckets(self.burst, 1 / self.every)
        self.per_client = Buckets(self.client_burst, 1 / self.client_every)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A connection to a port in a workspace, and whether a wake was waited for."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    woke: bool


class Waker:
    """Wakes the workspaces of one control plane."""

    def __init__(
        self,
        state: ControlState,
        *,
        wait: float = DEFAULT_WAKE_WAIT,
        limits: WakeLimits | None = None,
    ) -> None:
        self.state = state
        self.wait = wait
        self.limits = limits or WakeLimits()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: when each workspace was last woken (a port that does not listen yet is
        #: waited for within ``wait`` of it)
        self._woken: dict[str, float] = {}

    async def connect(self, id: str, port: int, client: str) -> Upstream:
        """A connection to ``port`` of workspace ``id``, waking it first if it sleeps;
        :class:`WakeTimeout` past :attr:`wait` seconds, :class:`TooManyRequests` when a
        wake would go over a limit, :class:`NotListening` when it runs (and was not just
        woken) but nothing listens."""
        deadline = time.monotonic() + self.wait
        await self.state.activity.settled(id)
        try:
            reader, writer = await on_node(self.state, self.state.node.connect(id, port))
            return Upstream(reader, writer, False)
        except NotListening:
            if time.monotonic() - self._woken.get(id, -1e9) > self.wait:
                raise
        except Conflict:  # not running: wake it
            await self._wake(id, client)
        return await self._poll(id, port, deadline)

    async def _wake(self, id: str, client: str) -> None:
        task = self._inflight.get(id)
        if task is None:
            self._check_limits(id, client)
            task = asyncio.ensure_future(self._start(id))
            self._inflight[id] = task
            task.add_done_callback(lambda _: self._inflight.pop(id, None))
        await asyncio.shield(task)

    def _check_limits(self, id: str, client: str) -> None:
        now = time.monotonic()
        wait = max(
            self.limits.per_workspace.wait(id, now), self.limits.per_client.wait(client, now)
        )
        if wait > 0:
            self.state.metrics.wake_refusals.inc()
            raise TooManyRequests(
                "too many wakes of this workspace, or by this client",
                retry_after=wait,
                hint=f"try again in {wait:.0f} s, or raise the workspace's idle timeout",
            )
        self.limits.per_workspace.take(id, now)
        self.limits.per_client.take(client, now)

    async def _start(self, id: str) -> None:
        with self.state.metrics.operation("start"):
            await on_node(self.state, self.state.node.start(id))
        self._woken[id] = time.monotonic()
        self.state.metrics.wakes.inc()
        self.state.activity.touch(id)

    async def _poll(self, id: str, port: int, deadline: float) -> Upstream:
        pause = _POLL_FIRST
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WakeTimeout(
                    f"the workspace woke, but nothing listened on port {port} within "
                    f"{self.wait:g} s",
                    hint="is its [run] command a server on that port? `loft logs` shows it",
                )
            try:
                call = self.state.node.connect(id, port)
                reader, writer = await asyncio.wait_for(call, min(left, self.state.node_timeout))
                return Upstream(reader, writer, True)
            except (Conflict, TimeoutError):  # not listening yet (or not running yet)
                pass
            await asyncio.sleep(min(pause, max(left, 0)))
            pause = min(pause * 2, _POLL_MAX)

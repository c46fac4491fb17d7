"""The idle reaper: a running workspace unused for its ``idle_timeout`` is snapshotted
and stopped; its attached terminals are warned first.

Used means traffic or work in flight through the control plane (terminals, execs,
proxied requests: :mod:`loft.control.activity`) or through the node itself (forwards:
``NodeClient.activity``); the latest of the two counts. A workspace first seen running
by this control plane counts as used then, so a restart stops nothing at once. An
``idle_timeout`` of 0 is never.

The warning comes :func:`warn_before` seconds before the stop (a minute, or a quarter of
a shorter timeout), once per idle spell, as a ``{"type": "idle"}`` message on every
terminal attached to the workspace.

The stop: mark it stopping (refused while a request is in flight, which then waits and
wakes it), snapshot it as ``idle-<UTC time>`` (the newest :data:`KEEP_IDLE_SNAPSHOTS`
of those are kept), stop it, count it in ``loft_workspace_idle_stops``. A use that
arrives during the snapshot cancels the stop. A failure is logged and tried again on
a later sweep.

:class:`IdlePolicy` decides (pure, given the time); :class:`Reaper` is the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from loft.control.deps import in_thread, on_node
from loft.control.records import Record
from loft.control.state import ControlState
from loft.errors import LoftError

__all__ = [
    "ACTIVE_WINDOW",
    "DEFAULT_SWEEP",
    "IDLE_SNAPSHOT_PREFIX",
    "KEEP_IDLE_SNAPSHOTS",
    "IdlePolicy",
    "Reaper",
    "Stop",
    "Warn",
    "Warner",
    "warn_before",
]

log = logging.getLogger("loft.control.reaper")

#: Seconds between two sweeps (a stop comes at most this late).
DEFAULT_SWEEP = 5.0
#: Snapshots the reaper takes are named this, then the time.
IDLE_SNAPSHOT_PREFIX = "idle-"
#: How many of its own snapshots the reaper keeps per workspace (older ones go).
KEEP_IDLE_SNAPSHOTS = 3
#: Used in the last this many seconds: counted in ``loft_workspaces_active``.
ACTIVE_WINDOW = 60.0


def warn_before(timeout: float) -> float:
    """Seconds before an idle stop its terminals are warned."""
    return min(60.0, timeout / 4)


@dataclass(frozen=True, slots=True)
class Warn:
    """Tell the workspace's terminals it stops in ``stop_in`` seconds."""

    id: str
    stop_in: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Snapshot and stop the workspace, last used at ``last_use``."""

    id: str
    last_use: float


class IdlePolicy:
    """What to do at a sweep. Remembers whom it warned, to warn once per idle spell."""

    def __init__(self) -> None:
        self._warned: dict[str, float] = {}

    def plan(
        self, now: float, timeouts: Mapping[str, float], last_use: Mapping[str, float]
    ) -> list[Warn | Stop]:
        """Actions for the running workspaces (``timeouts`` by id, 0 being never) last
        used at ``last_use``."""
        out: list[Warn | Stop] = []
        for id, timeout in timeouts.items():
            if timeout <= 0:
                continue
            idle = now - last_use[id]
            if idle >= timeout:
                out.append(Stop(id, last_use[id]))
            elif idle >= timeout - warn_before(timeout) and self._warned.get(id) != last_use[id]:
                self._warned[id] = last_use[id]
                out.append(Warn(id, timeout - idle))
        self._warned = {k: v for k, v in self._warned.items() if k in timeouts}
        return out


#: Who hears the warnings: called with a workspace's id and the seconds left.
Warner = Callable[[str, float], None]


def _nobody(_id: str, _stop_in: float) -> None:
    pass


class Reaper:
    """The sweep loop of one control plane."""

    def __init__(
        self, state: ControlState, warner: Warner | None = None, *, every: float = DEFAULT_SWEEP
    ) -> None:
        self.state = state
        self.warner = warner or _nobody
        self.every = every
        self.policy = IdlePolicy()

    async def run(self) -> None:
        """Sweep every :attr:`every` seconds, until cancelled."""
        while True:
            try:
                await self.sweep()
            except LoftError as e:  # the node or catalog is away: the next sweep retries
                log.warning("reaper.sweep_failed error=%s", e)
            await asyncio.sleep(self.every)

    async def sweep(self) -> None:
        """Look at every running workspace once; warn and stop as the policy says."""
        state = self.state
        records = {r.id: r for r in await in_thread(state.records.list, None)}
        if not records:
            return
        states = await on_node(state, state.node.states(list(records)))
        running = [i for i, rs in states.items() if rs.state == "running" and i in records]
        node_use = await on_node(state, state.node.activity(running)) if running else {}
        now = state.activity.clock()
        last_use = {}
        for i in running:
            seen = max(state.activity.first_seen(i), node_use.get(i, 0.0))
            last_use[i] = now if state.activity.is_busy(i) else seen
        state.metrics.active_workspaces.set(
            sum(1 for t in last_use.values() if now - t < ACTIVE_WINDOW)
        )
        timeouts = {i: records[i].idle_timeout for i in running}
        for action in self.policy.plan(now, timeouts, last_use):
            if isinstance(action, Warn):
                self.warner(action.id, action.stop_in)
            else:
                await self._stop(records[action.id], action.last_use)

    async def _stop(self, rec: Record, last_use: float) -> None:
        state = self.state
        if not state.activity.begin_stop(rec.id):
            return
        try:
            name = IDLE_SNAPSHOT_PREFIX + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            try:
                with state.metrics.operation("snapshot"):
                    # disk only: the stop that follows keeps a VM's memory (a suspend)
                    await on_node(state, state.node.snapshot(rec.id, name, memory=False))
            except LoftError as e:  # the stop commits the disk anyway; say so and go on
                log.warning("reaper.snapshot_failed workspace=%s error=%s", rec.id, e)
            if (state.activity.last(rec.id) or 0.0) > last_use:
                log.info("reaper.stop_cancelled workspace=%s reason=used", rec.id)
                return
            with state.metrics.operation("stop"):
                await on_node(state, state.node.stop(rec.id))
            state.metrics.idle_stops.inc()
            log.info("reaper.stopped workspace=%s idle_timeout=%g", rec.id, rec.idle_timeout)
        except LoftError as e:
            log.warning("reaper.stop_failed workspace=%s error=%s", rec.id, e)
        else:
            try:
                await self._prune(rec.id)
            except LoftError as e:  # what could not go now, the next prune tries again
                log.info("reaper.prune_failed workspace=%s error=%s", rec.id, e)
        finally:
            state.activity.end_stop(rec.id)

    async def _prune(self, id: str) -> None:
        snaps = await on_node(self.state, self.state.node.snapshots(id))
        mine = sorted(
            (s for s in snaps if s.name.startswith(IDLE_SNAPSHOT_PREFIX)),
            key=lambda s: s.created_at,
        )
        for snap in mine[:-KEEP_IDLE_SNAPSHOTS]:
            await on_node(self.state, self.state.node.delete_snapshot(id, snap.name))

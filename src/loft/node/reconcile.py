"""Keeping what runs on this node equal to what should run.

The agent's state is the catalog (records and runtime state) and what the system shows
(runc's containers, attachments' records checked against mounts, loop devices and
nbdfuse); the agent's memory is only a cache of it. So a restarted agent, after a crash
or an upgrade, loses nothing:

- :meth:`Reconciler.adopt` (at start, before the API serves): a workspace whose
  container runs *and* whose attachment is whole (a VM: whose QEMU runs; it has no
  attachment) is taken over as it is (a filesystem an
  agent killed mid-snapshot left frozen is thawed); anything less is cleaned up — the
  container stopped, the attachment torn down (never half-mounted, never a mount without
  its nbdfuse) — and the workspace marked stopped. Containers and attachments with no
  workspace record are removed. A ``new`` that died half way is finished off (its undo
  steps never ran) once the disk service answers.
- :meth:`Reconciler.run`, every :data:`INTERVAL`: a workspace that should run
  (``desired = running``) and is not healthy is stopped cleanly (sandbox, then detach)
  and started again once the disk service answers — from its last flush, since nbdfuse
  does not reconnect and a restarted disk service recovers the volume's working copy.
  That covers the disk service dying (its process, recorded as the volume's lease holder
  at attach time, is provably dead), nbdfuse dying, a container whose init died, and
  workspaces a drain or a crash stopped. Failed restarts back off (1 s doubling to 60 s).

A flow in progress on a workspace (its lock held) is never interfered with: the loop
skips it and looks again next time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass

from loft.errors import LoftError
from loft.node.records import Desired, Phase, Workspace
from loft.node.workspaces import Workspaces
from loft.runtime.attach import attached_workspaces

__all__ = ["INTERVAL", "Reconciler"]

log = logging.getLogger("loft.node")

#: Seconds between two looks at every workspace (how soon a dead disk service is noticed).
INTERVAL = 0.5
_FIRST_BACKOFF = 1.0
_MAX_BACKOFF = 60.0


@dataclass
class _Backoff:
    due: float = 0.0
    delay: float = _FIRST_BACKOFF


class Reconciler:
    """The agent's control loop over this node's workspaces."""

    def __init__(self, wss: Workspaces) -> None:
        self.wss = wss
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._unfinished: set[str] = set()
        self._backoff: dict[str, _Backoff] = {}
        self._thread = threading.Thread(target=self._run, name="loft-reconcile", daemon=True)

    # -- at start -----------------------------------------------------------------------

    def adopt(self) -> list[str]:
        """Take over what still runs (see the module docstring); the ids adopted."""
        wss = self.wss
        running = {s.id for s in wss.runtime.adopt()}
        attached = set(attached_workspaces(wss.data_dir))
        adopted, known = [], set()
        for ws in wss.records.on_node(wss.node):
            wid = ws.record.id
            known.add(wid)
            if ws.state.phase is Phase.CREATING:
                self._unfinished.add(wid)
                continue
            att = wss.adopt_attachment(wid) if wid in attached else None
            vm = ws.record.runtime == "vm"  # no attachment: its disk is QEMU's own
            if wid in running and (att is not None or vm):
                if vm:  # an agent killed mid-snapshot left its vCPUs stopped
                    with contextlib.suppress(LoftError):
                        wss.runtime.thaw(wid)
                with contextlib.suppress(LoftError, OSError):  # EINVAL: it was not frozen
                    wss.runtime.thaw_filesystem(wid)
                wss.records.set_state(wid, phase=Phase.RUNNING)
                adopted.append(wid)
                continue
            if wid in running:
                wss.runtime.stop(wid, grace=0)
            if att is not None:
                wss.detach_volume(wid)
            wss.records.set_state(wid, phase=Phase.STOPPED, attachment=None)
        for orphan in sorted((running | attached) - known):
            log.warning("workspace.orphan id=%s action=remove", orphan)
            if orphan in running:
                wss.runtime.stop(orphan, grace=0)
            if orphan in attached and wss.adopt_attachment(orphan) is not None:
                wss.detach_volume(orphan)
        log.info("agent.adopted workspaces=%d", len(adopted))
        return adopted

    # -- the loop -------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a thread of its own."""
        self._thread.start()

    def stop(self) -> None:
        """End the loop (what runs keeps running)."""
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                self.pass_once()
            except Exception:  # the loop must outlive any one failure; it is logged
                log.exception("reconcile.failed")

    def pass_once(self) -> None:
        """Look at every workspace of this node once."""
        disk_alive = self.wss.disk.alive()
        for ws in self.wss.records.on_node(self.wss.node):
            with self.wss.locked(ws.record.id, wait=False) as got:
                if got:
                    self._look(ws, disk_alive)

    def _look(self, ws: Workspace, disk_alive: bool) -> None:
        wss, wid = self.wss, ws.record.id
        ws = wss.records.by_id(wid) or ws
        if wid in self._unfinished:
            if disk_alive:
                self._unfinished.discard(wid)
                wss.discard(ws)
            return
        if ws.state.desired is not Desired.RUNNING:
            return
        if ws.state.phase is Phase.RUNNING and wss.healthy(ws):
            return
        if ws.state.phase in (Phase.RUNNING, Phase.STARTING, Phase.STOPPING):
            log.warning("workspace.unhealthy id=%s action=stop", wid)
            wss.records.set_state(wid, phase=Phase.RECOVERING)
            wss.halt(ws.record, grace=0, commit=False)
            wss.records.set_state(wid, phase=Phase.RECOVERING)
        if self._draining.is_set() or not disk_alive:
            return
        backoff = self._backoff.setdefault(wid, _Backoff())
        if time.monotonic() < backoff.due:
            return
        try:
            wss.launch(ws.record, ws.state.phase, on_failure=Desired.RUNNING)
        except LoftError as e:
            backoff.due = time.monotonic() + backoff.delay
            log.warning(
                "workspace.restart_failed id=%s error=%s retry_in=%.0f",
                wid,
                json.dumps(e.message),
                backoff.delay,
            )
            backoff.delay = min(backoff.delay * 2, _MAX_BACKOFF)
            wss.records.set_state(wid, phase=Phase.STOPPED)
        else:
            self._backoff.pop(wid, None)
            log.info("workspace.restarted id=%s", wid)

    # -- drain ------------------------------------------------------------------------------

    def drain(self) -> list[str]:
        """Stop every running workspace cleanly, keeping ``desired = running`` (they
        start again with the next agent); no restarts until this agent exits."""
        self._draining.set()
        stopped = []
        for ws in self.wss.records.on_node(self.wss.node):
            with self.wss.locked(ws.record.id):
                ws = self.wss.records.by_id(ws.record.id) or ws
                if ws.state.phase is not Phase.STOPPED or self.wss.running(ws.record.id):
                    self.wss.halt(ws.record)
                    stopped.append(ws.record.name)
        log.info("agent.drained workspaces=%d", len(stopped))
        return stopped

"""The node agent's side of the disk service: volume operations that must go through the
process serving the volume (it owns the working copy and the lease), and straight to the
blockstore when no process serves it.

The agent never opens a workspace volume itself: the disk service is its own process,
and whichever of the two restarts, the other keeps its state. A volume the *local*
service serves is committed, snapshotted, restored and removed over ``control.sock``; a
volume nobody serves, directly; a volume another process holds is refused
(``VolumeBusy``), as ``loft volume`` refuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from loft.blockstore import Blockstore, VolumeBusy, VolumeNotFound
from loft.node import api
from loft.node.client import ControlError, call

__all__ = ["DiskClient"]

A = TypeVar("A")
#: How long a restore or removal waits for the service to see an attachment's NBD
#: connection go (nbdfuse has exited, the server may take a moment to notice).
_BUSY_WAIT = 5.0


class DiskClient:
    """Volume operations for the agent, over the local disk service's control socket."""

    def __init__(self, bs: Blockstore, control: Path) -> None:
        self.bs = bs
        self.control = control

    def alive(self) -> bool:
        """Whether the local disk service answers."""
        try:
            call(str(self.control), api.PingRequest(), api.PingAnswer, timeout=5)
        except ControlError:
            return False
        return True

    def wait_alive(self, timeout: float) -> bool:
        """Wait until the local disk service answers (False after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while not self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _served_here(self, volume: str) -> bool:
        served = self.bs.served_at(volume)
        if served is None:
            return False
        if Path(served) != self.control:
            raise VolumeBusy(f"volume {volume!r} is served by another disk service ({served})")
        return True

    def _call(self, req: object, answer: type[A]) -> A:
        return _retry_busy(lambda: call(str(self.control), req, answer))

    def stats(self) -> api.StatsAnswer:
        """What the disk service counted of its NBD requests and chunk store operations."""
        return call(str(self.control), api.StatsRequest(), api.StatsAnswer)

    def commit_lag(self, volume: str) -> float | None:
        """Seconds the volume's oldest flushed, uncommitted write has waited (None when
        this disk service does not serve it)."""
        if not self._served_here(volume):
            return None
        return call(str(self.control), api.InfoRequest(volume), api.InfoAnswer).commit_lag_s

    def commit(self, volume: str) -> None:
        """Commit what the volume's writers flushed (nothing to do when not served)."""
        if self._served_here(volume):
            self._call(api.CommitRequest(volume), api.CommitAnswer)

    def snapshot(self, volume: str, name: str) -> int:
        """Commit and record snapshot ``name``; its head version."""
        if self._served_here(volume):
            return self._call(api.SnapshotRequest(volume, name), api.SnapshotAnswer).version
        return self.bs.snapshot(volume, name).version

    def restore(self, volume: str, snapshot: str) -> tuple[int, str]:
        """Point the volume back at ``snapshot`` (no client may use it); the new head
        version and the automatic snapshot that undoes it."""
        if self._served_here(volume):
            ans = self._call(api.RestoreRequest(volume, snapshot), api.RestoreAnswer)
            return ans.version, ans.undo_snapshot
        rec, undo = self.bs.restore(volume, snapshot)
        return rec.version, undo

    def remove_snapshot(self, volume: str, snapshot: str) -> None:
        """Delete the volume's snapshot ``snapshot`` (:class:`SnapshotNotFound` if it has
        none). Only a catalog row goes, so the blockstore does it even while the service
        serves the volume, as ``loft volume rm NAME@SNAP`` does: the served head does not
        read the snapshot, and forks made from it keep their own roots."""
        self.bs.remove_snapshot(volume, snapshot)

    def remove(self, volume: str) -> None:
        """Delete the volume and its snapshots (gone already is fine)."""
        try:
            if self._served_here(volume):
                self._call(api.RemoveRequest(volume), api.RemoveAnswer)
            else:
                self.bs.remove(volume)
        except VolumeNotFound:
            pass


def _retry_busy(fn: Callable[[], A]) -> A:
    """``fn()``, again for a few seconds while the service says a client still uses the
    volume (the attachment's connection, closing)."""
    deadline = time.monotonic() + _BUSY_WAIT
    while True:
        try:
            return fn()
        except ControlError as e:
            if "client(s) connected" not in e.message or time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""Snapshots of workspaces, running or not; restores and forks built on them.

**Snapshot of a running workspace**, a short pause and consistent on disk::

    syncfs(root)                 write back the bulk of dirty pages, writers still run
    commit (disk service)        upload the bulk of dirty extents, writers still run
    --- pause: writers held ------------------------------------------------------------
    freeze_filesystem            syncfs + FIFREEZE: the kernel writes back the rest,
                                 checkpoints the journal, flushes (NBD FLUSH)
    snapshot (disk service)      commit what is left since the commit above, record it
    thaw_filesystem              FITHAW, always
    -----------------------------------------------------------------------------------

Only the filesystem is frozen, not the processes (the cgroup freezer): the disk is a
sandbox's whole state, FIFREEZE makes it consistent, and a process that does not write
(a compiler reading, a shell waiting) goes on through the pause. The two steps before the
pause are what keeps it short: what the pause commits is only what was written since
them, not what was dirty when the snapshot was asked for. (Pausing only for the commit's
*capture* and uploading after the thaw would make it shorter still; the blockstore's
commit does not offer that split to the disk service's API yet.)

Each snapshot is also recorded with the environment the workspace had
(``workspace_snapshots``): a restore brings it back, a fork starts from it, and
``loft env gc`` keeps it.

**Restore** stops a running workspace, has the disk service point the volume back at the
snapshot (the replaced state becomes an automatic snapshot, recorded with the
environment it ran, so restoring *that* undoes the restore), makes the snapshot's
environment current (a new generation), and starts the workspace again.

**Fork** of a running workspace snapshots it on the fly (``fork-<time>``), then creates a
new workspace from that snapshot: a volume forked in constant time, its own id range,
profile and container, the same spec and limits. The two share nothing writable.

**Removal** of one snapshot deletes, in this order, a VM's memory image (refused, with
nothing deleted, while another image or a VM still maps it), the volume's snapshot (a
catalog row: forks made from it keep their own roots) and the snapshot's row, whose
environment is then no longer a GC root for it. A removal cut short is finished by the
next one: the image goes quietly when already gone, and a row whose volume snapshot
went is dropped on the way to "no such snapshot".

**VMs** (``vm`` workspaces): a snapshot of a running VM holds its memory too. Its
pause is the vCPUs stopped while the memory image is written (device state and a sparse
copy of the RAM file) and the disk service snapshots the volume, which is then at the
very point of the memory (QEMU flushes every completed write to the NBD server when the
vCPUs stop). The image's record is kept in the snapshot's row. A restore of such a
snapshot brings the VM back running from that memory; a **live fork** (``live``)
starts the new workspace from it on a fork of the volume (:meth:`VmRuntime.restore`
with ``fork``): both go on from the same processes, then diverge. A fork that is not
live freezes the guest's filesystem instead (as a sandbox's) and boots the copy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from loft.blockstore.errors import SnapshotNotFound
from loft.blockstore.names import check_name
from loft.errors import LoftError
from loft.libc import syncfs_path
from loft.node.records import Desired, Workspace
from loft.node.workspace_request import BadRequest
from loft.node.workspaces import Workspaces
from loft.runtime.errors import ImageInUse
from loft.runtime.interface import RuntimeSnapshot
from loft.runtime.vm_image import FORMAT as VM_IMAGE_FORMAT

__all__ = [
    "NoSuchSnapshot",
    "Snap",
    "SnapshotInUse",
    "SnapshotInfo",
    "SnapshotTaken",
    "fork",
    "remove",
    "restore",
    "snap",
    "snapshots",
]

log = logging.getLogger("loft.node")


class NoSuchSnapshot(LoftError):
    """The workspace has no snapshot of that name."""


class SnapshotTaken(LoftError):
    """The workspace has a snapshot of that name already."""


class SnapshotInUse(LoftError):
    """The snapshot's memory image is mapped by a VM or another image."""


def _exists(wss: Workspaces, ws: Workspace, snapshot: str) -> bool:
    try:
        wss.bs.heads.get_snapshot(wss.bs.get(ws.record.volume), check_name(snapshot, "snapshot"))
    except SnapshotNotFound:
        return False
    return True


def _known(wss: Workspaces, ws: Workspace, snapshot: str) -> str:
    if not _exists(wss, ws, snapshot):
        name = ws.record.name
        raise NoSuchSnapshot(
            f"workspace {name!r} has no snapshot named {snapshot!r}",
            hint=f"`loft snaps {name}` lists them",
        )
    return snapshot


@dataclass(frozen=True)
class Snap:
    """A snapshot taken: its name, head version, whether the workspace ran, how long its
    writers were held and how long the whole snapshot took (ms)."""

    name: str
    version: int
    running: bool
    pause_ms: float
    total_ms: float


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a workspace's volume and the environment it was taken with."""

    name: str
    version: int
    created_at: float
    auto: bool
    env_path: str | None


def _auto_name(wss: Workspaces, ws: Workspace, prefix: str = "") -> str:
    """A name for a snapshot nobody named (lock held): the time, with ``-2``, ``-3``...
    when the workspace already has one from the same second."""
    base = prefix + time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name, n = base, 1
    while _exists(wss, ws, name):
        n += 1
        name = f"{base}-{n}"
    return name


def snap(wss: Workspaces, workspace_id: str, snapshot: str = "", *, memory: bool = True) -> Snap:
    """Snapshot a workspace (a running one with a short pause, see above; a running
    VM's with its memory, unless not ``memory``)."""
    ws = wss.get(workspace_id)
    with wss.locked(ws.record.id):
        ws = wss.fresh(ws)
        return _snap(wss, ws, snapshot or _auto_name(wss, ws), memory=memory)


def _snap(wss: Workspaces, ws: Workspace, snapshot: str, *, memory: bool = True) -> Snap:
    check_name(snapshot, "snapshot", new=True)
    if _exists(wss, ws, snapshot):  # said before anything pauses
        raise SnapshotTaken(
            f"workspace {ws.record.name!r} has a snapshot named {snapshot!r}",
            hint="pick another name",
        )
    rec = ws.record
    gen = wss.envs.current(rec.profile)
    started = time.monotonic()
    att = wss.attachment(rec.id)
    pause = 0.0
    image: bytes | None = None
    if rec.runtime == "vm" and wss.running(rec.id):
        wss.disk.commit(rec.volume)  # the bulk, while the guest runs
        frozen = time.monotonic()
        version, image = _snap_vm(wss, ws, snapshot, memory)
        pause = time.monotonic() - frozen
        running = True
    elif att is not None and wss.running(rec.id):
        syncfs_path(att.root)
        wss.disk.commit(rec.volume)
        frozen = time.monotonic()
        wss.runtime.freeze_filesystem(rec.id)
        try:
            version = wss.disk.snapshot(rec.volume, snapshot)
        finally:
            wss.runtime.thaw_filesystem(rec.id)
            pause = time.monotonic() - frozen
        running = True
    else:
        version = wss.disk.snapshot(rec.volume, snapshot)
        running = False
    if gen is not None:
        wss.records.add_snapshot(rec.id, snapshot, gen.env_path, image)
    total = time.monotonic() - started
    log.info(
        "workspace.snapshot id=%s snapshot=%s running=%s pause_ms=%.1f total_ms=%.1f",
        rec.id,
        snapshot,
        running,
        pause * 1000,
        total * 1000,
    )
    return Snap(snapshot, version, running, pause * 1000, total * 1000)


def _snap_vm(
    wss: Workspaces, ws: Workspace, snapshot: str, memory: bool
) -> tuple[int, bytes | None]:
    """Snapshot a running VM's volume, with ``memory`` at the same point (vCPUs
    stopped for both), else with its filesystem frozen; the version and the image's
    record."""
    rec = ws.record
    if not memory:
        wss.runtime.freeze_filesystem(rec.id)
        try:
            return wss.disk.snapshot(rec.volume, snapshot), None
        finally:
            wss.runtime.thaw_filesystem(rec.id)
    vm = wss.runtime.vm()
    vm.freeze(rec.id)
    try:
        image = vm.snapshot(rec.id)
        try:
            version = wss.disk.snapshot(rec.volume, snapshot)
        except BaseException:
            vm.remove_snapshot(image)
            raise
    finally:
        vm.thaw(rec.id)
    return version, image.state


def snapshots(wss: Workspaces, workspace_id: str) -> list[SnapshotInfo]:
    """The workspace's snapshots, oldest first, with their environments."""
    ws = wss.get(workspace_id)
    envs = wss.records.snapshot_envs(ws.record.id)
    return [
        SnapshotInfo(s.name, s.version, s.created_at, s.auto, envs.get(s.name))
        for s in wss.bs.snapshots(ws.record.volume)
    ]


def restore(wss: Workspaces, workspace_id: str, snapshot: str) -> tuple[str, int, bool]:
    """Restore a workspace to ``snapshot``: (undo snapshot, version, restarted)."""
    ws = wss.get(workspace_id)
    with wss.locked(ws.record.id):
        ws = wss.fresh(ws)
        rec = ws.record
        _known(wss, ws, snapshot)
        target_env = wss.records.snapshot_envs(rec.id).get(snapshot)
        image = wss.records.snapshot_memories(rec.id).get(snapshot)
        memory = None if image is None else RuntimeSnapshot("vm", VM_IMAGE_FORMAT, image)
        current = wss.envs.current(rec.profile)
        was_running = ws.state.desired is Desired.RUNNING and wss.running(rec.id)
        if was_running:
            wss.halt(rec, commit=False, cold=True)  # the restore commits first
        elif wss.suspended(rec):  # its memory no longer agrees with the disk
            wss.drop_suspend(rec)
        try:
            version, undo = wss.disk.restore(rec.volume, snapshot)
        except BaseException:
            if was_running:
                wss.launch(rec, ws.state.phase)
            raise
        if current is not None:
            wss.records.add_snapshot(rec.id, undo, current.env_path)
            if target_env is not None and target_env != current.env_path:
                wss.envs.switch(rec.profile, target_env)
        if was_running or memory is not None:  # a memory snapshot comes back running
            wss.launch(rec, ws.state.phase, memory=memory)
    log.info("workspace.restore id=%s snapshot=%s undo=%s", rec.id, snapshot, undo)
    return undo, version, was_running or memory is not None


def remove(wss: Workspaces, workspace_id: str, snapshot: str) -> None:
    """Delete one snapshot of a workspace (see above): its memory image, the volume's
    snapshot and its row; :class:`SnapshotInUse` while its image is mapped."""
    ws = wss.get(workspace_id)
    with wss.locked(ws.record.id):
        ws = wss.fresh(ws)
        rec = ws.record
        try:
            _known(wss, ws, snapshot)
        except NoSuchSnapshot:
            wss.records.remove_snapshot(rec.id, snapshot)  # what a cut-short removal left
            raise
        image = wss.records.snapshot_memories(rec.id).get(snapshot)
        if image is not None:
            vm = wss.runtime.vm()  # a node without one says what to install, deletes nothing
            try:
                vm.remove_snapshot(RuntimeSnapshot("vm", VM_IMAGE_FORMAT, image))
            except ImageInUse as e:
                raise SnapshotInUse(
                    f"snapshot {snapshot!r} of {rec.name!r} cannot go: {e.message}",
                    hint="stop that VM cold, or remove the snapshot of that image, first",
                ) from None
        wss.disk.remove_snapshot(rec.volume, snapshot)
        wss.records.remove_snapshot(rec.id, snapshot)
    log.info("workspace.snapshot_removed id=%s snapshot=%s", rec.id, snapshot)


def fork(
    wss: Workspaces,
    workspace_id: str,
    target_id: str,
    snapshot: str = "",
    start: bool = True,
    live: bool = False,
    new_machine_id: bool = False,
) -> Workspace:
    """Make ``target_id`` (a record the control plane wrote) from ``snapshot`` of
    workspace ``workspace_id`` (taken now when empty), with the environment that
    snapshot was taken with; ``live``: a running VM's copy, from its memory
    (``new_machine_id``: with a new ``/etc/machine-id``)."""
    if new_machine_id and not live:
        raise BadRequest("a new machine-id is for a live fork (a booted fork keeps the file)",
                         hint="add --live, or change /etc/machine-id in the fork")  # fmt: skip
    ws = wss.get(workspace_id)
    # The source's lock is held until the fork has its volume and maps the memory image:
    # a removal of the snapshot waits for it, and cannot pull either from under the fork.
    with wss.locked(ws.record.id):
        ws = wss.fresh(ws)
        rec = ws.record
        if live:
            _check_live(wss, ws, snapshot, start)
        if snapshot:
            _known(wss, ws, snapshot)
        else:  # taken now, with the memory for a live fork
            snapshot = _snap(wss, ws, _auto_name(wss, ws, "fork-"), memory=live).name
        memory = None
        if live:
            image = wss.records.snapshot_memories(rec.id).get(snapshot)
            if image is None:
                raise BadRequest(
                    f"snapshot {snapshot!r} of {rec.name!r} holds no memory",
                    hint="fork it without --live (it boots), or snapshot the VM while it runs",
                )
            memory = RuntimeSnapshot("vm", VM_IMAGE_FORMAT, image)
        env_path = wss.records.snapshot_envs(rec.id).get(snapshot)
        if env_path is None:
            gen = wss.envs.current(rec.profile)
            env_path = gen.env_path if gen is not None else None
        return wss.new(
            target_id,
            start=start,
            env_path=env_path,
            volume_from=f"{rec.volume}@{snapshot}",
            memory=memory,
            new_machine_id=new_machine_id,
        )


def _check_live(wss: Workspaces, ws: Workspace, snapshot: str, start: bool) -> None:
    name = ws.record.name
    if ws.record.runtime != "vm":
        raise BadRequest(
            f"--live forks a running VM; {name!r} is a {ws.record.runtime}",
            hint=f"fork it without --live: loft fork {name} NEW",
        )
    if not start:
        raise BadRequest("a live fork runs: --live and --stopped do not go together",
                         hint="leave out --stopped")  # fmt: skip
    if not snapshot and not wss.running(ws.record.id):
        raise BadRequest(
            f"workspace {name!r} is not running: a live fork copies a running VM",
            hint=f"start it first (loft start {name}), or fork it without --live",
        )

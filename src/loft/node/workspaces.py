"""Workspaces on this node: the flows that create, start, stop and remove them.

A workspace is a volume (a fork of the template of its size), an environment profile,
limits, a network and a runtime kind (``sandbox`` or ``vm``). Every flow is all or
nothing: each thing made is followed by the step that unmakes it (:mod:`loft.node.undo`),
so a failed ``new`` — a spec that does not lock, a missing runtime, an admission
refusal, a start that fails — leaves no catalog row, profile, volume, mount, cgroup or
container.

Start, in order: admission (memory, CPU, disk; the commitment is recorded as
``desired = running`` under the admission lock), the environment's closure, the
attachment (nbdfuse + loop + ext4 ``nosuid,nodev``, ``workspaces/<id>`` passable only by
the workspace's mapped root group), the sandbox. Stop, in reverse: the sandbox, the
attachment, then a commit of the volume by the disk service (so a stopped workspace's
data is in the chunk store). One flow at a time per workspace (its lock); a flow that
finds the workspace in the wrong phase says so.

A ``vm`` workspace has no attachment: the host never mounts its volume (the tenant
writes it raw); QEMU is the NBD client of the disk service's ``nbd.sock``, the volume
its export. Its stop is a suspend unless asked ``cold``: the memory is kept beside the
VM and uploaded to the chunk store before the stop returns (only what changed since
the last upload), so a start resumes where it was, here or on a node that has only the
chunk store; a start from a memory snapshot is a restore (or a live fork) instead of a
boot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from loft.blockstore import Blockstore
from loft.blockstore.holder import provably_dead
from loft.errors import LoftError
from loft.node.admission import Admission
from loft.node.disk_client import DiskClient
from loft.node.endpoints import Network as DenyNetwork
from loft.node.environments import Environments, SpecInput
from loft.node.records import (
    Desired,
    Phase,
    Records,
    Workspace,
    WorkspaceRecord,
)
from loft.node.runcommand import RunCommands
from loft.node.runtimes import Runtimes
from loft.node.undo import all_or_nothing
from loft.node.workspace_request import BadRequest
from loft.procfs import proc_stat
from loft.runtime import vm_store
from loft.runtime.attach import Attachment, adopt, attach, detach
from loft.runtime.errors import PhaseError, UnknownWorkspace, WorkspaceError
from loft.runtime.interface import RuntimeSnapshot
from loft.runtime.phase import Phase as RuntimePhase
from loft.runtime.spec import EnvironmentView, Limits, WorkspaceSpec
from loft.runtime.template import create_workspace_volume
from loft.runtime.vm import VmRuntime
from loft.runtime.vm_image import FORMAT as VM_IMAGE_FORMAT
from loft.runtime.vm_qemu import MIN_MEMORY as VM_MIN_MEMORY
from loft.units import format_size

__all__ = ["Workspaces"]

log = logging.getLogger("loft.node")

#: Seconds a stopping workspace's processes get after SIGTERM before SIGKILL.
STOP_GRACE = 5.0


class Workspaces:
    """The node's workspaces: records in the catalog, volumes in the disk service,
    environments in the store, computers in the runtime."""

    def __init__(
        self,
        *,
        node: str,
        data_dir: Path,
        bs: Blockstore,
        disk: DiskClient,
        envs: Environments,
        records: Records,
        runtime: Runtimes,
        admission: Admission,
        deny: tuple[DenyNetwork, ...] = (),
    ) -> None:
        self.node = node
        self.data_dir = data_dir
        self.bs = bs
        self.disk = disk
        self.envs = envs
        self.records = records
        self.runtime = runtime
        self.admission = admission
        self.deny = deny
        self.attach_socket = disk.control.with_name("attach.sock")
        self.runs = RunCommands(runtime, data_dir / "run-logs")
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._table = threading.Lock()
        self._attachments: dict[str, Attachment] = {}

    # -- looking up -------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, workspace_id: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold the workspace's flow lock; with ``wait=False`` yields False at once
        when another flow holds it."""
        with self._table:
            lock = self._locks[workspace_id]
        got = lock.acquire(blocking=wait)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def get(self, workspace_id: str) -> Workspace:
        """The workspace with this id (the control plane calls nodes by id: names are
        per owner, and the control plane's business)."""
        ws = self.records.by_id(workspace_id)
        if ws is None:
            raise UnknownWorkspace(f"this node has no workspace {workspace_id!r}")
        return ws

    def fresh(self, ws: Workspace) -> Workspace:
        """``ws`` read again (its state may have changed while waiting for its lock)."""
        again = self.records.by_id(ws.record.id)
        if again is None:
            raise WorkspaceError(f"workspace {ws.record.name!r} was removed meanwhile")
        return again

    def attachment(self, workspace_id: str) -> Attachment | None:
        """The workspace's attachment, as this agent made or adopted it."""
        return self._attachments.get(workspace_id)

    def adopt_attachment(self, workspace_id: str) -> Attachment | None:
        """An attachment an earlier agent left, if it is whole (else it is torn down)."""
        att = adopt(self.data_dir, workspace_id)
        if att is not None:
            self._attachments[workspace_id] = att
        return att

    def check_runtime(self, rec: WorkspaceRecord) -> None:
        """Refuse when the programs of ``rec``'s runtime are missing, or its limits do
        not fit that runtime."""
        if rec.runtime == "vm":
            self.runtime.check("vm")
            if rec.limits.memory < VM_MIN_MEMORY:
                raise BadRequest(
                    f"memory {format_size(rec.limits.memory)} is too little for a VM: it "
                    f"needs at least {format_size(VM_MIN_MEMORY)}",
                    hint="ask for --memory 256M or more",
                )
            return
        for program in ("runc", "catatonit"):
            if shutil.which(program) is None:
                raise WorkspaceError(
                    f"the sandbox runtime is missing: {program} is not installed",
                    hint="run `make deps` (Debian: apt-get install runc catatonit)",
                )

    # -- new --------------------------------------------------------------------------

    def new(
        self,
        workspace_id: str,
        *,
        start: bool = True,
        env_path: str | None = None,
        volume_from: str | None = None,
        memory: RuntimeSnapshot | None = None,
        new_machine_id: bool = False,
    ) -> Workspace:
        """Make the workspace whose record the control plane wrote (and start it): all or
        nothing, and nothing of the record touched. ``env_path``: the environment
        already built (a fork's); ``volume_from``: ``VOLUME@SNAP`` to fork instead of
        the template (a fork's); ``memory``: a VM's memory snapshot to start from (a
        live fork's, taken with ``volume_from``; ``new_machine_id``: with a new
        ``/etc/machine-id``)."""
        rec = self.records.record(workspace_id)
        if rec is None:
            raise UnknownWorkspace(f"no workspace record {workspace_id!r}")
        if self.records.by_id(workspace_id) is not None:
            raise PhaseError(f"workspace {rec.name!r} exists on a node already")
        self.check_runtime(rec)
        if start:  # refuse early, before a build; checked again when it starts
            self.admission.check(rec.name, rec.limits, self._committed(None))
        made = False
        try:
            if env_path is None:
                env_path = self.envs.build(SpecInput(rec.spec, rec.spec_source))
            with all_or_nothing() as undo:
                self.records.add_state(rec.id, self.node)
                made = True
                undo.push("the runtime state", lambda: self.records.delete(rec.id))
                with self.locked(rec.id):
                    self.envs.switch(rec.profile, env_path)
                    undo.push("the profile", lambda: self.envs.forget(rec.profile))
                    if volume_from is None:
                        create_workspace_volume(self.bs, rec.volume, size=rec.size)
                    else:
                        self.bs.fork(volume_from, rec.volume)
                    undo.push("the volume", lambda: self.disk.remove(rec.volume))
                    if start:
                        self.launch(rec, Phase.CREATING, memory=memory, fork=True,
                                    new_machine_id=new_machine_id)  # fmt: skip
                    else:
                        self.records.set_state(rec.id, phase=Phase.STOPPED)
        except BaseException as e:
            if made:
                log.warning(
                    "workspace.new_failed name=%s id=%s error=%s",
                    rec.name,
                    rec.id,
                    json.dumps(str(e)),
                )
            raise
        finally:
            self.envs.settle()
        log.info("workspace.new name=%s id=%s volume=%s", rec.name, rec.id, rec.volume)
        return self.get(rec.id)

    # -- start and stop -----------------------------------------------------------------

    def start(self, workspace_id: str) -> Workspace:
        """Start a stopped workspace."""
        ws = self.get(workspace_id)
        with self.locked(ws.record.id):
            ws = self.fresh(ws)
            if self.running(ws.record.id):
                raise PhaseError(f"workspace {ws.record.name!r} is running already")
            self.launch(ws.record, ws.state.phase)
        return self.fresh(ws)

    def _committed(self, exclude: str | None) -> list[Limits]:
        return [
            w.record.limits
            for w in self.records.on_node(self.node)
            if w.state.desired is Desired.RUNNING and w.record.id != exclude
        ]

    def launch(
        self,
        rec: WorkspaceRecord,
        was: Phase,
        *,
        on_failure: Desired = Desired.STOPPED,
        memory: RuntimeSnapshot | None = None,
        fork: bool = False,
        new_machine_id: bool = False,
    ) -> None:
        """Admit, attach and run ``rec`` (lock held); on failure, undo to stopped, with
        ``desired`` set to ``on_failure`` (a start a user asked for that failed is not
        retried behind their back; a restart after a recovery is). A VM starts from
        ``memory`` when given (``fork``: another workspace's; ``new_machine_id``: its
        ``/etc/machine-id`` written afresh), else resumes from its suspend image when it
        has one, else boots."""
        with self.admission.lock:
            self.admission.check(rec.name, rec.limits, self._committed(rec.id))
            self.records.set_state(
                rec.id, phase=Phase.STARTING, desired=Desired.RUNNING, node=self.node
            )
        try:
            with all_or_nothing() as undo:
                undo.push(
                    "stopped state",
                    lambda: self.records.set_state(
                        rec.id,
                        phase=was if was is Phase.CREATING else Phase.STOPPED,
                        attachment=None,
                    ),
                )
                gen = self.envs.current(rec.profile)
                if gen is None:
                    raise WorkspaceError(
                        f"workspace {rec.name!r} has no environment",
                        hint="give it one: loft env switch NAME loft.toml",
                    )
                env = self.envs.view(gen.env_path)
                if rec.runtime == "vm":
                    resumed = self._launch_vm(rec, env, memory, fork, was, new_machine_id)
                    undo.push("the VM", lambda: self.runtime.stop(rec.id, grace=0))
                    self.records.set_state(rec.id, phase=Phase.RUNNING)
                    return self._started(rec, resumed)
                att = attach(
                    self.bs,
                    rec.volume,
                    rec.id,
                    socket=self.attach_socket,
                    traverse_gid=rec.ids.host,
                )
                self._attachments[rec.id] = att
                undo.push("the attachment", lambda: self.detach_volume(rec.id))
                self.records.set_state(rec.id, attachment=self._attachment_state(att))
                self.runtime.start(self._spec(rec, env, att.root))
                undo.push("the sandbox", lambda: self.runtime.stop(rec.id, grace=0))
                self.records.set_state(rec.id, phase=Phase.RUNNING)
        except BaseException:
            with self.admission.lock:
                self.records.set_state(rec.id, desired=on_failure)
            raise
        self._started(rec, False)

    def _spec(self, rec: WorkspaceRecord, env: EnvironmentView, rootfs: Path) -> WorkspaceSpec:
        """What the runtime starts for ``rec`` on ``env``, its filesystem at ``rootfs``."""
        return WorkspaceSpec(
            id=rec.id,
            rootfs=rootfs,
            env=env,
            ids=rec.ids,
            limits=rec.limits,
            network=rec.network,
            hostname=rec.name,
            deny=self.deny,
        )

    def _launch_vm(
        self,
        rec: WorkspaceRecord,
        env: EnvironmentView,
        memory: RuntimeSnapshot | None,
        fork: bool,
        was: Phase,
        new_machine_id: bool = False,
    ) -> bool:
        """Start ``rec``'s VM; True when its processes came back from memory (a resume,
        a restore or a live fork: its ``[run] command`` runs on already). With no
        suspend image on this node, one in the chunk store is resumed (cold) when the
        workspace was stopped cleanly (``was``), else it boots."""
        # a VM's volume is never mounted: its rootfs is not used
        spec = self._spec(rec, env, self.data_dir / "workspaces" / rec.id)
        vm = self.runtime.vm()
        if memory is not None:
            vm.restore(spec, memory, fork=fork, new_machine_id=new_machine_id)
            return True
        if vm.suspended(rec.id) and vm.suspend_disk_root(rec.id) not in (None, self._root(rec)):
            # the workspace ran elsewhere since this image was made: it is stale
            log.warning("workspace.suspend_stale id=%s", rec.id)
            self.runtime.stop(rec.id, grace=0)
        fetched = (
            was is Phase.STOPPED and not vm.suspended(rec.id) and self._fetch_suspend(rec, spec)
        )
        resumed = vm.suspended(rec.id)
        try:
            vm.start(spec)
        except LoftError as e:
            if not fetched:
                raise
            self._refused(rec, e)  # its stream did not load: boot from the disk instead
            self.runtime.stop(rec.id, grace=0)
            vm.start(spec)
            return False
        return resumed

    def _root(self, rec: WorkspaceRecord) -> str:
        """The root of ``rec``'s volume's committed manifest: what a suspend image of it
        must have been taken with."""
        return self.bs.get(rec.volume).root.hex()

    def _fetch_suspend(self, rec: WorkspaceRecord, spec: WorkspaceSpec) -> bool:
        """Bring ``rec``'s suspend image from the chunk store, if it has one there
        (whether it did); one that is damaged, another's or older than the disk is
        refused, and the VM boots from its disk."""
        try:
            fetched = self.runtime.vm().fetch_suspend(spec, self._root(rec))
        except LoftError as e:
            self._refused(rec, e)
            return False
        if fetched:
            log.info("workspace.suspend_fetched id=%s", rec.id)
        return fetched

    def _refused(self, rec: WorkspaceRecord, e: LoftError) -> None:
        """Say in the log and in the workspace's own log why its memory image from the
        chunk store was refused, and delete that image."""
        log.warning("workspace.suspend_refused id=%s error=%s", rec.id, json.dumps(e.message))
        self.runs.log_of(rec.id).append(
            f"--- loft: memory image refused ({e.message}): booted from the disk\n".encode()
        )
        with contextlib.suppress(LoftError):
            vm_store.remove(self.bs, rec.id)

    def _started(self, rec: WorkspaceRecord, from_memory: bool) -> None:
        log.info("workspace.started name=%s id=%s from_memory=%s", rec.name, rec.id, from_memory)
        if from_memory:  # its command runs on in the guest: follow it again
            self.runs.log_of(rec.id).append(b"--- loft: resumed from memory\n")
            try:
                self.runs.resume(rec.id, rec.spec)
            except (LoftError, OSError) as e:
                log.warning("workspace.run_not_followed id=%s error=%s", rec.id,
                            json.dumps(str(e)))  # fmt: skip
            return
        try:
            self.runs.start(rec.id, rec.spec)
        except (LoftError, OSError, ValueError) as e:  # it runs; its server did not start
            self.runs.log_of(rec.id).append(f"--- loft: not started: {e}\n".encode())
            log.warning("workspace.run_failed id=%s error=%s", rec.id, json.dumps(str(e)))

    def _attachment_state(self, att: Attachment) -> dict[str, object]:
        rec = self.bs.get(att.volume)
        return {
            "volume": att.volume,
            "device": att.device,
            "nbdfuse_pid": att.nbdfuse_pid,
            "nbdfuse_start": att.nbdfuse_start,
            "holder": rec.holder,
        }

    def stop(self, workspace_id: str, *, cold: bool = False) -> Workspace:
        """Stop a workspace (nothing to do when it is stopped); a VM is suspended unless
        ``cold`` (which also drops a stopped VM's suspend image)."""
        ws = self.get(workspace_id)
        with self.locked(ws.record.id):
            ws = self.fresh(ws)
            self.records.set_state(ws.record.id, desired=Desired.STOPPED)
            self.halt(ws.record, cold=cold)
        return self.fresh(ws)

    def suspended(self, rec: WorkspaceRecord) -> bool:
        """Whether ``rec`` is a VM with a suspend image, here or in the chunk store (a
        start resumes it)."""
        vm = self._vm() if rec.runtime == "vm" else None
        return vm is not None and (vm.suspended(rec.id) or vm.uploaded(rec.id))

    def drop_suspend(self, rec: WorkspaceRecord) -> None:
        """Discard ``rec``'s suspend image, here and in the chunk store (its memory no
        longer agrees with its disk)."""
        self.runtime.stop(rec.id, grace=0)
        if rec.runtime == "vm":
            vm_store.remove(self.bs, rec.id)

    def _vm(self) -> VmRuntime | None:
        """The VM runtime; None on a node without one (nothing of a VM runs here)."""
        try:
            return self.runtime.vm()
        except LoftError:
            return None

    def halt(
        self,
        rec: WorkspaceRecord,
        *,
        grace: float = STOP_GRACE,
        commit: bool = True,
        cold: bool = False,
    ) -> None:
        """Stop the sandbox (suspend the VM, unless ``cold``), detach the volume and
        (``commit``) have the disk service commit it; the phase ends ``stopped``
        (``desired`` is the caller's). Lock held."""
        self.records.set_state(rec.id, phase=Phase.STOPPING)
        vm = self._vm() if rec.runtime == "vm" else None
        ran = suspended = False
        if vm is not None and not cold and self.running(rec.id):
            ran, suspended = True, self._suspend(rec, grace)
        elif not (vm is not None and not cold and vm.suspended(rec.id)):
            self.runtime.stop(rec.id, grace=grace)  # (a suspended VM's image stays)
        self.detach_volume(rec.id)
        committed = False
        if commit:
            try:
                self.disk.commit(rec.volume)
                committed = True
            except LoftError as e:  # the data is safe on the node; the service retries
                log.warning("workspace.commit_failed id=%s error=%s", rec.id, json.dumps(e.message))
        if rec.runtime == "vm" and (ran or cold):
            self._upload_suspend(rec, vm if committed and suspended else None)
        self.records.set_state(rec.id, phase=Phase.STOPPED, attachment=None)
        log.info("workspace.stopped name=%s id=%s", rec.name, rec.id)

    def _upload_suspend(self, rec: WorkspaceRecord, vm: VmRuntime | None) -> None:
        """Put ``rec``'s suspend image into the chunk store (through ``vm``: suspended,
        its volume committed just now), else drop the one there: an image uploaded
        earlier no longer agrees with the disk. Before the phase says ``stopped``: only
        a workspace stopped cleanly is resumed from the chunk store."""
        try:
            if vm is not None:
                up = vm.upload_suspend(rec.id, self._root(rec))
                log.info(
                    "workspace.suspend_uploaded id=%s extents_written=%d extents_total=%d "
                    "stored_bytes=%d ms=%.0f",
                    rec.id,
                    up.extents_written,
                    up.extents_total,
                    up.stored_bytes,
                    up.seconds * 1000,
                )
                return
        except LoftError as e:  # the memory stays on this node; elsewhere it boots
            log.warning("workspace.upload_failed id=%s error=%s", rec.id, json.dumps(e.message))
        try:
            vm_store.remove(self.bs, rec.id)
        except LoftError as e:
            log.warning("workspace.upload_kept id=%s error=%s", rec.id, json.dumps(e.message))

    def _suspend(self, rec: WorkspaceRecord, grace: float) -> bool:
        """Suspend ``rec``'s VM (its disk writes are flushed to the disk service when
        its vCPUs stop); one that cannot be suspended is shut down instead, so a stop
        always stops. Whether it was suspended."""
        try:
            seconds = self.runtime.vm().suspend(rec.id)
        except LoftError as e:
            log.warning("workspace.suspend_failed id=%s error=%s", rec.id, json.dumps(e.message))
            self.runtime.stop(rec.id, grace=grace)
            return False
        log.info("workspace.suspended id=%s save_ms=%.1f", rec.id, seconds * 1000)
        return True

    def detach_volume(self, workspace_id: str) -> None:
        """Detach the workspace's volume, whatever made the attachment."""
        att = self._attachments.pop(workspace_id, None) or adopt(self.data_dir, workspace_id)
        if att is not None:
            detach(att)

    def running(self, workspace_id: str) -> bool:
        """Whether the workspace's sandbox runs (or is paused)."""
        phase = self.runtime.status(workspace_id).phase
        return phase in (RuntimePhase.RUNNING, RuntimePhase.PAUSED)

    def healthy(self, ws: Workspace) -> bool:
        """Running, on a whole attachment: nbdfuse alive as recorded, and the disk
        service process that served the volume when it was attached not provably dead
        (nbdfuse does not reconnect: a restarted service is a dead filesystem)."""
        if ws.record.runtime == "vm":  # no attachment: QEMU is the disk's NBD client
            return self.running(ws.record.id)
        att = self.attachment(ws.record.id)
        if att is None or not self.running(ws.record.id):
            return False
        stat = proc_stat(att.nbdfuse_pid)
        if stat is None or stat.start != att.nbdfuse_start or stat.exited:
            return False
        holder = (ws.state.attachment or {}).get("holder")
        return not (isinstance(holder, str) and provably_dead(holder))

    # -- remove -----------------------------------------------------------------------

    def remove(self, workspace_id: str) -> None:
        """Stop and delete a workspace: sandbox, attachment, volume (with its
        snapshots), profile, runtime state (the control plane then deletes the record)."""
        ws = self.get(workspace_id)
        with self.locked(ws.record.id):
            ws = self.fresh(ws)
            self.records.set_state(ws.record.id, desired=Desired.STOPPED)
            self.halt(ws.record, grace=0, commit=False, cold=True)
            self.drop_memory_images(ws.record)
            self.disk.remove(ws.record.volume)
            self.envs.forget(ws.record.profile)
            self.records.delete(ws.record.id)
            self.runs.forget(ws.record.id)
        log.info("workspace.removed name=%s id=%s", ws.record.name, ws.record.id)

    def discard(self, ws: Workspace) -> None:
        """Undo what a ``new`` that died half way (the agent was killed) left: the same
        as :meth:`remove`, by record."""
        with self.locked(ws.record.id):
            self.halt(ws.record, grace=0, commit=False, cold=True)
            self.drop_memory_images(ws.record)
            self.disk.remove(ws.record.volume)
            self.envs.forget(ws.record.profile)
            self.records.delete(ws.record.id)
            self.runs.forget(ws.record.id)
        log.info("workspace.discarded id=%s reason=unfinished_new", ws.record.id)

    def drop_memory_images(self, rec: WorkspaceRecord) -> None:
        """Delete the memory images of ``rec``'s snapshots (a VM's); one still in use (an
        image another maps, or a VM an older loft restored onto it) stays, with a
        warning."""
        for name, state in self.records.snapshot_memories(rec.id).items():
            try:
                self.runtime.vm().remove_snapshot(RuntimeSnapshot("vm", VM_IMAGE_FORMAT, state))
            except LoftError as e:
                log.warning(
                    "workspace.memory_image_kept id=%s snapshot=%s reason=%s",
                    rec.id,
                    name,
                    json.dumps(e.message),
                )

    # -- environment ------------------------------------------------------------------

    def switch_env(self, workspace_id: str, spec: SpecInput) -> tuple[int, str, bool]:
        """Build ``spec`` and make it the workspace's new environment generation (used
        from its next start): (generation, env path, running). The record's spec is the
        control plane's to update."""
        ws = self.get(workspace_id)
        try:
            env_path = self.envs.build(spec)
            with self.locked(ws.record.id):
                gen = self.envs.switch(ws.record.profile, env_path)
        finally:
            self.envs.settle()
        return gen.number, gen.env_path, self.running(ws.record.id)

    def rollback_env(self, workspace_id: str, to: int | None) -> tuple[int, str, bool]:
        """The previous (or ``to``) generation made current (used from the next start)."""
        ws = self.get(workspace_id)
        with self.locked(ws.record.id):
            gen = self.envs.rollback(ws.record.profile, to)
        return gen.number, gen.env_path, self.running(ws.record.id)

"""The node agent's API handlers: each workspace operation's typed request turned into a
flow (:mod:`loft.node.workspaces`, :mod:`loft.node.snapshots`) and its result into the
typed answer. Like the disk service's, they only translate; the flows run on worker
threads (they wait on runc, mounts, the catalog and the disk service), stream sessions
on the event loop.

Operations flagged ``needs_running`` are refused here, before anything starts, unless
the workspace runs (Firecracker's controller habit): the answer is a 409 that says to
start it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loft.blockstore import (
    InvalidArgument,
    SnapshotExists,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
    VolumeNotFound,
)
from loft.blockstore.reserve import reserve_bytes
from loft.envstore.lock import LockError
from loft.envstore.profiles import ProfileError
from loft.envstore.spec import SpecError
from loft.errors import LoftError
from loft.node import workspace_api as wapi
from loft.node.admission import NotAdmitted
from loft.node.apiserver import Session
from loft.node.environments import spec_input
from loft.node.jsoncodec import CodecError
from loft.node.operation import Operation
from loft.node.reconcile import Reconciler
from loft.node.records import BadName, Desired, NameTaken, Phase, Workspace
from loft.node.runcommand import KEEP
from loft.node.sessions import (
    ConnectSession,
    ExecSession,
    ForwardSession,
    LogsSession,
    Usage,
    tracked,
)
from loft.node.snapshots import (
    NoSuchSnapshot,
    SnapshotInUse,
    SnapshotTaken,
    fork,
    remove,
    restore,
    snap,
    snapshots,
)
from loft.node.workspace_request import BadRequest
from loft.node.workspaces import Workspaces
from loft.runtime.errors import PhaseError, UnknownWorkspace
from loft.runtime.forward import loopback_listener, unix_listener
from loft.runtime.spec import ExecRequest, WindowSize

__all__ = ["AgentApi", "NothingListens", "status_of"]


class NothingListens(LoftError):
    """A connection into a running workspace found nothing accepting on that port."""


#: Threads for flows: each holds one for as long as it waits on runc, a mount or a build.
WORKERS = 32


def status_of(e: LoftError) -> int:
    """The HTTP status of an error (4xx: the caller can act on it)."""
    if isinstance(e, UnknownWorkspace | NoSuchSnapshot | VolumeNotFound | SnapshotNotFound):
        return 404
    if isinstance(
        e,
        SnapshotTaken
        | SnapshotInUse
        | NameTaken
        | PhaseError
        | NotAdmitted
        | VolumeBusy
        | VolumeExists
        | SnapshotExists
        | ProfileError,
    ):
        return 409
    if isinstance(e, BadName | BadRequest | InvalidArgument | CodecError | SpecError | LockError):
        return 400
    if isinstance(e, NothingListens):
        return 502
    return 500


class AgentApi:
    """Implements :data:`loft.node.workspace_api.WORKSPACE_API` on a node's workspaces."""

    def __init__(self, wss: Workspaces, reconciler: Reconciler, forwards: Path) -> None:
        self.wss = wss
        self.reconciler = reconciler
        self.forwards = forwards
        self.usage = Usage()
        self.pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="loft-agent")
        self._handlers: dict[type, Callable[[Any], object]] = {
            wapi.ListWorkspacesRequest: self.list,
            wapi.CreateWorkspaceRequest: self.new,
            wapi.GetWorkspaceRequest: lambda r: self.info(self.wss.get(r.workspace), live=True),
            wapi.StartWorkspaceRequest: lambda r: self.info(self.wss.start(r.workspace)),
            wapi.StopWorkspaceRequest: lambda r: self.info(self.wss.stop(r.workspace, cold=r.cold)),
            wapi.RemoveWorkspaceRequest: self.remove,
            wapi.SnapWorkspaceRequest: self.snap,
            wapi.ListSnapshotsRequest: self.snapshots,
            wapi.RemoveSnapshotRequest: self.remove_snapshot,
            wapi.RestoreWorkspaceRequest: self.restore,
            wapi.ForkWorkspaceRequest: self.fork,
            wapi.SwitchEnvRequest: self.switch_env,
            wapi.RollbackEnvRequest: self.rollback_env,
            wapi.ExecWorkspaceRequest: self.exec_session,
            wapi.ForwardRequest: self.forward_session,
            wapi.ConnectRequest: self.connect_session,
            wapi.LogsRequest: self.logs_session,
            wapi.ActivityRequest: self.activity,
            wapi.CommitLagsRequest: self.commit_lags,
            wapi.DiskStatsRequest: self.disk_stats,
            wapi.NodeRequest: self.node,
            wapi.DrainRequest: lambda r: wapi.DrainAnswer(self.reconciler.drain()),
        }
        assert set(self._handlers) == {op.request for op in wapi.WORKSPACE_API.operations}

    async def handle(self, op: Operation, req: object) -> object:
        """Run one request on a worker thread (an ``ApiServer`` handler)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self._run, op, req)

    def _run(self, op: Operation, req: Any) -> object:
        if op.needs_running:
            ws = self.wss.get(req.workspace)
            if not self.wss.running(ws.record.id):
                raise PhaseError(
                    f"workspace {ws.record.name!r} is {ws.state.phase.value}: "
                    f"{op.name} needs it running",
                    hint=f"start it first: loft start {ws.record.name}",
                )
        return self._handlers[type(req)](req)

    # -- workspaces -------------------------------------------------------------------

    def info(self, ws: Workspace, *, live: bool = False) -> wapi.WorkspaceInfo:
        """A workspace as the API shows it; ``live`` adds its resource use."""
        rec, state = ws.record, ws.state
        gen = self.wss.envs.current(rec.profile)
        status = self.wss.runtime.status(rec.id)
        memory_used = pids_used = None
        if live and status.pid:
            try:
                stats = self.wss.runtime.stats(rec.id)
                memory_used, pids_used = stats.memory, stats.pids
            except LoftError:
                pass  # it stopped meanwhile
        phase = state.phase.value
        if state.phase is Phase.RUNNING and not status.pid:
            phase = Phase.STOPPED.value  # its init died; the reconciler deals with it
        elif state.phase is Phase.STOPPED and self.wss.suspended(rec):
            phase = wapi.SUSPENDED  # stopped, its memory kept: a start resumes it
        return wapi.WorkspaceInfo(
            id=rec.id,
            name=rec.name,
            owner=rec.owner,
            phase=phase,
            desired=state.desired.value,
            node=state.node,
            runtime=rec.runtime,
            network=rec.network.value,
            size=rec.size,
            memory=rec.limits.memory,
            cpus=rec.limits.cpus,
            pids=rec.limits.pids,
            volume=rec.volume,
            ids_base=rec.ids.host,
            spec_source=rec.spec_source,
            env_path=gen.env_path if gen else None,
            env_generation=gen.number if gen else None,
            created_at=rec.created_at,
            pid=status.pid,
            memory_used=memory_used,
            pids_used=pids_used,
        )

    def list(self, req: wapi.ListWorkspacesRequest) -> wapi.WorkspacesAnswer:
        return wapi.WorkspacesAnswer([self.info(ws) for ws in self.wss.records.all()])

    def new(self, req: wapi.CreateWorkspaceRequest) -> wapi.WorkspaceInfo:
        return self.info(self.wss.new(req.workspace, start=req.start))

    def remove(self, req: wapi.RemoveWorkspaceRequest) -> wapi.RemovedAnswer:
        self.wss.remove(req.workspace)
        return wapi.RemovedAnswer(req.workspace)

    # -- snapshots ----------------------------------------------------------------------

    def snap(self, req: wapi.SnapWorkspaceRequest) -> wapi.SnapAnswer:
        s = snap(self.wss, req.workspace, req.snapshot, memory=req.memory)
        return wapi.SnapAnswer(s.name, s.version, s.running, s.pause_ms, s.total_ms)

    def snapshots(self, req: wapi.ListSnapshotsRequest) -> wapi.SnapshotsAnswer:
        return wapi.SnapshotsAnswer(
            [
                wapi.WorkspaceSnapshot(s.name, s.version, s.created_at, s.auto, s.env_path)
                for s in snapshots(self.wss, req.workspace)
            ]
        )

    def remove_snapshot(self, req: wapi.RemoveSnapshotRequest) -> wapi.SnapshotRemovedAnswer:
        remove(self.wss, req.workspace, req.snapshot)
        return wapi.SnapshotRemovedAnswer(req.snapshot)

    def restore(self, req: wapi.RestoreWorkspaceRequest) -> wapi.RestoreWorkspaceAnswer:
        undo, version, restarted = restore(self.wss, req.workspace, req.snapshot)
        return wapi.RestoreWorkspaceAnswer(req.snapshot, undo, version, restarted)

    def fork(self, req: wapi.ForkWorkspaceRequest) -> wapi.WorkspaceInfo:
        made = fork(self.wss, req.workspace, req.new, req.snapshot, req.start, live=req.live,
                    new_machine_id=req.new_machine_id)  # fmt: skip
        return self.info(made)

    def switch_env(self, req: wapi.SwitchEnvRequest) -> wapi.EnvAnswer:
        spec = spec_input(req.packages, req.spec, req.spec_source)
        return wapi.EnvAnswer(*self.wss.switch_env(req.workspace, spec))

    def rollback_env(self, req: wapi.RollbackEnvRequest) -> wapi.EnvAnswer:
        return wapi.EnvAnswer(*self.wss.rollback_env(req.workspace, req.generation))

    # -- sessions ---------------------------------------------------------------------

    def exec_session(self, req: wapi.ExecWorkspaceRequest) -> Session:
        ws = self.wss.get(req.workspace)
        try:
            env = dict(item.split("=", 1) for item in req.env)
            request = ExecRequest(tuple(req.argv), user=req.user, cwd=req.cwd, env=env)
            size = WindowSize(req.rows, req.cols)
        except ValueError as e:
            raise BadRequest(f"bad exec request: {e}") from None
        if req.tty:
            pty = self.wss.runtime.pty(ws.record.id, request, size)
            return tracked(ExecSession(pty=pty), self.usage, ws.record.id)
        proc = self.wss.runtime.exec(
            ws.record.id,
            request,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return tracked(ExecSession(process=proc), self.usage, ws.record.id)

    def forward_session(self, req: wapi.ForwardRequest) -> ForwardSession:
        ws = self.wss.get(req.workspace)
        wid = ws.record.id
        if not 0 < req.port < 65536 or not 0 <= (req.local_port or 0) < 65536:
            raise BadRequest(f"bad port {req.port if not 0 < req.port < 65536 else req.local_port}")
        path = None
        try:
            if req.local_port is None:
                self.forwards.mkdir(mode=0o700, exist_ok=True)
                path = self.forwards / f"{wid}-{req.port}-{secrets.token_hex(3)}.sock"
                listener, listen = unix_listener(path), str(path)
            else:
                listener = loopback_listener(req.local_port)
                listen = f"127.0.0.1:{listener.getsockname()[1]}"
        except OSError as e:
            raise BadRequest(
                f"cannot listen for the forward: {e.strerror or e}",
                hint="pick another --local port",
            ) from None
        try:
            fwd = self.wss.runtime.forward(wid, req.port, listener)
        except BaseException:
            listener.close()
            if path is not None:
                path.unlink(missing_ok=True)
            raise

        async def running() -> bool:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.pool, self.wss.running, wid)

        self.usage.forwarding(wid, fwd)
        return ForwardSession(fwd, listen, path, running)

    def connect_session(self, req: wapi.ConnectRequest) -> Session:
        ws = self.wss.get(req.workspace)
        wid = ws.record.id
        if not 0 < req.port < 65536:
            raise BadRequest(f"bad port {req.port}")
        try:
            inside = self.wss.runtime.connect(wid, req.port)
        except OSError as e:
            raise NothingListens(
                f"nothing accepts connections on port {req.port} of {ws.record.name!r} "
                f"({e.strerror or e})",
                hint="is its server up, and listening on 127.0.0.1 or 0.0.0.0?",
            ) from None
        return tracked(ConnectSession(inside, lambda: self.usage.seen(wid)), self.usage, wid)

    def logs_session(self, req: wapi.LogsRequest) -> LogsSession:
        ws = self.wss.get(req.workspace)
        if not 0 <= req.tail <= KEEP:
            raise BadRequest(f"bad tail {req.tail}", hint=f"0 to {KEEP} bytes")
        return LogsSession(self.wss.runs.log_of(ws.record.id), req.tail, req.follow)

    def commit_lags(self, req: wapi.CommitLagsRequest) -> wapi.CommitLagsAnswer:
        wss = self.wss
        lags = []
        for w in wss.records.on_node(wss.node):
            if w.state.phase is not Phase.RUNNING:
                continue
            try:
                lag = wss.disk.commit_lag(w.record.volume)
            except LoftError:  # gone meanwhile, or the disk service restarting
                continue
            if lag is not None:
                lags.append(wapi.VolumeLag(w.record.volume, lag))
        return wapi.CommitLagsAnswer(lags)

    def disk_stats(self, req: wapi.DiskStatsRequest) -> wapi.DiskStatsAnswer:
        stats = self.wss.disk.stats()
        return wapi.DiskStatsAnswer(stats.nbd, stats.chunk_store)

    def activity(self, req: wapi.ActivityRequest) -> wapi.ActivityAnswer:
        mine = [w.record.id for w in self.wss.records.on_node(self.wss.node)]
        used = self.usage.report(mine)
        return wapi.ActivityAnswer([wapi.WorkspaceActivity(i, at) for i, at in used.items()])

    # -- the node ---------------------------------------------------------------------

    def node(self, req: wapi.NodeRequest) -> wapi.NodeAnswer:
        wss = self.wss
        mine = wss.records.on_node(wss.node)
        committed = [w.record.limits for w in mine if w.state.desired is Desired.RUNNING]
        st = os.statvfs(wss.data_dir)
        cap = wss.admission.capacity
        reserve = reserve_bytes(wss.admission.reserve.spec, st.f_blocks * st.f_frsize)
        return wapi.NodeAnswer(
            node=wss.node,
            memory_capacity=cap.memory,
            memory_committed=sum(c.memory for c in committed),
            cpus_capacity=cap.cpus,
            cpus_committed=sum(c.cpus for c in committed),
            workspaces=len(mine),
            running=sum(1 for w in mine if w.state.phase is Phase.RUNNING),
            disk_free=st.f_bavail * st.f_frsize,
            disk_reserve=reserve,
            disk_service=wss.disk.alive(),
        )

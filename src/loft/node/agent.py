"""The node agent: one machine's workspaces, behind the node API on ``run/agent.sock``.

Processes (see docs/node-agent.md)::

    loft up (supervisor)
     +-- loft disk serve      volumes over NBD; control.sock, attach.sock, nbd.sock
     +-- loft node agent      workspaces; agent.sock
    per workspace, in sessions of their own (they outlive the agent):
         nbdfuse              the volume as a file, from attach.sock
         catatonit            the container's init (runc exits after each command)
         slirp4netns          with --net nat

The agent holds no state the system does not show: what it learns at start it reads
from the catalog and from runc, mountinfo and the attachments' records
(:meth:`~loft.node.reconcile.Reconciler.adopt`), so killing or upgrading it never takes
a workspace down. SIGTERM or SIGINT ends the agent and leaves every workspace running
(an upgrade is a restart); stopping the workspaces is an explicit drain
(``POST /v1/node/drain``), which ``loft up`` asks for when it stops.

Threads: the event loop (the API's HTTP and every exec, shell and forward session), the
flows' worker pool (:data:`~loft.node.agent_api.WORKERS`), the reconciler's loop, and
one per forwarded connection (:mod:`loft.runtime.forward`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from loft.blockstore import Blockstore
from loft.blockstore.reserve import DiskReserve
from loft.config import Settings
from loft.datadir import private_data_dir
from loft.envstore.profiles import Profiles
from loft.envstore.store import Store
from loft.errors import LoftError
from loft.node.admission import Admission, capacity_from
from loft.node.agent_api import AgentApi, status_of
from loft.node.apiserver import ApiServer
from loft.node.disk_client import DiskClient
from loft.node.endpoints import deployment_endpoints
from loft.node.environments import Environments
from loft.node.missing_runtime import MissingRuntime
from loft.node.reconcile import Reconciler
from loft.node.records import Records
from loft.node.runtimes import Runtimes
from loft.node.workspace_api import AGENT_SOCKET, WORKSPACE_API
from loft.node.workspaces import Workspaces
from loft.runtime.errors import WorkspaceError
from loft.runtime.interface import Runtime
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.vm import NbdDisk, VmRuntime
from loft.runtime.vm_qemu import GuestImage

__all__ = ["Agent", "agent_socket", "node_name"]

log = logging.getLogger("loft.node")

#: The agent's largest request: a loft.lock of a large environment (the example's,
#: ~130 artefacts, is 110 KiB) with room to spare.
MAX_SPEC = 4 << 20


def agent_socket(data_dir: Path) -> Path:
    """The agent's socket: ``<data dir>/run/agent.sock`` (root-only directory)."""
    return data_dir / "run" / AGENT_SOCKET


def node_name(data_dir: Path) -> str:
    """This node's name in the runtime state: the host's name and a hash of the machine's
    id and the data dir (one machine can be several nodes, one per data dir, as tests
    make it), stable across reboots."""
    try:
        machine = Path("/etc/machine-id").read_text().strip()
    except OSError:
        machine = ""
    digest = hashlib.sha256(f"{machine}\0{data_dir.resolve()}".encode()).hexdigest()[:8]
    return f"{socket.gethostname()[:48]}-{digest}"


def _runtime(data_dir: Path) -> Runtime:
    try:
        return SandboxRuntime(data_dir)
    except LoftError as e:  # runc or catatonit missing: serve, and say so on use
        log.warning(
            "agent.runtime_missing error=%s hint=%s", json.dumps(e.message), json.dumps(e.hint)
        )
        return MissingRuntime(SandboxRuntime.kind, e)


def _vm_runtime(data_dir: Path, bs: Blockstore, records: Records) -> Runtime:
    """The VM runtime, its disks served by this node's disk service (``nbd.sock``, the
    workspace's volume as the export); missing when QEMU or the guest is."""
    guest = Path(os.environ.get("LOFT_VM_GUEST") or data_dir / "vm-guest")
    try:
        if shutil.which("qemu-system-x86_64") is None:
            raise WorkspaceError(
                "the vm runtime is missing: qemu-system-x86_64 is not installed",
                hint="run `make deps` (Debian: apt-get install qemu-system-x86)",
            )
        try:
            GuestImage.at(guest)
        except LoftError as e:
            raise WorkspaceError(f"the vm runtime is missing: {e.message}", hint=e.hint) from None
    except LoftError as e:
        log.warning(
            "agent.runtime_missing error=%s hint=%s", json.dumps(e.message), json.dumps(e.hint)
        )
        return MissingRuntime(VmRuntime.kind, e)
    nbd = data_dir / "run" / "nbd.sock"

    def disk(workspace: str) -> NbdDisk:
        rec = records.record(workspace)
        if rec is None:
            raise WorkspaceError(f"no workspace record {workspace!r}")
        return NbdDisk(nbd, rec.volume)

    return VmRuntime(data_dir, disk, guest=guest, bs=bs)


@dataclass
class Agent:
    """The agent's parts, opened on one node's settings."""

    settings: Settings
    bs: Blockstore
    workspaces: Workspaces
    reconciler: Reconciler
    api: AgentApi

    @classmethod
    def open(cls, settings: Settings) -> Agent:
        """Open the catalog, the store and the runtime of ``settings``' node."""
        data_dir = private_data_dir(settings.data_dir)
        run = data_dir / "run"
        run.mkdir(mode=0o700, exist_ok=True)
        bs = Blockstore.from_settings(settings)
        catalog = bs.ctx.catalog
        records = Records(catalog)
        runtimes = {
            SandboxRuntime.kind: _runtime(data_dir),
            VmRuntime.kind: _vm_runtime(data_dir, bs, records),
        }

        def kind_of(workspace: str) -> str | None:
            rec = records.record(workspace)
            return None if rec is None else rec.runtime

        wss = Workspaces(
            node=node_name(data_dir),
            data_dir=data_dir,
            bs=bs,
            disk=DiskClient(bs, run / "control.sock"),
            envs=Environments(Store.open(settings), Profiles(catalog)),
            records=records,
            runtime=Runtimes(runtimes, kind_of),
            admission=Admission(
                capacity_from(settings), DiskReserve(data_dir, settings.disk_reserve)
            ),
            deny=deployment_endpoints(settings),
        )
        reconciler = Reconciler(wss)
        return cls(settings, bs, wss, reconciler, AgentApi(wss, reconciler, run / "forwards"))

    async def serve(self) -> None:
        """Adopt what runs, serve the API until SIGTERM or SIGINT, then leave."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.api.pool, self.reconciler.adopt)
        path = agent_socket(self.settings.data_dir)
        path.unlink(missing_ok=True)
        server = ApiServer(self.api.handle, status_of, WORKSPACE_API, max_body=MAX_SPEC)
        listener = await asyncio.start_unix_server(server.handle, str(path))
        os.chmod(path, 0o600)
        self.reconciler.start()
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        log.info("agent.ready socket=%s node=%s", path, self.workspaces.node)
        await stopped.wait()
        log.info("agent.stopping")
        listener.close()
        await loop.run_in_executor(self.api.pool, self.reconciler.stop)
        path.unlink(missing_ok=True)
        self.api.pool.shutdown(wait=False, cancel_futures=True)
        self.bs.close()
        log.info("agent.stopped")

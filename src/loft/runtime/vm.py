"""The ``vm`` runtime: each workspace a QEMU microVM (see docs/vm.md).

The same controller as the sandbox's: every command first checks the workspace's phase
against :data:`loft.runtime.phase.ALLOWED`, and phase-changing commands hold the
workspace's lock. QEMU is the machine (:mod:`~loft.runtime.vm_qemu` has its command line,
:mod:`~loft.runtime.vm_process` starts, adopts and kills it), QMP
(:mod:`~loft.runtime.qmp`, :mod:`~loft.runtime.vm_migrate`) pauses, saves and loads it,
and the guest agent (:mod:`~loft.runtime.vm_agent`, reached through
:mod:`~loft.runtime.vm_exec`) runs commands and freezes the filesystem inside.

Each VM has a private directory, ``<data>/runtime/vm/<id>`` (0700): the RAM file, the
QMP and agent sockets, a hard link to its environment disk (``env.img``, see
:mod:`~loft.runtime.vm_envlink`), QEMU's log, ``workspace.json`` (the spec, so a
suspended VM resumes without its caller knowing it) and ``vm.json`` (QEMU's pid and
start time, so a restarted agent adopts or cleans it). The disk is never here: QEMU
reads and writes the workspace volume from the node's NBD server, and the host never
mounts it (a tenant writes it raw).

A suspend (:mod:`~loft.runtime.vm_suspend`) saves device state beside the RAM file;
QEMU stays, paused (a **hot** resume is ``cont``), or quits (a **warm** resume is a new
QEMU on the same RAM file, ``-incoming defer``, loading the state); either way the
guest's clock is set and its RNG reseeded. A snapshot with memory
(:mod:`~loft.runtime.vm_snapshot`) is an image that never changes; a restore, or a live
fork (another workspace's snapshot onto a fork of its volume), gives the VM a sparse
copy of its RAM file, and a fork's NIC its own MAC (:mod:`~loft.runtime.vm_net`).

One idea, the controller: each command is its phase check, its lock and the calls into
the modules above, where the QEMU process, the agent, the images and their formats live.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from loft.blockstore import Blockstore
from loft.runtime import vm_exec, vm_store, vm_suspend
from loft.runtime.console import PtySession
from loft.runtime.errors import NotSupported, UnknownWorkspace, WorkspaceError
from loft.runtime.forward import Forwarder
from loft.runtime.interface import Runtime, RuntimeSnapshot, Stats, WorkspaceStatus
from loft.runtime.persist import load_spec, save_spec
from loft.runtime.phase import Command, Phase, check
from loft.runtime.qmp import QmpError
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, Network, WindowSize, WorkspaceSpec, check_workspace_id
from loft.runtime.vm_envdisk import EnvDisk, build_env_disk
from loft.runtime.vm_envlink import link_env, linked_env
from loft.runtime.vm_image import FORMAT, copy_sparse, decode_record, encode_record
from loft.runtime.vm_migrate import load_state
from loft.runtime.vm_net import guest_mac, mac_bytes, stop_recorded_stack
from loft.runtime.vm_process import (
    VM_RECORD,
    VmProcess,
    agent_link,
    attach,
    connect_agent,
    kill_recorded,
    launch_networked,
    reap,
    recorded_pid,
    set_clock,
    stats,
)
from loft.runtime.vm_protocol import Type, write_file_payload
from loft.runtime.vm_qemu import GuestImage, Machine, accelerator
from loft.runtime.vm_snapshot import MemoryImages

__all__ = ["NbdDisk", "VmRuntime"]

_MAX_READ = 16 << 20


@dataclass(frozen=True)
class NbdDisk:
    """Where QEMU reads a workspace's volume: export ``export`` of the NBD server on
    Unix socket ``socket`` (the node's disk service)."""

    socket: Path
    export: str


class VmRuntime(Runtime):
    """Workspaces as QEMU microVMs, with state under ``data_dir``.

    ``disk``: where a workspace's volume is served (the node's disk service); ``guest``:
    the kernel and initramfs (default: ``LOFT_VM_GUEST``, else ``<data_dir>/vm-guest``);
    ``accel``: ``auto``, ``kvm`` or ``tcg`` (default ``LOFT_VM_ACCEL``, else ``tcg``);
    ``bs``: the node's blockstore, where memory images go to outlive the node
    (:meth:`upload_snapshot`) and come from when a restore does not find them here;
    ``egress_netns``: the network namespace the userspace stacks of ``nat`` VMs run in
    (default: the agent's). The spec's ``rootfs`` is not used: a VM's volume is never
    mounted on the host."""

    kind = "vm"

    def __init__(self, data_dir: Path, disk: Callable[[str], NbdDisk], *,
                 guest: Path | None = None, accel: str | None = None,
                 bs: Blockstore | None = None,
                 egress_netns: Path | None = None) -> None:  # fmt: skip
        self.bs = bs
        self.egress_netns = egress_netns
        self.root = data_dir / "runtime" / "vm"
        self.images = data_dir / "runtime" / "vm-images"
        self.envs = data_dir / "runtime" / "vm-envs"
        self.memory_images = MemoryImages(self.images, self.root, self.envs, bs)
        self.disk = disk
        self.guest_dir = guest or Path(os.environ.get("LOFT_VM_GUEST") or data_dir / "vm-guest")
        self.accel = accelerator(accel)
        self._live: dict[str, VmProcess] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._table = threading.Lock()

    def dir(self, workspace: str) -> Path:
        """The VM's private directory."""
        return self.root / check_workspace_id(workspace)

    # -- phases ------------------------------------------------------------------------

    def _lock(self, workspace: str) -> threading.Lock:
        with self._table:
            return self._locks[workspace]

    def _live_one(self, workspace: str) -> VmProcess | None:
        vm = self._live.get(workspace)
        if vm is not None and not vm.alive():  # QEMU died (killed, guest panic)
            self._live.pop(workspace, None)
            vm.release()
            reap(vm.pid)
            vm.stop_stack()
            return None
        return vm

    def _checked(self, workspace: str, command: Command) -> VmProcess:
        vm = self._live_one(workspace)
        if vm is None:
            check(workspace, command, Phase.STOPPED)
            raise UnknownWorkspace(f"workspace {workspace} is not running here")
        check(workspace, command, vm.phase)
        return vm

    def status(self, workspace: str) -> WorkspaceStatus:
        vm = self._live_one(workspace)
        if vm is None:
            return WorkspaceStatus(workspace, Phase.STOPPED, 0)
        return WorkspaceStatus(workspace, vm.phase, vm.pid)

    def suspended(self, workspace: str) -> bool:
        """Whether ``workspace`` has a suspend image a start resumes from."""
        return vm_suspend.suspended(self.dir(workspace))

    # -- life --------------------------------------------------------------------------

    def adopt(self) -> list[WorkspaceStatus]:
        running = []
        for name in sorted(os.listdir(self.root)) if self.root.is_dir() else []:
            if name in self._live:
                running.append(self.status(name))
                continue
            d = self.root / name
            try:
                pid = recorded_pid(d)
                if pid is None:
                    raise ProcessLookupError
                spec = load_spec(d)
                # the agent is reached on first use: a paused VM's would not answer now
                vm = attach(spec, self._machine(spec), pid, agent=False)
            except (OSError, ValueError, KeyError, WorkspaceError):
                # Nothing usable runs: keep a suspend image, drop the rest.
                if not vm_suspend.suspended(d):
                    self._teardown(name)
                continue
            status = vm.qmp.execute("query-status")
            vm.phase = Phase.RUNNING if status.get("running") else Phase.PAUSED
            self._live[name] = vm
            running.append(WorkspaceStatus(name, vm.phase, vm.pid))
        return running

    def _machine(self, spec: WorkspaceSpec) -> Machine:
        """The VM of ``spec``: on its own RAM file, or (a VM an older loft restored) on
        the image it was restored from, with that image's memory size."""
        disk = self.disk(spec.id)
        d = self.dir(spec.id)
        memory, image = spec.limits.memory, None
        if (mapped := self.memory_images.mapped(d)) is not None:
            image, memory = mapped
        env = linked_env(d)
        return Machine(d, memory, disk.socket, disk.export, self.accel, ram_image=image,
                       env_disk=env.path if env else None,
                       env_name=env.name if env else "", mac=self._mac(spec))  # fmt: skip

    @staticmethod
    def _mac(spec: WorkspaceSpec) -> str | None:
        return guest_mac(spec.id) if spec.network is Network.NAT else None

    def _launch(self, spec: WorkspaceSpec, machine: Machine, guest: GuestImage, *,
                incoming: bool) -> VmProcess:  # fmt: skip
        return launch_networked(spec, machine, guest, incoming=incoming,
                                egress_netns=self.egress_netns)  # fmt: skip

    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        """Boot the workspace's VM, or resume it (warm) when it has a suspend image."""
        with self._lock(spec.id):
            vm = self._live_one(spec.id)
            check(spec.id, Command.START, vm.phase if vm else Phase.STOPPED)
            if self.suspended(spec.id):
                return self._resume_warm(spec.id)
            disk = self.disk(spec.id)  # a boot always runs on its own, new RAM file
            machine = Machine(self.dir(spec.id), spec.limits.memory, disk.socket, disk.export,
                              self.accel, mac=self._mac(spec))  # fmt: skip
            guest = GuestImage.at(self.guest_dir)
            if not machine.nbd_socket.exists():
                raise WorkspaceError(f"the disk service's socket {machine.nbd_socket} is missing",
                                     hint="start the node's disk service")  # fmt: skip
            self._prepare_dirs()
            env = build_env_disk(spec.env, self.envs)
            try:
                self._prepare(spec, env)
                vm = self._launch(spec, self._machine(spec), guest, incoming=False)
                self._live[spec.id] = vm
                return WorkspaceStatus(spec.id, Phase.RUNNING, vm.pid)
            except BaseException:
                self._teardown(spec.id)
                raise

    def _prepare_dirs(self) -> None:
        for p in (self.root.parent, self.root, self.images, self.envs):  # not parents=: 0755
            p.mkdir(mode=0o700, exist_ok=True)

    def _prepare(self, spec: WorkspaceSpec, env: EnvDisk | None) -> None:
        """A fresh directory for ``spec``'s VM, with its environment disk linked in (the
        VM keeps that image, whatever the cache or the store do, until it shuts down)."""
        d = self.dir(spec.id)
        self._prepare_dirs()
        if d.exists():  # a boot cut short, or a VM killed: nothing in it is valid now
            shutil.rmtree(d)
        d.mkdir(mode=0o700)
        save_spec(d, spec)
        if env is not None:
            link_env(d, env)

    def stop(self, workspace: str, *, grace: float = 5.0) -> None:
        """Shut the VM down and remove every trace, a suspend image included (the
        guest is asked to sync its disks first, for ``grace`` seconds at most)."""
        with self._lock(workspace):
            vm = self._live_one(workspace)
            check(workspace, Command.STOP, vm.phase if vm else Phase.STOPPED)
            if vm is not None and vm.phase is Phase.RUNNING and vm.agent is not None and grace > 0:
                with contextlib.suppress(WorkspaceError):
                    self._run_quiet(vm, ("sync",), grace)
            self._teardown(workspace)

    def _run_quiet(self, vm: VmProcess, argv: tuple[str, ...], timeout: float) -> None:
        proc = self.exec(vm.spec.id, ExecRequest(argv, user=0, cwd="/"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _teardown(self, workspace: str) -> None:
        """Kill the VM's QEMU whatever state it is in, and remove its directory."""
        vm = self._live.pop(workspace, None)
        if vm is not None:
            vm.kill()
        d = self.dir(workspace)
        kill_recorded(d)
        stop_recorded_stack(d)  # an adopted VM's, or one left by a start cut short
        if d.exists():
            shutil.rmtree(d)

    # -- reaching in -------------------------------------------------------------------

    def exec(self, workspace: str, request: ExecRequest, *, stdin: Stdio = None,
             stdout: Stdio = None, stderr: Stdio = None) -> subprocess.Popen[bytes]:  # fmt: skip
        vm = self._checked(workspace, Command.EXEC)
        return vm_exec.exec_in(vm, request, kept=False, stdin=stdin, stdout=stdout,
                               stderr=stderr)  # fmt: skip

    def exec_kept(self, workspace: str, request: ExecRequest, *, stdout: Stdio = None,
                  stderr: Stdio = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """The guest agent keeps this command's output while no host reads it (its QEMU
        suspended, the VM restored or forked from memory): :meth:`attach_kept` then
        relays what it kept, its newest 256 KiB, and the rest. One per VM."""
        vm = self._checked(workspace, Command.EXEC)
        return vm_exec.exec_in(vm, request, kept=True, stdin=subprocess.DEVNULL,
                               stdout=stdout, stderr=stderr)  # fmt: skip

    def attach_kept(self, workspace: str, *, stdout: Stdio = None,
                    stderr: Stdio = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """The kept command of a VM that came back from memory, as :meth:`exec` gives a
        command (its exit status the command's; 127 and a line on standard error when
        the VM has none running)."""
        vm = self._checked(workspace, Command.EXEC)
        return vm_exec.attach_kept(vm, stdout=stdout, stderr=stderr)

    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        """``request`` on a new terminal in the guest, relayed to a host terminal whose
        master the caller gets (its resize reaches the guest's terminal)."""
        return vm_exec.pty_in(self._checked(workspace, Command.PTY), request, size)

    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        """Relay connections accepted on ``listener`` to ``127.0.0.1:port`` in the guest,
        through the agent (the guest needs no network device for it)."""
        vm = self._checked(workspace, Command.FORWARD)
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")

        fwd = Forwarder(listener, lambda: vm_exec.connect_in(vm, port, 10.0))
        vm.forwarders.append(fwd)
        return fwd

    def connect(self, workspace: str, port: int, timeout: float = 10.0) -> socket.socket:
        """One connection to ``127.0.0.1:port`` in the guest, through the agent (a Unix
        socket whose bytes are the connection's); ConnectionRefusedError when nothing
        listens there."""
        vm = self._checked(workspace, Command.FORWARD)
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        return vm_exec.connect_in(vm, port, timeout)

    def read_file(self, workspace: str, path: str, limit: int = _MAX_READ) -> bytes:
        """The contents of ``path`` inside the workspace (at most ``limit`` bytes)."""
        vm = self._checked(workspace, Command.EXEC)
        return agent_link(vm).call(Type.READ_FILE, path.encode() + b"\0", limit=limit)

    def write_file(self, workspace: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``path`` inside the workspace with ``data`` (up to about 1 MiB)."""
        vm = self._checked(workspace, Command.EXEC)
        agent_link(vm).call(Type.WRITE_FILE, write_file_payload(path, data, mode))

    # -- freezing and stats ------------------------------------------------------------

    def freeze(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.FREEZE)
            vm.qmp.execute("stop")
            vm.phase = Phase.PAUSED

    def thaw(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.THAW)
            self._cont(vm)

    def _cont(self, vm: VmProcess) -> None:
        vm_suspend.discard(vm.machine.dir)  # invalid once it runs
        vm.qmp.execute("cont")
        vm.phase = Phase.RUNNING

    def freeze_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.FREEZE_FS)
            if vm.phase is not Phase.RUNNING:
                raise WorkspaceError(f"workspace {workspace} is paused: its agent cannot freeze",
                                     hint="freeze the filesystem before the processes")  # fmt: skip
            agent_link(vm).call(Type.FSFREEZE, timeout=60)
            vm.fs_frozen = True

    def thaw_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.THAW_FS)
            if vm.phase is not Phase.RUNNING:
                raise WorkspaceError(f"workspace {workspace} is paused: its agent cannot thaw",
                                     hint="thaw the processes first")  # fmt: skip
            agent_link(vm).call(Type.FSTHAW)
            vm.fs_frozen = False

    def stats(self, workspace: str) -> Stats:
        """QEMU's own use (:func:`~loft.runtime.vm_process.stats`)."""
        return stats(self._checked(workspace, Command.STATS))

    # -- snapshots with memory ---------------------------------------------------------

    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        """The VM's memory and devices as an image (see :mod:`loft.runtime.vm_snapshot`),
        taken with its vCPUs stopped: a running VM is stopped for the copy and goes on
        after; a frozen one stays frozen, so the caller can snapshot the volume at the
        very same point before it thaws."""
        with self._lock(workspace):
            vm = self._checked(workspace, Command.SNAPSHOT)
            self._prepare_dirs()
            rec = self.memory_images.take(vm, workspace)
            return RuntimeSnapshot(self.kind, FORMAT, encode_record(rec))

    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot, *, fork: bool = False,
                new_machine_id: bool = False) -> WorkspaceStatus:  # fmt: skip
        """Start ``spec`` from a memory snapshot, on a volume the caller restored (or
        forked) to the snapshot's point. The VM gets its own RAM file, a sparse copy of
        the image's (so its next suspend saves device state only, as a booted VM's
        does), and the image never changes however many VMs restore from it. Another
        workspace's snapshot is refused unless ``fork`` (a live fork: the caller gives
        the new workspace a fork of the volume); a fork's NIC gets the new workspace's
        own MAC, and with ``new_machine_id`` its ``/etc/machine-id`` is written afresh.
        The spec's network must be the snapshot's (the NIC is a device of the saved
        machine)."""
        if snapshot.kind != self.kind:
            raise NotSupported(f"a {snapshot.kind} snapshot cannot restore a {self.kind}")
        rec = decode_record(snapshot.state)
        if rec.workspace != spec.id and not fork:
            raise WorkspaceError(f"the snapshot is of workspace {rec.workspace}, not {spec.id}",
                                 hint="fork it into a new workspace instead")  # fmt: skip
        if self.bs is not None and not self.memory_images.here(rec):
            self._prepare_dirs()  # cold: the image only in the chunk store
            self.memory_images.fetch(rec, snapshot.state)
        state, ram, env = self.memory_images.checked(rec)
        # the VM's own RAM file, as a boot has: its next suspend saves device state only
        spec = replace(spec, limits=replace(spec.limits, memory=rec.memory_mib << 20))
        with self._lock(spec.id):
            vm = self._live_one(spec.id)
            check(spec.id, Command.RESTORE, vm.phase if vm else Phase.STOPPED)
            guest = GuestImage.at(self.guest_dir)
            try:
                self._prepare(spec, env)
                copy_sparse(ram, self.dir(spec.id) / "ram")
                machine = self._machine(spec)
                vm = self._launch(spec, machine, guest, incoming=True)
                self._live[spec.id] = vm
                load_state(vm.qmp, state)
                self._cont(vm)
                vm.agent = connect_agent(vm)
                self._after_restore(vm)
                if fork and machine.mac is not None:
                    vm.agent.call(Type.SET_MAC, mac_bytes(machine.mac))
                if new_machine_id:
                    machine_id = secrets.token_hex(16).encode() + b"\n"
                    payload = write_file_payload("/etc/machine-id", machine_id, 0o444)
                    vm.agent.call(Type.WRITE_FILE, payload)
            except BaseException:
                self._teardown(spec.id)
                raise
            return WorkspaceStatus(spec.id, Phase.RUNNING, vm.pid)

    def remove_snapshot(self, snapshot: RuntimeSnapshot) -> None:
        """Delete a memory snapshot's image (gone already is fine); :class:`ImageInUse`
        while a VM or another image still maps its RAM."""
        self.memory_images.remove(snapshot.state)

    def upload_snapshot(self, snapshot: RuntimeSnapshot) -> str:
        """Put a memory snapshot's image into the chunk store (a volume of its own, see
        :mod:`loft.runtime.vm_cold`), so a restore on any node finds it; the volume."""
        return self.memory_images.upload(snapshot.state)

    # -- suspend and resume ------------------------------------------------------------

    def suspend(self, workspace: str, *, keep: bool = False) -> float:
        """Save the VM's state beside its RAM file; with ``keep`` QEMU stays, paused
        (a hot resume is then ``cont``), else it quits and the image stays for a warm
        resume. Returns the seconds the save took."""
        with self._lock(workspace):
            vm = self._checked(workspace, Command.SNAPSHOT)
            if vm.phase is Phase.RUNNING:
                vm.qmp.execute("stop")
                vm.phase = Phase.PAUSED
            seconds = vm_suspend.save(vm, workspace)
            if not keep:
                with contextlib.suppress(QmpError):
                    vm.qmp.execute("quit")
                self._live.pop(workspace, None)
                vm.alive(wait=5)  # QEMU exits once quit; killed if it does not
                vm.kill()
                (vm.machine.dir / VM_RECORD).unlink(missing_ok=True)
            return seconds

    def resume(self, workspace: str) -> WorkspaceStatus:
        """Run a suspended VM again: ``cont`` when its QEMU is still there (hot), else
        a new QEMU from its image (warm)."""
        with self._lock(workspace):
            vm = self._live_one(workspace)
            if vm is not None:
                check(workspace, Command.THAW, vm.phase)
                self._cont(vm)
                self._after_restore(vm)
                return WorkspaceStatus(workspace, vm.phase, vm.pid)
            return self._resume_warm(workspace)

    def _resume_warm(self, workspace: str) -> WorkspaceStatus:
        d = self.dir(workspace)
        spec, digest = vm_suspend.load(d, workspace)
        machine = self._machine(spec)
        state = vm_suspend.state_checked(d, workspace, digest, machine.memory)
        guest = GuestImage.at(self.guest_dir)
        vm = None
        try:
            vm = self._launch(spec, machine, guest, incoming=True)
            load_state(vm.qmp, state)
            self._cont(vm)
            vm.agent = connect_agent(vm)
            self._after_restore(vm)
        except BaseException:
            if vm is not None:
                vm.kill()
            (d / VM_RECORD).unlink(missing_ok=True)
            raise
        self._live[workspace] = vm
        return WorkspaceStatus(workspace, Phase.RUNNING, vm.pid)

    def _after_restore(self, vm: VmProcess) -> None:
        """The guest's clock stood still while it was saved, and a restored RNG state
        repeats: set the one, reseed the other."""
        link = agent_link(vm)
        set_clock(link)
        link.call(Type.RESEED, secrets.token_bytes(64))

    # -- suspend images in the chunk store ---------------------------------------------

    def uploaded(self, workspace: str) -> bool:
        """Whether ``workspace`` has a suspend image in the chunk store."""
        return self.bs is not None and vm_store.header_exists(self.bs, workspace)

    def upload_suspend(self, workspace: str, disk_root: str) -> vm_store.Upload:
        """Put the suspend image of ``workspace`` (suspended, QEMU gone) into the chunk
        store (:mod:`loft.runtime.vm_store`), marked as belonging with its volume's
        committed root ``disk_root``: only the extents changed since its last upload."""
        if self.bs is None:
            raise WorkspaceError("this VM runtime has no blockstore to upload images to")
        with self._lock(workspace):
            if self._live_one(workspace) is not None or not self.suspended(workspace):
                raise WorkspaceError(f"workspace {workspace} is not suspended")
            machine = self._machine(load_spec(self.dir(workspace)))
            return vm_suspend.upload(self.bs, workspace, machine, disk_root)

    def suspend_disk_root(self, workspace: str) -> str | None:
        """The volume root the local suspend image was uploaded with (None: not
        uploaded, or no image): another root means the disk moved on elsewhere since."""
        return vm_suspend.disk_root(self.dir(workspace))

    def fetch_suspend(self, spec: WorkspaceSpec, disk_root: str) -> bool:
        """Make the suspend image of ``spec`` in the chunk store its local one (a
        :meth:`start` then resumes it, warm), when there is no local one; whether it has
        a suspend image now. WorkspaceError, with nothing left here, when the uploaded
        one is damaged, another workspace's, or older than the disk ``disk_root``."""
        with self._lock(spec.id):
            if self.suspended(spec.id) or self.bs is None:
                return self.suspended(spec.id)
            vm = self._live_one(spec.id)
            check(spec.id, Command.START, vm.phase if vm else Phase.STOPPED)
            h = vm_store.header(self.bs, spec.id)
            if h is None:
                return False
            spec = replace(spec, limits=replace(spec.limits, memory=h.memory_mib << 20))
            d = self.dir(spec.id)
            try:
                self._prepare(spec, None)
                vm_suspend.fetch(self.bs, spec.id, disk_root, d, self.envs)
            except BaseException:
                self._teardown(spec.id)
                raise
            return True

    def remove_suspend_upload(self, workspace: str) -> bool:
        """Delete ``workspace``'s suspend image from the chunk store; whether it had one."""
        return self.bs is not None and vm_store.remove(self.bs, workspace)

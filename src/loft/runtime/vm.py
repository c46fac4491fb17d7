"""The ``vm`` runtime: each workspace a QEMU microVM (see docs/vm.md).

The same controller as the sandbox's: every command first checks the workspace's phase
against :data:`loft.runtime.phase.ALLOWED`, and phase-changing commands hold the
workspace's lock. QEMU is the machine (:mod:`loft.runtime.vm_qemu` has its command line),
QMP (:mod:`loft.runtime.qmp`) pauses, saves and loads it, and the guest agent
(:mod:`loft.runtime.vm_agent`) runs commands and freezes the filesystem inside.

Each VM has a private directory, ``<data>/runtime/vm/<id>`` (0700): the RAM file, the
QMP and agent sockets, QEMU's log, ``workspace.json`` (the spec, so a
suspended VM resumes without its caller knowing it) and ``vm.json`` (QEMU's pid and
start time, so a restarted agent adopts or cleans it). The disk is never here: QEMU
reads and writes the workspace volume from the node's NBD server, and the host never
mounts it (a tenant writes it raw).

Suspend and resume, in tiers:

- **suspend**: ``stop`` the vCPUs, then migrate with ``x-ignore-shared`` to
  ``state`` (device state only: RAM is already in the file), its SHA-256 recorded in
  ``suspend.json``. QEMU either stays, paused (``hot``), or quits (the image stays).
- **hot resume**: ``cont``. **warm resume**: a new QEMU with the same devices and
  ``-incoming defer`` maps the RAM file (``share=on``: the VM is the file's only user,
  so its next suspend again saves only device state) and loads ``state``; then ``cont``,
  the guest's clock set and its RNG reseeded from the host.
- The image stops being valid the moment the VM runs again (the RAM file changes
  under it), so a resume deletes it first; a VM killed later boots afresh.

Not yet for VMs: port forwarding, snapshots with memory and live forks
(:class:`~loft.runtime.errors.NotSupported` says so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loft.procfs import proc_stat
from loft.runtime.console import PtySession, set_window_size
from loft.runtime.errors import NotSupported, UnknownWorkspace, WorkspaceError
from loft.runtime.forward import Forwarder
from loft.runtime.interface import Runtime, RuntimeSnapshot, Stats, WorkspaceStatus
from loft.runtime.oci import process_config
from loft.runtime.persist import load_spec, save_spec, write_private
from loft.runtime.phase import Command, Phase, check
from loft.runtime.qmp import QmpClient, QmpError
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, WindowSize, WorkspaceSpec, check_workspace_id
from loft.runtime.vm_agent import AgentError, AgentLink
from loft.runtime.vm_protocol import Type, exec_payload, window_payload, write_file_payload
from loft.runtime.vm_qemu import CONSOLE_BYTES, GuestImage, Machine, accelerator, qemu_argv

__all__ = ["NbdDisk", "VmRuntime"]

#: Boot to agent ready under TCG takes about 2 s here; a busy machine can triple it.
BOOT_TIMEOUT = 30.0
#: A migration of device state only is tens of KB; a full RAM copy (a VM whose RAM is
#: not shared) at the raised bandwidth moves about 150 MB/s.
SAVE_TIMEOUT = 60.0
_STATE = "state"
_SUSPEND = "suspend.json"
_VM = "vm.json"
_STATE_FORMAT = 1
#: The largest state file accepted back: device state is tens of KB; a full RAM image
#: of the largest VM would not be one.
_MAX_STATE = 64 << 20
_MAX_READ = 16 << 20


@dataclass(frozen=True)
class NbdDisk:
    """Where QEMU reads a workspace's volume: export ``export`` of the NBD server on
    Unix socket ``socket`` (the node's disk service)."""

    socket: Path
    export: str


@dataclass
class _Vm:
    spec: WorkspaceSpec
    machine: Machine
    pid: int
    pidfd: int
    qmp: QmpClient
    agent: AgentLink | None
    phase: Phase
    fs_frozen: bool = False

    def alive(self) -> bool:
        return not select.select([self.pidfd], [], [], 0)[0]

    def release(self) -> None:
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        self.qmp.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


class VmRuntime(Runtime):
    """Workspaces as QEMU microVMs, with state under ``data_dir``.

    ``disk``: where a workspace's volume is served (the node's disk service); ``guest``:
    the kernel and initramfs (default: ``LOFT_VM_GUEST``, else ``<data_dir>/vm-guest``);
    ``accel``: ``auto``, ``kvm`` or ``tcg`` (default ``LOFT_VM_ACCEL``, else ``tcg``).
    The spec's ``rootfs`` is not used: a VM's volume is never mounted on the host."""

    kind = "vm"

    def __init__(self, data_dir: Path, disk: Callable[[str], NbdDisk], *,
                 guest: Path | None = None, accel: str | None = None) -> None:  # fmt: skip
        self.root = data_dir / "runtime" / "vm"
        self.disk = disk
        self.guest_dir = guest or Path(os.environ.get("LOFT_VM_GUEST") or data_dir / "vm-guest")
        self.accel = accelerator(accel)
        self._live: dict[str, _Vm] = {}
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._table = threading.Lock()

    def dir(self, workspace: str) -> Path:
        """The VM's private directory."""
        return self.root / check_workspace_id(workspace)

    # -- phases ------------------------------------------------------------------------

    def _lock(self, workspace: str) -> threading.Lock:
        with self._table:
            return self._locks[workspace]

    def _live_one(self, workspace: str) -> _Vm | None:
        vm = self._live.get(workspace)
        if vm is not None and not vm.alive():  # QEMU died (killed, guest panic)
            self._live.pop(workspace, None)
            vm.release()
            self._reap(vm.pid)
            return None
        return vm

    def _checked(self, workspace: str, command: Command) -> _Vm:
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
        return (self.dir(workspace) / _SUSPEND).is_file()

    # -- life --------------------------------------------------------------------------

    def adopt(self) -> list[WorkspaceStatus]:
        running = []
        for name in sorted(os.listdir(self.root)) if self.root.is_dir() else []:
            if name in self._live:
                running.append(self.status(name))
                continue
            d = self.root / name
            try:
                rec = json.loads((d / _VM).read_bytes()[:4096])
                pid, start = int(rec["pid"]), int(rec["start"])
                stat = proc_stat(pid)
                if stat is None or stat.start != start:
                    raise ProcessLookupError
                spec = load_spec(d)
                vm = self._connect(spec, self._machine(spec), pid, agent=True)
            except (OSError, ValueError, KeyError, WorkspaceError):
                # Nothing usable runs: keep a suspend image, drop the rest.
                if not (d / _SUSPEND).is_file():
                    self._teardown(name)
                continue
            status = vm.qmp.execute("query-status")
            vm.phase = Phase.RUNNING if status.get("running") else Phase.PAUSED
            self._live[name] = vm
            running.append(WorkspaceStatus(name, vm.phase, vm.pid))
        return running

    def _machine(self, spec: WorkspaceSpec) -> Machine:
        disk = self.disk(spec.id)
        return Machine(self.dir(spec.id), spec.limits.memory, disk.socket, disk.export, self.accel)

    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        """Boot the workspace's VM, or resume it (warm) when it has a suspend image."""
        with self._lock(spec.id):
            vm = self._live_one(spec.id)
            check(spec.id, Command.START, vm.phase if vm else Phase.STOPPED)
            if self.suspended(spec.id):
                return self._resume_warm(spec.id)
            machine = self._machine(spec)
            guest = GuestImage.at(self.guest_dir)
            if not machine.nbd_socket.exists():
                raise WorkspaceError(f"the disk service's socket {machine.nbd_socket} is missing",
                                     hint="start the node's disk service")  # fmt: skip
            try:
                self._prepare(spec)
                vm = self._launch(spec, machine, guest, incoming=False)
                self._live[spec.id] = vm
                return WorkspaceStatus(spec.id, Phase.RUNNING, vm.pid)
            except BaseException:
                self._teardown(spec.id)
                raise

    def _prepare(self, spec: WorkspaceSpec) -> None:
        d = self.dir(spec.id)
        for p in (self.root.parent, self.root):  # mkdir(parents=) would give parents 0755
            p.mkdir(mode=0o700, exist_ok=True)
        if d.exists():  # a boot cut short, or a VM killed: nothing in it is valid now
            shutil.rmtree(d)
        d.mkdir(mode=0o700)
        save_spec(d, spec)

    def _launch(self, spec: WorkspaceSpec, machine: Machine, guest: GuestImage, *,
                incoming: bool) -> _Vm:  # fmt: skip
        """Start QEMU for ``machine`` (booting, or waiting for a stream with
        ``incoming``) and connect QMP, and on a boot the agent."""
        for sock in (machine.qmp, machine.agent):
            sock.unlink(missing_ok=True)
        argv = qemu_argv(machine, guest, incoming=incoming)
        log = open(machine.dir / "qemu.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)  # fmt: skip
        except FileNotFoundError as e:
            raise WorkspaceError("QEMU is not installed", hint="run `make deps`") from e
        finally:
            log.close()
        stat = proc_stat(proc.pid)
        write_private(machine.dir / _VM, json.dumps(
            {"format": _STATE_FORMAT, "pid": proc.pid, "start": stat.start if stat else 0}
        ).encode())  # fmt: skip
        deadline = time.monotonic() + 10
        while not machine.qmp.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise WorkspaceError(f"QEMU did not start: {self._tail(machine)}")
            time.sleep(0.005)
        return self._connect(spec, machine, proc.pid, agent=not incoming, proc=proc)

    def _connect(self, spec: WorkspaceSpec, machine: Machine, pid: int, *, agent: bool,
                 proc: subprocess.Popen[bytes] | None = None) -> _Vm:  # fmt: skip
        pidfd = os.pidfd_open(pid)
        qmp = None
        try:
            qmp = QmpClient.connect(machine.qmp)
            vm = _Vm(spec, machine, pid, pidfd, qmp, None, Phase.RUNNING)
            if agent:
                vm.agent = self._agent(vm)
                try:  # the first request also hears a boot that failed inside
                    self._set_clock(vm.agent)
                except AgentError as e:
                    raise WorkspaceError(f"the VM did not boot: {e}",
                                         hint=self._tail(machine, qmp)) from e  # fmt: skip
            return vm
        except BaseException as e:
            if qmp is not None:
                qmp.close()
            os.close(pidfd)
            if proc is not None and proc.poll() is not None and isinstance(e, WorkspaceError):
                raise WorkspaceError(f"QEMU exited: {self._tail(machine)}") from e
            raise

    def _agent(self, vm: _Vm) -> AgentLink:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:  # in slices, so a QEMU that died is noticed at once
            try:
                return AgentLink.connect(vm.machine.agent, min(2.0, deadline - time.monotonic()))
            except AgentError:
                if not vm.alive():
                    raise WorkspaceError(
                        f"the VM stopped while booting: {self._tail(vm.machine)}"
                    ) from None
                if time.monotonic() >= deadline:
                    raise WorkspaceError(
                        f"the VM's agent did not answer in {BOOT_TIMEOUT:.0f} s: "
                        f"{self._tail(vm.machine, vm.qmp)}"
                    ) from None

    @staticmethod
    def _tail(machine: Machine, qmp: QmpClient | None = None) -> str:
        """The end of QEMU's log, and of the guest's console while QEMU still runs."""
        out = []
        with contextlib.suppress(OSError):
            with open(machine.dir / "qemu.log", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 600))
                text = f.read().decode(errors="replace").strip()
            if text:
                out.append(f"QEMU: {text}")
        if qmp is not None:
            with contextlib.suppress(QmpError):
                ring = qmp.execute("ringbuf-read", {"device": "console", "size": CONSOLE_BYTES})
                if isinstance(ring, str) and ring.strip():
                    out.append(f"console: {ring.strip()[-600:]}")
        return " | ".join(out) or "no output"

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

    def _run_quiet(self, vm: _Vm, argv: tuple[str, ...], timeout: float) -> None:
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
        pids = []
        if vm is not None:
            vm.release()
            pids.append(vm.pid)
        d = self.dir(workspace)
        with contextlib.suppress(OSError, ValueError, KeyError):
            rec = json.loads((d / _VM).read_bytes()[:4096])
            stat = proc_stat(int(rec["pid"]))
            if stat is not None and stat.start == int(rec["start"]):
                pids.append(int(rec["pid"]))
        for pid in set(pids):
            self._kill(pid)
        if d.exists():
            shutil.rmtree(d)

    @staticmethod
    def _kill(pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        VmRuntime._reap(pid)

    @staticmethod
    def _reap(pid: int) -> None:
        """Wait for ``pid`` if it is this process's child (an adopted QEMU is not)."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                if proc_stat(pid) is None:
                    return
                time.sleep(0.01)
                continue
            if done:
                return
            time.sleep(0.005)

    # -- reaching in -------------------------------------------------------------------

    def _link(self, vm: _Vm) -> AgentLink:
        if vm.agent is None or vm.agent.failure is not None:
            if vm.agent is not None:
                vm.agent.close()
            vm.agent = None
            vm.agent = AgentLink.connect(vm.machine.agent, 5.0)
        return vm.agent

    def exec(
        self,
        workspace: str,
        request: ExecRequest,
        *,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        vm = self._checked(workspace, Command.EXEC)
        link = self._link(vm)
        process = process_config(request)
        payload = exec_payload(request.argv, process["env"], process["cwd"], request.user,
                               request.user)  # fmt: skip
        return self._relay(link, payload, tty=False, stdin=stdin, stdout=stdout, stderr=stderr)

    @staticmethod
    def _relay(link: AgentLink, payload: bytes, *, tty: bool, stdin: Stdio, stdout: Stdio,
               stderr: Stdio) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start the relay process that stands for the command of ``payload``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = [sys.executable, "-m", "loft.runtime.vm_relay", *(["--tty"] if tty else []),
                str(theirs.fileno())]  # fmt: skip
        try:
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=stdin,
                                    stdout=stdout, stderr=stderr)  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            link.open_session(payload, ours, tty=tty)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return proc

    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        """``request`` on a new terminal in the guest, relayed to a host terminal whose
        master the caller gets (its resize reaches the guest's terminal)."""
        vm = self._checked(workspace, Command.PTY)
        master, slave = os.openpty()
        try:
            set_window_size(slave, size)
            process = process_config(request, size)
            payload = window_payload(size.rows, size.cols) + exec_payload(
                request.argv, process["env"], process["cwd"], request.user, request.user
            )
            proc = self._relay(self._link(vm), payload, tty=True, stdin=slave, stdout=slave,
                               stderr=slave)  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return PtySession(master, proc)

    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        self._checked(workspace, Command.FORWARD)
        raise NotSupported("port forwarding is not yet available for vm workspaces")

    def read_file(self, workspace: str, path: str, limit: int = _MAX_READ) -> bytes:
        """The contents of ``path`` inside the workspace (at most ``limit`` bytes)."""
        vm = self._checked(workspace, Command.EXEC)
        return self._link(vm).call(Type.READ_FILE, path.encode() + b"\0", limit=limit)

    def write_file(self, workspace: str, path: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``path`` inside the workspace with ``data`` (up to about 1 MiB)."""
        vm = self._checked(workspace, Command.EXEC)
        self._link(vm).call(Type.WRITE_FILE, write_file_payload(path, data, mode))

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

    def _cont(self, vm: _Vm) -> None:
        (vm.machine.dir / _SUSPEND).unlink(missing_ok=True)  # invalid once it runs
        (vm.machine.dir / _STATE).unlink(missing_ok=True)
        vm.qmp.execute("cont")
        vm.phase = Phase.RUNNING

    def freeze_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.FREEZE_FS)
            if vm.phase is not Phase.RUNNING:
                raise WorkspaceError(f"workspace {workspace} is paused: its agent cannot freeze",
                                     hint="freeze the filesystem before the processes")  # fmt: skip
            self._link(vm).call(Type.FSFREEZE, timeout=60)
            vm.fs_frozen = True

    def thaw_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            vm = self._checked(workspace, Command.THAW_FS)
            if vm.phase is not Phase.RUNNING:
                raise WorkspaceError(f"workspace {workspace} is paused: its agent cannot thaw",
                                     hint="thaw the processes first")  # fmt: skip
            self._link(vm).call(Type.FSTHAW)
            vm.fs_frozen = False

    def stats(self, workspace: str) -> Stats:
        """QEMU's own use: resident memory (the guest's touched RAM and QEMU's heap) and
        CPU time; the guest's processes are not counted one by one."""
        vm = self._checked(workspace, Command.STATS)
        status = Path(f"/proc/{vm.pid}/status").read_text()
        fields = {k: v.split() for k, _, v in (line.partition(":") for line in status.splitlines())}
        stat = Path(f"/proc/{vm.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return Stats(
            memory=int(fields["VmRSS"][0]) << 10,
            memory_peak=int(fields["VmHWM"][0]) << 10,
            memory_limit=vm.machine.memory_mib << 20,
            cpu_ns=(int(stat[11]) + int(stat[12])) * 10**9 // tick,
            cpu_periods=0,
            cpu_throttled_periods=0,
            cpu_throttled_ns=0,
            pids=int(fields["Threads"][0]),
            pids_limit=0,
        )

    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        self._checked(workspace, Command.SNAPSHOT)
        raise NotSupported("snapshots with memory are not yet available for vm workspaces",
                           hint="suspend it, or snapshot its volume")  # fmt: skip

    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot) -> WorkspaceStatus:
        if snapshot.kind != self.kind:
            raise NotSupported(f"a {snapshot.kind} snapshot cannot restore a {self.kind}")
        raise NotSupported("restoring a vm snapshot with memory is not yet available")

    # -- suspend and resume ------------------------------------------------------------

    def suspend(self, workspace: str, *, keep: bool = False) -> float:
        """Save the VM's state beside its RAM file; with ``keep`` QEMU stays, paused
        (a hot resume is then ``cont``), else it quits and the image stays for a warm
        resume. Returns the seconds the save took."""
        with self._lock(workspace):
            vm = self._checked(workspace, Command.SNAPSHOT)
            d = vm.machine.dir
            if vm.phase is Phase.RUNNING:
                vm.qmp.execute("stop")
                vm.phase = Phase.PAUSED
            t0 = time.monotonic()
            _save(vm.qmp, d / _STATE)
            seconds = time.monotonic() - t0
            digest = _sha256(d / _STATE)
            write_private(d / _SUSPEND, json.dumps(
                {"format": _STATE_FORMAT, "workspace": workspace, "sha256": digest,
                 "memory": vm.machine.memory_mib}
            ).encode())  # fmt: skip
            if not keep:
                with contextlib.suppress(QmpError):
                    vm.qmp.execute("quit")
                self._live.pop(workspace, None)
                vm.release()
                self._reap(vm.pid)
                self._kill(vm.pid)
                (d / _VM).unlink(missing_ok=True)
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
        try:
            meta = json.loads((d / _SUSPEND).read_bytes()[:4096])
            spec = load_spec(d)
            if meta.get("format") != _STATE_FORMAT or meta.get("workspace") != workspace:
                raise ValueError("not this workspace's image")
            digest = str(meta["sha256"])
        except (OSError, ValueError, KeyError) as e:
            raise WorkspaceError(
                f"workspace {workspace} has no usable suspend image: {e}",
                hint="stop it (the image is lost) and start it afresh",
            ) from e
        state = d / _STATE
        if not state.is_file() or state.stat().st_size > _MAX_STATE or _sha256(state) != digest:
            raise WorkspaceError(
                f"workspace {workspace}'s suspend image is damaged (its state file does not "
                "match what was saved)",
                hint="stop it (the memory image is lost) and start it afresh",
            )
        machine = self._machine(spec)
        guest = GuestImage.at(self.guest_dir)
        vm = None
        try:
            vm = self._launch(spec, machine, guest, incoming=True)
            _load(vm.qmp, state)
            self._cont(vm)
            vm.agent = self._agent(vm)
            self._after_restore(vm)
        except BaseException:
            if vm is not None:
                vm.release()
                self._kill(vm.pid)
            (d / _VM).unlink(missing_ok=True)
            raise
        self._live[workspace] = vm
        return WorkspaceStatus(workspace, Phase.RUNNING, vm.pid)

    def _after_restore(self, vm: _Vm) -> None:
        """The guest's clock stood still while it was saved, and a restored RNG state
        repeats: set the one, reseed the other."""
        link = self._link(vm)
        self._set_clock(link)
        link.call(Type.RESEED, secrets.token_bytes(64))

    @staticmethod
    def _set_clock(link: AgentLink) -> None:
        now = time.time_ns()
        link.call(Type.SET_CLOCK, struct.pack(">QI", now // 10**9, now % 10**9))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _migration(qmp: QmpClient, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + SAVE_TIMEOUT
    while True:
        info: dict[str, Any] = qmp.execute("query-migrate") or {}
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            raise WorkspaceError(f"{what} failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            raise WorkspaceError(f"{what} did not finish in {SAVE_TIMEOUT:.0f} s")
        time.sleep(0.005)


def _capabilities(qmp: QmpClient) -> None:
    qmp.execute("migrate-set-capabilities",
                {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})  # fmt: skip


def _save(qmp: QmpClient, state: Path) -> None:
    """Migrate the stopped VM's device state (RAM is shared, so skipped) into ``state``."""
    _capabilities(qmp)
    # The default 128 MiB/s would throttle a VM whose RAM is not shared.
    qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    tmp = state.with_name(state.name + ".tmp")
    tmp.unlink(missing_ok=True)
    qmp.execute("migrate", {"uri": f"exec:cat > {_shell_quote(tmp)}"})
    _migration(qmp, "saving the VM")
    os.chmod(tmp, 0o600)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, state)


def _load(qmp: QmpClient, state: Path) -> None:
    _capabilities(qmp)
    qmp.execute("migrate-incoming", {"uri": f"exec:cat {_shell_quote(state)}"})
    try:
        _migration(qmp, "loading the VM's state")
    except QmpError as e:  # QEMU exits when a load fails
        raise WorkspaceError(f"loading the VM's state failed: {e}",
                             hint="its suspend image is damaged") from e  # fmt: skip


def _shell_quote(path: Path) -> str:
    """``path`` for QEMU's ``exec:`` migration URI, which runs ``/bin/sh -c``."""
    return "'" + str(path).replace("'", "'\\''") + "'"

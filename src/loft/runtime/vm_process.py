"""One VM's QEMU process: launch it, connect QMP and the guest agent, adopt one that
outlived its runtime, read its log, console and resource use, kill and reap it.

QEMU runs in a session of its own (so neither a stopped agent nor its terminal takes it
down); its pid and start time go to ``vm.json`` in the VM's directory the moment it is
started, so a restarted runtime finds it (:func:`attach`) or kills exactly it, never a
process that reused the pid. A pidfd tells when it has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from loft.procfs import proc_stat
from loft.runtime.egress import enter_netns
from loft.runtime.errors import WorkspaceError
from loft.runtime.forward import Forwarder
from loft.runtime.interface import Stats
from loft.runtime.persist import write_private
from loft.runtime.phase import Phase
from loft.runtime.qmp import QmpClient, QmpError
from loft.runtime.spec import WorkspaceSpec
from loft.runtime.vm_agent import AgentError, AgentLink
from loft.runtime.vm_net import STACK_PID, open_network, stop_recorded_stack
from loft.runtime.vm_protocol import Type
from loft.runtime.vm_qemu import CONSOLE_BYTES, GuestImage, Machine, qemu_argv

__all__ = [
    "BOOT_TIMEOUT",
    "VM_RECORD",
    "VmProcess",
    "agent_link",
    "attach",
    "connect_agent",
    "kill_recorded",
    "launch",
    "launch_networked",
    "reap",
    "recorded_pid",
    "set_clock",
    "stats",
    "tail",
]

#: Boot to agent ready under TCG takes about 2.5 s here; a busy machine can triple it.
BOOT_TIMEOUT = 30.0
#: The record of the running QEMU in a VM's directory.
VM_RECORD = "vm.json"
_FORMAT = 1


@dataclass
class VmProcess:
    """A running QEMU of workspace ``spec`` and the connections to it."""

    spec: WorkspaceSpec
    machine: Machine
    pid: int
    pidfd: int
    qmp: QmpClient
    agent: AgentLink | None
    phase: Phase
    fs_frozen: bool = False
    forwarders: list[Forwarder] = field(default_factory=list)
    #: The slirp4netns of its network namespace when this runtime started it (an
    #: adopted one is known by its recorded pid only).
    stack: subprocess.Popen[bytes] | None = None

    def alive(self, wait: float = 0) -> bool:
        """Whether QEMU still runs (waiting up to ``wait`` seconds for it to exit)."""
        return not select.select([self.pidfd], [], [], wait)[0]

    def kill(self) -> None:
        """SIGKILL this very QEMU (through its pidfd: never a process that reused its
        pid), reap it, and close the connections."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        reap(self.pid)
        self.release()
        self.stop_stack()

    def stop_stack(self) -> None:
        """Stop the VM's network stack, if it has one (its namespace went with QEMU)."""
        if self.stack is not None:
            self.stack.terminate()
            self.stack.wait()
            self.stack = None
        stop_recorded_stack(self.machine.dir)

    def release(self) -> None:
        """Close the forwarders, the connections and the pidfd (QEMU itself is left as
        it is)."""
        for fwd in self.forwarders:
            fwd.close()
        self.forwarders.clear()
        if self.agent is not None:
            self.agent.close()
            self.agent = None
        self.qmp.close()
        with contextlib.suppress(OSError):
            os.close(self.pidfd)


def launch(spec: WorkspaceSpec, machine: Machine, guest: GuestImage, *,
           incoming: bool, netns: int | None = None) -> VmProcess:  # fmt: skip
    """Start QEMU for ``machine`` (booting, or waiting for a stream with
    ``incoming``), in the network namespace of descriptor ``netns`` when given, and
    connect QMP, and on a boot the agent."""
    for sock in (machine.qmp, machine.agent):
        sock.unlink(missing_ok=True)
    argv = qemu_argv(machine, guest, incoming=incoming)
    log = open(machine.dir / "qemu.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True,
                                pass_fds=[] if netns is None else [netns],
                                preexec_fn=None if netns is None else lambda: enter_netns(netns),
                                )  # fmt: skip
    except FileNotFoundError as e:
        raise WorkspaceError("QEMU is not installed", hint="run `make deps`") from e
    finally:
        log.close()
    stat = proc_stat(proc.pid)
    write_private(machine.dir / VM_RECORD, json.dumps(
        {"format": _FORMAT, "pid": proc.pid, "start": stat.start if stat else 0}
    ).encode())  # fmt: skip
    deadline = time.monotonic() + 10
    while not machine.qmp.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise WorkspaceError(f"QEMU did not start: {tail(machine)}")
        time.sleep(0.005)
    return attach(spec, machine, proc.pid, agent=not incoming, proc=proc)


def launch_networked(spec: WorkspaceSpec, machine: Machine, guest: GuestImage, *,
                     incoming: bool, egress_netns: Path | None) -> VmProcess:  # fmt: skip
    """:func:`launch`, for a VM with a NIC in a network namespace made for it (its
    policy loaded, its stack up, in ``egress_netns``) before QEMU starts in it."""
    if machine.mac is None:
        return launch(spec, machine, guest, incoming=incoming)
    netns, stack = open_network(spec.deny, machine.dir, egress_netns)
    try:
        vm = launch(spec, machine, guest, incoming=incoming, netns=netns)
    except BaseException:
        stack.terminate()
        stack.wait()
        (machine.dir / STACK_PID).unlink(missing_ok=True)
        raise
    finally:
        os.close(netns)  # QEMU holds the namespace now
    vm.stack = stack
    return vm


def attach(spec: WorkspaceSpec, machine: Machine, pid: int, *, agent: bool,
           proc: subprocess.Popen[bytes] | None = None) -> VmProcess:  # fmt: skip
    """Connect to the QEMU ``pid`` of ``machine`` (one this runtime started, ``proc``,
    or one that outlived a runtime), and with ``agent`` to its guest agent."""
    pidfd = os.pidfd_open(pid)
    qmp = None
    try:
        qmp = QmpClient.connect(machine.qmp)
        vm = VmProcess(spec, machine, pid, pidfd, qmp, None, Phase.RUNNING)
        if agent:
            vm.agent = connect_agent(vm)
            try:  # the first request also hears a boot that failed inside
                set_clock(vm.agent)
            except AgentError as e:
                raise WorkspaceError(f"the VM did not boot: {e}",
                                     hint=tail(machine, qmp)) from e  # fmt: skip
        return vm
    except BaseException as e:
        if qmp is not None:
            qmp.close()
        os.close(pidfd)
        if proc is not None and proc.poll() is not None and isinstance(e, WorkspaceError):
            raise WorkspaceError(f"QEMU exited: {tail(machine)}") from e
        raise


def connect_agent(vm: VmProcess) -> AgentLink:
    """Connect to a booting or restored VM's agent, as long as its QEMU runs, for up to
    :data:`BOOT_TIMEOUT`."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:  # in slices, so a QEMU that died is noticed at once
        try:
            return AgentLink.connect(vm.machine.agent, min(2.0, deadline - time.monotonic()))
        except AgentError:
            if not vm.alive():
                raise WorkspaceError(f"the VM stopped while booting: {tail(vm.machine)}") from None
            if time.monotonic() >= deadline:
                raise WorkspaceError(
                    f"the VM's agent did not answer in {BOOT_TIMEOUT:.0f} s: "
                    f"{tail(vm.machine, vm.qmp)}"
                ) from None


def agent_link(vm: VmProcess) -> AgentLink:
    """The connection to ``vm``'s agent, made again when it failed or there is none (a
    paused VM's is made on first use)."""
    if vm.agent is None or vm.agent.failure is not None:
        if vm.agent is not None:
            vm.agent.close()
        vm.agent = None
        vm.agent = AgentLink.connect(vm.machine.agent, 5.0)
    return vm.agent


def stats(vm: VmProcess) -> Stats:
    """QEMU's own use: resident memory (the guest's touched RAM and QEMU's heap) and
    CPU time; the guest's processes are not counted one by one."""
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


def tail(machine: Machine, qmp: QmpClient | None = None) -> str:
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


def kill_recorded(directory: Path) -> None:
    """SIGKILL and reap the QEMU recorded in ``directory``, if that very process runs."""
    pid = recorded_pid(directory)
    if pid is None:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if recorded_pid(directory) == pid:  # still that process, now pinned by the pidfd
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)
    reap(pid)


def reap(pid: int) -> None:
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


def set_clock(link: AgentLink) -> None:
    """Set the guest's clock to the host's."""
    now = time.time_ns()
    link.call(Type.SET_CLOCK, struct.pack(">QI", now // 10**9, now % 10**9))


def recorded_pid(directory: Path) -> int | None:
    """The pid of the QEMU recorded in ``directory`` if that very process still runs."""
    try:
        rec = json.loads((directory / VM_RECORD).read_bytes()[:4096])
        pid, start = int(rec["pid"]), int(rec["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    stat = proc_stat(pid)
    return pid if stat is not None and stat.start == start else None

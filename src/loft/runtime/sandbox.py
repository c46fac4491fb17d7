"""The ``sandbox`` runtime: each workspace a container on runc (see docs/runtime.md).

The controller: every command first checks the workspace's phase against
:data:`loft.runtime.phase.ALLOWED`, and phase-changing commands hold the workspace's lock,
so two callers cannot start or stop one workspace at once. runc is the source of truth
for what runs (its state lives under the data dir and outlives the agent: :meth:`adopt`);
what runc does not keep (the spec, the network namespace, forwarders, the ``nat`` stack,
a frozen filesystem) is held per running workspace in :class:`_Live`.

Start: check the root filesystem's mount, create the directories, the usr-merge links,
``config.json`` and ``workspace.json``; stage the idmapped root and the store
(:func:`loft.runtime.layout.staged`), ``runc create``; with ``nat``, the egress policy and
the stack (:mod:`loft.runtime.egress`); ``runc start``; seed ``/etc`` and ``/home/runner``
on a first start (:mod:`loft.runtime.seed`). Whatever fails on the way,
the container is deleted and the directories removed; there are no host mounts to undo.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loft.libc import syncfs_path
from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.console import PtySession, on_new_pty
from loft.runtime.egress import NAMESERVER, apply_ruleset, egress_ruleset, start_stack, stop_stack
from loft.runtime.errors import NotSupported, UnknownWorkspace, WorkspaceError
from loft.runtime.forward import Forwarder, connect_in
from loft.runtime.freeze import freeze, thaw
from loft.runtime.interface import Runtime, RuntimeSnapshot, Stats, WorkspaceStatus
from loft.runtime.layout import RuntimeDirs, check_rootfs, merge_usr, staged
from loft.runtime.oci import bundle_config, cgroup_path, process_config
from loft.runtime.persist import load_spec, save_spec, write_private
from loft.runtime.phase import Command, Phase, check
from loft.runtime.runc import Runc, Stdio
from loft.runtime.seed import SEED_SCRIPT, needs_seed
from loft.runtime.spec import ExecRequest, Network, WindowSize, WorkspaceSpec

__all__ = ["SandboxRuntime", "catatonit"]

_STOP_POLL = 0.02  # seconds between looks at a stopping container


def catatonit() -> str:
    """The host's ``catatonit``, the containers' init (static: it needs nothing inside)."""
    exe = shutil.which("catatonit")
    if exe is None:
        raise WorkspaceError("catatonit is not installed", hint="run `make deps`")
    return exe


@dataclass
class _Live:
    """What the runtime holds for a running workspace beyond runc's state: a pidfd and
    the network namespace of its init (both stay valid for that very process, never a
    later one with a reused pid), its forwarders, its userspace network stack (``nat``,
    when this runtime started it), and whether its filesystem is frozen."""

    spec: WorkspaceSpec
    pid: int
    phase: Phase
    pidfd: int
    netns: int
    forwarders: list[Forwarder] = field(default_factory=list)
    fs_frozen: bool = False
    stack: subprocess.Popen[bytes] | None = None

    @classmethod
    def open(cls, spec: WorkspaceSpec, pid: int, phase: Phase) -> _Live:
        pidfd = os.pidfd_open(pid)
        try:
            netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(pidfd)
            raise
        return cls(spec, pid, phase, pidfd, netns)

    def alive(self) -> bool:
        """Whether the init still runs (a pidfd turns readable when it exits)."""
        return not select.select([self.pidfd], [], [], 0)[0]

    def release(self) -> None:
        for fwd in self.forwarders:
            fwd.close()
        self.forwarders.clear()
        if self.stack is not None:
            self.stack.terminate()
            self.stack.wait()
        for fd in (self.netns, self.pidfd):
            with contextlib.suppress(OSError):
                os.close(fd)


class SandboxRuntime(Runtime):
    """Workspaces as runc containers, with state under ``data_dir``."""

    kind = "sandbox"

    def __init__(self, data_dir: Path, *, runc: Runc | None = None, init: str | None = None,
                 egress_netns: Path | None = None) -> None:  # fmt: skip
        """``egress_netns``: the network namespace (a path such as ``/run/netns/NAME``) the
        userspace stacks of ``nat`` workspaces run in; default: the agent's."""
        self.dirs = RuntimeDirs(data_dir)
        self.egress_netns = egress_netns
        self.runc = runc or Runc(self.dirs.runc_root)
        self.init = init or catatonit()
        self._live: dict[str, _Live] = {}
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._table = threading.Lock()

    # -- phases ------------------------------------------------------------------------

    def _lock(self, workspace: str) -> threading.RLock:
        with self._table:
            return self._locks[workspace]

    def _live_one(self, workspace: str) -> _Live | None:
        """What is held for ``workspace``, unless its init has died meanwhile (the OOM
        killer, a kill from the host): then runc says it is stopped."""
        live = self._live.get(workspace)
        if live is not None and not live.alive():
            self._live.pop(workspace, None)
            live.release()
            return None
        return live

    def _phase(self, workspace: str) -> Phase:
        live = self._live_one(workspace)
        if live is not None:
            return live.phase
        state = self.runc.state(workspace)
        return Phase.STOPPED if state is None else state.phase

    def _checked(self, workspace: str, command: Command) -> _Live:
        """The live workspace, when its phase allows ``command``; a running one this
        runtime did not start (another agent's, before a restart) is adopted first."""
        live = self._live_one(workspace)
        if live is None:
            # Under the workspace's lock: a stop in flight has already forgotten the
            # workspace while runc still lists it, and adopting it then would race its end.
            with self._lock(workspace):
                live = self._live_one(workspace)
                state = None if live else self.runc.state(workspace)
                phase = state.phase if state else Phase.STOPPED
                if state is not None and phase in (Phase.RUNNING, Phase.PAUSED):
                    live = self._adopt_one(workspace, state.pid, phase)
                    phase = live.phase if live else Phase.STOPPED
                if live is None:
                    check(workspace, command, phase)
                    raise UnknownWorkspace(f"workspace {workspace} is not running here")
        check(workspace, command, live.phase)
        return live

    def status(self, workspace: str) -> WorkspaceStatus:
        live = self._live_one(workspace)
        if live is not None:
            return WorkspaceStatus(workspace, live.phase, live.pid)
        state = self.runc.state(workspace)
        if state is None:
            return WorkspaceStatus(workspace, Phase.STOPPED, 0)
        return WorkspaceStatus(workspace, state.phase, state.pid)

    # -- life --------------------------------------------------------------------------

    def _adopt_one(self, workspace: str, pid: int, phase: Phase) -> _Live | None:
        """Hold ``workspace`` again; None when its init ended since runc listed it."""
        try:
            live = _Live.open(load_spec(self.dirs.bundle(workspace)), pid, phase)
        except (FileNotFoundError, ProcessLookupError):
            return None
        self._live[workspace] = live
        return live

    def adopt(self) -> list[WorkspaceStatus]:
        running = []
        known = set()
        for state in self.runc.list():
            known.add(state.id)
            if state.id in self._live:
                running.append(self.status(state.id))
            elif state.phase in (Phase.RUNNING, Phase.PAUSED) and self._adopt_one(
                state.id, state.pid, state.phase
            ):
                running.append(WorkspaceStatus(state.id, state.phase, state.pid))
            else:  # cut short while starting, or its init died: nothing to keep
                self.stop(state.id, grace=0)
        bundles = self.dirs.root / "bundles"
        for leftover in sorted(os.listdir(bundles)) if bundles.is_dir() else []:
            if leftover not in known:
                self.dirs.remove(leftover)
        return running

    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        with self._lock(spec.id):
            live = self._live_one(spec.id)
            state = None if live else self.runc.state(spec.id)
            phase = live.phase if live else state.phase if state else Phase.STOPPED
            check(spec.id, Command.START, phase)
            self._check_inputs(spec)
            try:
                return self._start(spec, leftover=state is not None)
            except BaseException:
                self._teardown(spec.id)
                raise

    def _check_inputs(self, spec: WorkspaceSpec) -> None:
        check_rootfs(spec.rootfs)
        missing = [p for p in spec.env.closure
                   if not (spec.env.store_dir / spec.env.basename(p)).is_dir()]  # fmt: skip
        if missing:
            raise WorkspaceError(f"environment paths are missing from the store: {missing[0]}",
                                 hint="realise the environment first")  # fmt: skip

    def _start(self, spec: WorkspaceSpec, leftover: bool) -> WorkspaceStatus:
        if leftover:  # a stopped container of that name (its init died)
            self.runc.delete(spec.id)
        self.dirs.prepare(spec)
        merge_usr(spec.rootfs)
        bundle = self.dirs.bundle(spec.id)
        config = bundle_config(spec, self.dirs, self.init)
        write_private(bundle / "config.json", json.dumps(config, indent=1).encode())
        save_spec(bundle, spec)
        with staged(spec, self.dirs) as stage:
            pid = self.runc.create(spec.id, bundle, preexec_fn=stage.enter,
                                   pass_fds=stage.fds)  # fmt: skip
        live = self._live[spec.id] = _Live.open(spec, pid, Phase.CREATED)
        nat = spec.network is Network.NAT
        if nat:  # before the init runs anything of the tenant's
            apply_ruleset(live.netns, egress_ruleset(spec.deny))
            live.stack = start_stack(pid, bundle / "stack.log", self.egress_netns)
            (bundle / "stack.pid").write_text(str(live.stack.pid))
        self.runc.start(spec.id)
        live.phase = Phase.RUNNING
        etc = spec.env.store_dir / spec.env.basename(spec.env.path) / "etc"
        if needs_seed(spec.rootfs, os.listdir(etc) if etc.is_dir() else [], nat):
            env = {"LOFT_NAMESERVER": NAMESERVER} if nat else {}
            seed = ExecRequest(("/usr/bin/sh", "-c", SEED_SCRIPT), user=0, cwd="/", env=env)
            done = self.run(spec.id, seed, timeout=60)
            if done.status != 0:
                raise WorkspaceError(f"preparing workspace {spec.id}'s filesystem failed: "
                                     f"{done.stderr.decode(errors='replace')[-500:]}")  # fmt: skip
        return WorkspaceStatus(spec.id, Phase.RUNNING, pid)

    def stop(self, workspace: str, *, grace: float = 5.0) -> None:
        with self._lock(workspace):
            check(workspace, Command.STOP, self._phase(workspace))
            self._teardown(workspace, grace)

    def _teardown(self, workspace: str, grace: float = 0.0) -> None:
        """Stop and forget ``workspace`` whatever state it is in (also a start cut short)."""
        live = self._live.pop(workspace, None)
        spec = live.spec if live else _saved_spec(self.dirs.bundle(workspace))
        if live is not None:
            live.release()
        if spec is not None:
            # A frozen filesystem would hold the dying processes' writes forever.
            with contextlib.suppress(OSError):
                thaw(spec.rootfs)
        state = self.runc.state(workspace)
        if state is not None:
            if state.phase is Phase.PAUSED:
                self.runc.resume(workspace)
            if state.phase in (Phase.RUNNING, Phase.PAUSED) and grace > 0:
                self._terminate(workspace, grace)
            self.runc.delete(workspace)
        with contextlib.suppress(OSError, ValueError):  # an adopted workspace's stack
            stop_stack(int((self.dirs.bundle(workspace) / "stack.pid").read_text()))
        for d in cgroup_dirs(cgroup_path(workspace)):
            with contextlib.suppress(OSError):
                d.rmdir()  # only ever empty: runc delete killed every task in it
        self.dirs.remove(workspace)

    def _terminate(self, workspace: str, grace: float) -> None:
        """SIGTERM to every process, and wait up to ``grace`` for the init to go."""
        with contextlib.suppress(WorkspaceError):
            self.runc.kill(workspace, "TERM", every=True)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            state = self.runc.state(workspace)
            if state is None or state.phase is Phase.STOPPED:
                return
            time.sleep(_STOP_POLL)

    # -- reaching in -------------------------------------------------------------------

    def exec(
        self,
        workspace: str,
        request: ExecRequest,
        *,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        self._checked(workspace, Command.EXEC)
        process = process_config(request)
        with _process_fd(process) as fd:
            return self.runc.exec(workspace, fd, umask=process["user"]["umask"], stdin=stdin,
                                  stdout=stdout, stderr=stderr)  # fmt: skip

    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        self._checked(workspace, Command.PTY)
        process = process_config(request, size)

        def spawn(slave: int) -> subprocess.Popen[bytes]:
            with _process_fd(process) as fd:
                return self.runc.exec(workspace, fd, tty=True, umask=process["user"]["umask"],
                                      stdin=slave, stdout=slave, stderr=slave)  # fmt: skip

        return on_new_pty(size, spawn)

    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        live = self._checked(workspace, Command.FORWARD)
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        fwd = Forwarder(listener, lambda: connect_in(live.netns, port))
        live.forwarders.append(fwd)
        return fwd

    def connect(self, workspace: str, port: int, timeout: float = 10.0) -> socket.socket:
        live = self._checked(workspace, Command.FORWARD)
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        return connect_in(live.netns, port, timeout)

    # -- freezing and stats ------------------------------------------------------------

    def freeze(self, workspace: str) -> None:
        with self._lock(workspace):
            live = self._checked(workspace, Command.FREEZE)
            self.runc.pause(workspace)
            live.phase = Phase.PAUSED

    def thaw(self, workspace: str) -> None:
        with self._lock(workspace):
            live = self._checked(workspace, Command.THAW)
            self.runc.resume(workspace)
            live.phase = Phase.RUNNING

    def freeze_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            live = self._checked(workspace, Command.FREEZE_FS)
            syncfs_path(live.spec.rootfs)  # the bulk written back while writers still run
            freeze(live.spec.rootfs)
            live.fs_frozen = True

    def thaw_filesystem(self, workspace: str) -> None:
        with self._lock(workspace):
            live = self._checked(workspace, Command.THAW_FS)
            thaw(live.spec.rootfs)
            live.fs_frozen = False

    def stats(self, workspace: str) -> Stats:
        self._checked(workspace, Command.STATS)
        return _stats(self.runc.stats(workspace))

    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        self._checked(workspace, Command.SNAPSHOT)
        return RuntimeSnapshot(self.kind)

    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot) -> WorkspaceStatus:
        if snapshot.kind != self.kind:
            raise NotSupported(f"a {snapshot.kind} snapshot cannot restore a {self.kind}")
        return self.start(spec)


@contextlib.contextmanager
def _process_fd(process: dict[str, Any]) -> Iterator[int]:
    """An OCI process document in a memory file, for ``runc exec --process``."""
    fd = os.memfd_create("loft-process")
    try:
        os.write(fd, json.dumps(process).encode())
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _saved_spec(bundle: Path) -> WorkspaceSpec | None:
    try:
        return load_spec(bundle)
    except (OSError, WorkspaceError):
        return None


def _stats(data: dict[str, Any]) -> Stats:
    """:class:`Stats` from ``runc events --stats`` (the same shape on cgroup v1 and v2)."""
    mem = data.get("memory", {}).get("usage", {})
    cpu = data.get("cpu", {})
    thr = cpu.get("throttling", {})
    pids = data.get("pids", {})
    return Stats(
        memory=int(mem.get("usage", 0)),
        memory_peak=int(mem.get("max", 0)),
        memory_limit=int(mem.get("limit", 0)),
        cpu_ns=int(cpu.get("usage", {}).get("total", 0)),
        cpu_periods=int(thr.get("periods", 0)),
        cpu_throttled_periods=int(thr.get("throttledPeriods", 0)),
        cpu_throttled_ns=int(thr.get("throttledTime", 0)),
        pids=int(pids.get("current", 0)),
        pids_limit=int(pids.get("limit", 0)),
    )

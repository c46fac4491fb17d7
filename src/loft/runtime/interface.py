"""The runtime interface: one set of commands for every kind of workspace computer.

``sandbox`` (:class:`loft.runtime.sandbox.SandboxRuntime`, runc) implements it now; the
``vm`` kind (QEMU) will implement the same. Every method names the workspace by id and is
refused (:class:`~loft.runtime.PhaseError`) in a phase that does not allow it (the table
is :data:`loft.runtime.phase.ALLOWED`). A typical life, as the node agent drives it::

    rt = SandboxRuntime(data_dir)
    rt.adopt()                                  # after an agent restart: what still runs
    rt.start(spec)                              # STOPPED -> RUNNING
    done = rt.run("ws1", ExecRequest(("id",)))  # exit status and output
    session = rt.pty("ws1", ExecRequest(("bash", "-l")), WindowSize(40, 120))
    rt.freeze("ws1"); rt.freeze_filesystem("ws1")   # then snapshot the volume
    rt.thaw_filesystem("ws1"); rt.thaw("ws1")
    rt.stop("ws1")                              # -> STOPPED; nothing left behind
"""

from __future__ import annotations

import abc
import signal
import socket
import subprocess
from dataclasses import dataclass
from typing import ClassVar

from loft.runtime.console import PtySession
from loft.runtime.forward import Forwarder
from loft.runtime.phase import Phase
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, WindowSize, WorkspaceSpec

__all__ = ["DETACHED", "Completed", "Runtime", "RuntimeSnapshot", "Stats", "WorkspaceStatus"]

#: The return code of a kept command's handle (:meth:`Runtime.exec_kept`) once the
#: runtime stops relaying it while the command may run on (a VM saved with its memory):
#: death by SIGUSR1, never a status of the command's own.
DETACHED = -signal.SIGUSR1


@dataclass(frozen=True)
class WorkspaceStatus:
    """A workspace's phase, and the host pid of its init (0 when none runs)."""

    id: str
    phase: Phase
    pid: int


@dataclass(frozen=True)
class Completed:
    """What a command run to its end left: its exit status (128 + N when killed by
    signal N) and output."""

    status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class Stats:
    """A workspace's resource use, from its cgroup: memory in bytes (now, peak, limit),
    CPU time in nanoseconds and how often its quota throttled it, tasks (now, limit)."""

    memory: int
    memory_peak: int
    memory_limit: int
    cpu_ns: int
    cpu_periods: int
    cpu_throttled_periods: int
    cpu_throttled_ns: int
    pids: int
    pids_limit: int


@dataclass(frozen=True)
class RuntimeSnapshot:
    """What a runtime adds to a volume snapshot: nothing for a sandbox (its disk is its
    whole state; processes restart), device and memory state for a VM. Plain and
    versioned so the agent can store it beside the volume snapshot."""

    kind: str
    format: int = 1
    state: bytes = b""


class Runtime(abc.ABC):
    """Start, stop and reach workspaces of one kind on this node."""

    kind: ClassVar[str]

    @abc.abstractmethod
    def adopt(self) -> list[WorkspaceStatus]:
        """Take over every workspace this node's runtime still runs (after a restart of
        the agent), and clean those left half started; returns what runs."""

    @abc.abstractmethod
    def status(self, workspace: str) -> WorkspaceStatus:
        """The workspace's phase (``STOPPED`` for one that does not run)."""

    @abc.abstractmethod
    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        """Start the workspace: STOPPED -> RUNNING. Leaves nothing behind when it fails."""

    @abc.abstractmethod
    def stop(self, workspace: str, *, grace: float = 5.0) -> None:
        """SIGTERM every process, SIGKILL what is left after ``grace`` seconds, and remove
        every trace (container, cgroup, mounts, forwarders): any phase -> STOPPED."""

    @abc.abstractmethod
    def exec(
        self,
        workspace: str,
        request: ExecRequest,
        *,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``request`` in the workspace with these standard streams (as for
        :class:`subprocess.Popen`); the handle's exit status is the command's."""

    def exec_kept(self, workspace: str, request: ExecRequest, *, stdout: Stdio = None,
                  stderr: Stdio = None) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start ``request`` with no input, its output kept by the runtime when no one
        reads it, for :meth:`attach_kept` once the workspace comes back from memory
        (the workspace's ``[run] command``). Here: :meth:`exec`."""
        return self.exec(workspace, request, stdin=subprocess.DEVNULL, stdout=stdout,
                         stderr=stderr)  # fmt: skip

    def attach_kept(self, workspace: str, *, stdout: Stdio = None,
                    stderr: Stdio = None) -> subprocess.Popen[bytes] | None:  # fmt: skip
        """The kept command of a workspace that came back from memory: what it wrote
        since, then on; None when the runtime keeps none (here: processes do not
        outlive a stop)."""
        return None

    def run(self, workspace: str, request: ExecRequest, input: bytes = b"",
            timeout: float | None = None) -> Completed:  # fmt: skip
        """Run ``request`` to its end with ``input`` on its standard input."""
        proc = self.exec(workspace, request, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)  # fmt: skip
        try:
            out, err = proc.communicate(input, timeout)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return Completed(proc.returncode, out, err)

    @abc.abstractmethod
    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        """Start ``request`` on a new terminal of ``size``; the caller gets the master."""

    @abc.abstractmethod
    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        """Relay connections accepted on ``listener`` to ``127.0.0.1:port`` inside the
        workspace, until the forwarder is closed or the workspace stops."""

    @abc.abstractmethod
    def connect(self, workspace: str, port: int, timeout: float = 10.0) -> socket.socket:
        """One TCP connection to ``127.0.0.1:port`` inside the workspace (blocking mode);
        :class:`ConnectionRefusedError` when nothing listens there."""

    @abc.abstractmethod
    def freeze(self, workspace: str) -> None:
        """Stop every process of the workspace where it is: RUNNING -> PAUSED."""

    @abc.abstractmethod
    def thaw(self, workspace: str) -> None:
        """Let them run again: PAUSED -> RUNNING."""

    @abc.abstractmethod
    def freeze_filesystem(self, workspace: str) -> None:
        """Flush the workspace's root filesystem and hold every write to it (for a
        consistent volume snapshot), until :meth:`thaw_filesystem`."""

    @abc.abstractmethod
    def thaw_filesystem(self, workspace: str) -> None:
        """Let writes to the workspace's root filesystem through again."""

    @abc.abstractmethod
    def stats(self, workspace: str) -> Stats:
        """The workspace's resource use."""

    @abc.abstractmethod
    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        """The runtime's part of a snapshot (taken between the freezes)."""

    @abc.abstractmethod
    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot) -> WorkspaceStatus:
        """Start the workspace from a restored volume and the runtime's part."""

"""The node's runtimes, one per kind (``sandbox``, ``vm``), behind one :class:`Runtime`.

Every workspace record names its kind, so each call goes to the runtime of the
workspace's kind, looked up by id: the agent's flows, sessions and reconciler call one
runtime and never branch on the kind for what both kinds do alike (exec, a terminal, a
connection, stats). What only a VM does (suspend, memory snapshots, a live fork) the
flows ask of :meth:`Runtimes.vm`. A workspace with no record (an orphan a crash left) is
sent to the runtime that reported it at :meth:`adopt`.

A kind whose programs are missing is a :class:`~loft.node.missing_runtime.MissingRuntime`
here: the node still serves, and a workspace of that kind gets the one line that says
what to install.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Mapping

from loft.node.missing_runtime import MissingRuntime
from loft.runtime.console import PtySession
from loft.runtime.errors import WorkspaceError
from loft.runtime.forward import Forwarder
from loft.runtime.interface import Runtime, RuntimeSnapshot, Stats, WorkspaceStatus
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, WindowSize, WorkspaceSpec
from loft.runtime.vm import VmRuntime

__all__ = ["KINDS", "Runtimes"]

#: The kinds a workspace record may name.
KINDS = ("sandbox", "vm")


class Runtimes(Runtime):
    """Dispatches each call to the runtime of the workspace's kind (``kind_of(id)``:
    the record's, None when there is no record)."""

    kind = "any"

    def __init__(
        self, runtimes: Mapping[str, Runtime], kind_of: Callable[[str], str | None]
    ) -> None:
        self.runtimes = dict(runtimes)
        self.kind_of = kind_of
        self._adopted: dict[str, str] = {}
        self._kinds: dict[str, str] = {}  # a record's kind never changes

    def of(self, kind: str) -> Runtime:
        """The runtime of ``kind``."""
        try:
            return self.runtimes[kind]
        except KeyError:
            raise WorkspaceError(f"unknown runtime {kind!r}", hint="sandbox or vm") from None

    def vm(self) -> VmRuntime:
        """The VM runtime, or the missing runtime's error (what to install)."""
        rt = self.of("vm")
        if isinstance(rt, MissingRuntime):
            raise rt.error
        assert isinstance(rt, VmRuntime)
        return rt

    def check(self, kind: str) -> None:
        """Refuse when ``kind``'s programs are missing (the error names them)."""
        rt = self.of(kind)
        if isinstance(rt, MissingRuntime):
            raise rt.error

    def _for(self, workspace: str) -> Runtime:
        kind = self._kinds.get(workspace)
        if kind is None:
            kind = self.kind_of(workspace)
            if kind is not None:
                self._kinds[workspace] = kind
        return self.of(kind or self._adopted.get(workspace) or "sandbox")

    def adopt(self) -> list[WorkspaceStatus]:
        found = []
        for kind, rt in self.runtimes.items():
            for status in rt.adopt():
                self._adopted[status.id] = kind
                found.append(status)
        return found

    def status(self, workspace: str) -> WorkspaceStatus:
        return self._for(workspace).status(workspace)

    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        return self._for(spec.id).start(spec)

    def stop(self, workspace: str, *, grace: float = 5.0) -> None:
        self._for(workspace).stop(workspace, grace=grace)

    def exec(
        self,
        workspace: str,
        request: ExecRequest,
        *,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        rt = self._for(workspace)
        return rt.exec(workspace, request, stdin=stdin, stdout=stdout, stderr=stderr)

    def exec_kept(self, workspace: str, request: ExecRequest, *, stdout: Stdio = None,
                  stderr: Stdio = None) -> subprocess.Popen[bytes]:  # fmt: skip
        return self._for(workspace).exec_kept(workspace, request, stdout=stdout, stderr=stderr)

    def attach_kept(self, workspace: str, *, stdout: Stdio = None,
                    stderr: Stdio = None) -> subprocess.Popen[bytes] | None:  # fmt: skip
        return self._for(workspace).attach_kept(workspace, stdout=stdout, stderr=stderr)

    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        return self._for(workspace).pty(workspace, request, size)

    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        return self._for(workspace).forward(workspace, port, listener)

    def connect(self, workspace: str, port: int, timeout: float = 10.0) -> socket.socket:
        return self._for(workspace).connect(workspace, port, timeout)

    def freeze(self, workspace: str) -> None:
        self._for(workspace).freeze(workspace)

    def thaw(self, workspace: str) -> None:
        self._for(workspace).thaw(workspace)

    def freeze_filesystem(self, workspace: str) -> None:
        self._for(workspace).freeze_filesystem(workspace)

    def thaw_filesystem(self, workspace: str) -> None:
        self._for(workspace).thaw_filesystem(workspace)

    def stats(self, workspace: str) -> Stats:
        return self._for(workspace).stats(workspace)

    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        return self._for(workspace).snapshot(workspace)

    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot) -> WorkspaceStatus:
        return self._for(spec.id).restore(spec, snapshot)

"""The runtime a node has when its programs are missing (no runc, no catatonit).

The agent still starts, so ``loft ls``, ``info`` and ``rm`` work and every command that
needs a computer gets one clear line saying what is missing and how to install it,
instead of the whole node refusing to come up. Nothing runs, so everything is stopped.
"""

from __future__ import annotations

import socket
import subprocess

from loft.runtime.console import PtySession
from loft.runtime.forward import Forwarder
from loft.runtime.interface import Runtime, RuntimeSnapshot, Stats, WorkspaceStatus
from loft.runtime.phase import Phase
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, WindowSize, WorkspaceSpec

__all__ = ["MissingRuntime"]


class MissingRuntime(Runtime):
    """A runtime of ``kind`` that cannot run anything: ``error`` says why."""

    def __init__(self, kind: str, error: Exception) -> None:
        self.kind = kind  # type: ignore[misc]
        self.error = error

    def _refuse(self) -> Exception:
        return self.error

    def adopt(self) -> list[WorkspaceStatus]:
        return []

    def status(self, workspace: str) -> WorkspaceStatus:
        return WorkspaceStatus(workspace, Phase.STOPPED, 0)

    def start(self, spec: WorkspaceSpec) -> WorkspaceStatus:
        raise self._refuse()

    def stop(self, workspace: str, *, grace: float = 5.0) -> None:
        return None  # nothing runs

    def exec(
        self,
        workspace: str,
        request: ExecRequest,
        *,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        raise self._refuse()

    def pty(self, workspace: str, request: ExecRequest, size: WindowSize) -> PtySession:
        raise self._refuse()

    def forward(self, workspace: str, port: int, listener: socket.socket) -> Forwarder:
        raise self._refuse()

    def connect(self, workspace: str, port: int, timeout: float = 10.0) -> socket.socket:
        raise self._refuse()

    def freeze(self, workspace: str) -> None:
        raise self._refuse()

    def thaw(self, workspace: str) -> None:
        raise self._refuse()

    def freeze_filesystem(self, workspace: str) -> None:
        raise self._refuse()

    def thaw_filesystem(self, workspace: str) -> None:
        raise self._refuse()

    def stats(self, workspace: str) -> Stats:
        raise self._refuse()

    def snapshot(self, workspace: str) -> RuntimeSnapshot:
        raise self._refuse()

    def restore(self, spec: WorkspaceSpec, snapshot: RuntimeSnapshot) -> WorkspaceStatus:
        raise self._refuse()

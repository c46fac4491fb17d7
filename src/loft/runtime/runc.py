"""runc's command line, typed: each subcommand a method, each failure a :class:`RuncError`
quoting runc's own message.

All state lives under one ``--root`` (:attr:`RuntimeDirs.runc_root`), so what runs
survives the agent and ``list`` answers what a restarted agent adopts. runc is a
short-lived command for everything but ``exec`` (which stays until the process exits, to
report its status): no shim or daemon stays per workspace.

``create`` never gets a pipe for its output: the container's init inherits runc's
standard streams and keeps them open for its whole life, so a reader would wait for an
end that never comes. Its errors go to a log file (``--log``) instead, read back on
failure.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loft.runtime.errors import RuncError, UnknownWorkspace, WorkspaceError
from loft.runtime.phase import Phase

__all__ = ["ContainerState", "Runc", "Stdio", "runc_binary"]

#: What a standard stream of an exec'd process may be: a file descriptor, a file object,
#: ``subprocess.PIPE``/``DEVNULL``, or None (inherit).
Stdio = int | IO[Any] | None
_TIMEOUT = 30.0  # seconds for any short runc command: it normally takes milliseconds


def runc_binary() -> str:
    """The runc executable."""
    exe = shutil.which("runc")
    if exe is None:
        raise RuncError("runc is not installed", hint="run `make deps` (Debian package runc)")
    return exe


@dataclass(frozen=True)
class ContainerState:
    """What runc says of a container: its id, phase and init's host pid (0 once stopped)."""

    id: str
    phase: Phase
    pid: int
    bundle: str

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContainerState:
        return cls(doc["id"], Phase(doc["status"]), int(doc.get("pid") or 0), doc["bundle"])


class Runc:
    """runc with loft's state directory ``root``."""

    def __init__(self, root: Path, binary: str | None = None) -> None:
        self.root = root
        self.binary = binary or runc_binary()

    def _argv(self, *args: str) -> list[str]:
        return [self.binary, "--root", str(self.root), *args]

    def _run(self, *args: str, what: str) -> str:
        r = subprocess.run(self._argv(*args), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=_TIMEOUT, check=False)  # fmt: skip
        if r.returncode != 0:
            raise _error(what, r.stderr)
        return r.stdout

    def create(
        self,
        workspace: str,
        bundle: Path,
        *,
        preexec_fn: Callable[[], None],
        pass_fds: Sequence[int],
    ) -> int:
        """``runc create``: the container's namespaces, cgroup and mounts, and its init
        waiting to be started; ``preexec_fn`` runs in runc's process before it starts.
        Returns the init's host pid."""
        log, pid_file = bundle / "runc.log", bundle / "init.pid"
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
        r = subprocess.run(
            self._argv("--log", str(log), "--log-format", "json", "create", "--bundle",
                       str(bundle), "--pid-file", str(pid_file), workspace),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=preexec_fn, pass_fds=pass_fds, timeout=_TIMEOUT, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            raise _error(f"creating workspace {workspace}", _log_errors(log))
        return int(pid_file.read_text())

    def start(self, workspace: str) -> None:
        """``runc start``: the init execs (``catatonit``)."""
        self._run("start", workspace, what=f"starting workspace {workspace}")

    def state(self, workspace: str) -> ContainerState | None:
        """``runc state``, or None when runc knows no such container."""
        if not (self.root / workspace).is_dir():
            # runc keeps each container's state in a directory of its name under the root:
            # without one there is nothing to ask (and a start saves a runc run).
            return None
        r = subprocess.run(self._argv("state", workspace), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=_TIMEOUT,
                           check=False)  # fmt: skip
        if r.returncode != 0:
            if "does not exist" in r.stderr or "not exist" in r.stderr:
                return None
            raise _error(f"reading the state of workspace {workspace}", r.stderr)
        return ContainerState.from_json(json.loads(r.stdout))

    def list(self) -> list[ContainerState]:
        """``runc list``: every container under the root, whatever its phase."""
        if not self.root.exists():
            return []
        out = self._run("list", "--format", "json", what="listing workspaces")
        return [ContainerState.from_json(d) for d in json.loads(out or "null") or []]

    def exec(
        self,
        workspace: str,
        process_fd: int,
        *,
        tty: bool = False,
        umask: int = 0o022,
        stdin: Stdio = None,
        stdout: Stdio = None,
        stderr: Stdio = None,
    ) -> subprocess.Popen[bytes]:
        """``runc exec --process`` (the OCI process read from ``process_fd``): runc passes
        the standard streams to the process as they are (no copy), stays until it exits,
        and exits with its status (128 + signal when killed). With ``tty``, the process
        gets a new terminal, which runc relays to its own streams (a terminal too).

        ``umask`` is set on runc itself: runc 1.1 applies the process document's umask
        only to a container's init, and an exec'd process inherits runc's (the agent's
        077 would make every file a user writes private to its owner)."""
        args = ["exec", "--process", f"/proc/self/fd/{process_fd}"]
        if tty:
            args.append("--tty")
        return subprocess.Popen(self._argv(*args, workspace), stdin=stdin, stdout=stdout,
                                stderr=stderr, pass_fds=[process_fd], umask=umask)  # fmt: skip

    def pause(self, workspace: str) -> None:
        """``runc pause``: the cgroup freezer stops every process of the container."""
        self._run("pause", workspace, what=f"freezing workspace {workspace}")

    def resume(self, workspace: str) -> None:
        """``runc resume``: the processes run again."""
        self._run("resume", workspace, what=f"thawing workspace {workspace}")

    def kill(self, workspace: str, signal: str, *, every: bool = False) -> None:
        """``runc kill``: ``signal`` to the init, or to every process with ``every``."""
        self._run("kill", *(["--all"] if every else []), workspace, signal,
                  what=f"signalling workspace {workspace}")  # fmt: skip

    def delete(self, workspace: str) -> None:
        """``runc delete --force``: kill whatever runs, remove the cgroup and the state."""
        self._run("delete", "--force", workspace, what=f"deleting workspace {workspace}")

    def stats(self, workspace: str) -> dict[str, Any]:
        """``runc events --stats``: the cgroup's counters (``data`` of the event)."""
        out = self._run("events", "--stats", workspace, what=f"reading workspace {workspace}")
        data: dict[str, Any] = json.loads(out)["data"]
        return data


def _log_errors(log: Path) -> str:
    """The error messages in runc's JSON log."""
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return "runc failed without a log"
    msgs = []
    for line in lines:
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("level") in ("error", "fatal"):
            msgs.append(str(doc.get("msg", "")))
    return "; ".join(msgs) or "runc failed"


def _error(what: str, stderr: str) -> WorkspaceError:
    message = " ".join(stderr.split())
    if "does not exist" in message:
        return UnknownWorkspace(f"{what}: no such container", hint="is it started?")
    return RuncError(f"{what}: {message[:500] or 'runc failed'}")

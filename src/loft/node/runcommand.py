"""A workspace's ``[run] command``: started on every start (and so every wake), its
output kept on the node, bounded, for ``loft logs``.

A sandbox's processes do not survive a stop, so the spec may name the workspace's server
(``[run] command = "python3 -m http.server 8000"``). The node runs it as runner, in its
home, under ``/bin/sh -c``, with standard input empty and both outputs into one pipe.
A thread per running command copies the pipe into the workspace's log file under the
node's private data dir: lines the node adds mark each start and exit, and the file is
cut back to its newest :data:`KEEP` bytes whenever it passes twice that, so a command
that writes without end costs the node a bounded amount of disk. Followers of the log
(``logs --follow``) get each chunk as it is written.

The copy lives in the agent: a restarted agent adopts a running workspace with its
command still running, but that command's output is no longer kept (its pipe's reader
went with the old agent) until the workspace's next start. A VM keeps its command
across a suspend, a restore or a live fork: the guest agent holds what it writes while
no host reads it (its newest 256 KiB), and :meth:`RunCommands.resume` takes it up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from loft.envstore.runspec import RunSpecError, parse_run
from loft.runtime.interface import DETACHED, Runtime
from loft.runtime.spec import ExecRequest

__all__ = ["KEEP", "RunCommands", "RunLog"]

log = logging.getLogger("loft.node")

#: The newest bytes of a command's output a node keeps (across starts).
KEEP = 1 << 20
_READ = 65536


class RunLog:
    """One workspace's kept output: a file, cut back to its newest :data:`KEEP` bytes
    when it passes twice that, and the followers told of every chunk appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._followers: list[Callable[[bytes], None]] = []

    def append(self, data: bytes) -> None:
        """Keep ``data`` and pass it to every follower."""
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            if size > 2 * KEEP:
                self._cut()
            for tell in self._followers:
                tell(data)

    def _cut(self) -> None:
        newest = self.tail(KEEP)
        tmp = self.path.with_suffix(".cut")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, newest)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def tail(self, n: int) -> bytes:
        """The newest ``n`` bytes kept (at most :data:`KEEP` twice over)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        try:
            size = os.fstat(fd).st_size
            n = min(n, size)
            return os.pread(fd, n, size - n) if n > 0 else b""
        finally:
            os.close(fd)

    def follow(self, n: int, tell: Callable[[bytes], None]) -> tuple[bytes, Callable[[], None]]:
        """The newest ``n`` bytes, and from then on every chunk appended passed to
        ``tell`` (from the writer's thread), until the returned function is called:
        nothing is lost or repeated between the two."""
        with self._lock:
            self._followers.append(tell)
            kept = self.tail(n)

        def unfollow() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._followers.remove(tell)

        return kept, unfollow


class RunCommands:
    """Starts each workspace's ``[run] command`` and keeps its output (``logs_dir``,
    one file per workspace id)."""

    def __init__(self, runtime: Runtime, logs_dir: Path) -> None:
        self.runtime = runtime
        self.logs_dir = logs_dir
        self._logs: dict[str, RunLog] = {}
        self._lock = threading.Lock()

    def log_of(self, workspace: str) -> RunLog:
        """The kept output of ``workspace`` (an empty one if it never ran a command)."""
        with self._lock:
            if workspace not in self._logs:
                self.logs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                self._logs[workspace] = RunLog(self.logs_dir / f"{workspace}.log")
            return self._logs[workspace]

    def start(self, workspace: str, spec_text: str) -> bool:
        """Start the command ``spec_text`` names in the (running) workspace; False when
        it names none. A spec whose ``[run]`` is malformed (refused when it was given,
        so only an old record) starts nothing and says why in the log."""
        out = self.log_of(workspace)
        try:
            run = parse_run(spec_text, source="the workspace's spec")
        except RunSpecError as e:
            out.append(f"--- loft: not started: {e.message}\n".encode())
            return False
        if run is None:
            return False
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
        out.append(f"--- loft: {stamp} UTC started: {run.command}\n".encode())
        proc = self.runtime.exec_kept(
            workspace,
            ExecRequest(("/bin/sh", "-c", run.command)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._follow(workspace, proc, out)
        log.info("workspace.run_started id=%s", workspace)
        return True

    def resume(self, workspace: str, spec_text: str) -> bool:
        """Keep the output again of the command ``spec_text`` names, which runs on in a
        workspace that came back from memory (a VM resumed, restored or forked live):
        what it wrote while no one read it, then on. False when there is none, or its
        runtime keeps none."""
        try:
            if parse_run(spec_text, source="the workspace's spec") is None:
                return False
        except RunSpecError:
            return False
        out = self.log_of(workspace)
        proc = self.runtime.attach_kept(workspace, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc is None:
            return False
        self._follow(workspace, proc, out)
        return True

    def _follow(self, workspace: str, proc: subprocess.Popen[bytes], out: RunLog) -> None:
        threading.Thread(
            target=self._copy, args=(proc, out), name=f"loft-run-{workspace}", daemon=True
        ).start()

    def forget(self, workspace: str) -> None:
        """Delete the kept output of a workspace that is removed."""
        with self._lock:
            self._logs.pop(workspace, None)
        (self.logs_dir / f"{workspace}.log").unlink(missing_ok=True)

    @staticmethod
    def _copy(proc: subprocess.Popen[bytes], out: RunLog) -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while data := os.read(fd, _READ):
                out.append(data)
        except OSError:
            pass
        finally:
            proc.stdout.close()
        status = proc.wait()
        if status == DETACHED:
            out.append(b"--- loft: no longer followed: the VM was saved or stopped\n")
            return
        how = f"signal {-status}" if status < 0 else f"status {status}"
        out.append(f"--- loft: exited with {how}\n".encode())

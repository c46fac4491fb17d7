"""Start loft's NBD server as a real process and drive third-party NBD clients at it.

The server is ``loft disk serve-file`` on a Unix socket in a private temporary
directory; it is stopped by PID (SIGTERM, then SIGKILL) when the test ends.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

#: libnbd's Python module lives in Debian's python, not in loft's venv.
DEBIAN_PYTHON = "/usr/bin/python3"


def loft_command() -> list[str]:
    """How to run the ``loft`` CLI from this interpreter's environment."""
    exe = Path(sys.executable).parent / "loft"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-c", "from loft.cli import run; run()"]


def run(
    cmd: list[str], *, timeout: float = 60, check: bool = True, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command, bounded in time; on failure show its output."""
    proc = subprocess.run(
        cmd,
        capture_output=True,
        timeout=timeout,
        input=input.decode() if input else None,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd!r} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


class NBDServerProcess:
    """``loft disk serve-file`` in the background."""

    def __init__(
        self,
        tmp: Path,
        images: dict[str, Path],
        *,
        readonly: bool = False,
        extra: list[str] | None = None,
    ) -> None:
        self.dir = tmp / "nbdrun"
        self.sock = self.dir / "nbd.sock"
        self.images = images
        self.readonly = readonly
        self.extra = extra or []
        self.log = tmp / "nbd-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def uri(self, export: str = "disk") -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def start(self) -> NBDServerProcess:
        cmd = [*loft_command(), "disk", "serve-file", "--socket", str(self.sock), "-v"]
        if self.readonly:
            cmd.append("--readonly")
        cmd += self.extra
        cmd += [f"{name}={path}" for name, path in self.images.items()]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server did not listen: {self.log.read_text()}")
            time.sleep(0.02)
        return self

    def tcp_port(self, timeout: float = 20) -> int:
        """The TCP port the server reports listening on (``--listen HOST:0``)."""
        deadline = time.monotonic() + timeout
        while not (m := re.search(r"listening on [^ ]+:(\d+)", self.log.read_text())):
            if time.monotonic() > deadline or not self.alive:
                raise AssertionError(f"server did not listen on TCP: {self.log.read_text()}")
            time.sleep(0.05)
        return int(m.group(1))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mib(self) -> float:
        """The server's resident set size (VmRSS), MiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        """SIGTERM (clean shutdown with flush), SIGKILL after 15 s; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def __enter__(self) -> NBDServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nbdsh(uri: str, script: str, *, timeout: float = 60) -> str:
    """Run a Python script with libnbd's handle ``h`` connected to ``uri``; return stdout."""
    return run([DEBIAN_PYTHON, "-m", "nbd", "-u", uri, "-c", script], timeout=timeout).stdout


def make_image(path: Path, size: int, pattern: bytes | None = None) -> Path:
    """A sparse file of ``size`` bytes; with ``pattern``, some data at a few offsets."""
    with open(path, "wb") as f:
        f.truncate(size)
        if pattern:
            for off in (0, size // 3, size - len(pattern) * 64):
                f.seek(off)
                f.write(pattern * 64)
    return path

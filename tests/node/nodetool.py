"""A node for end-to-end tests: its data dir over a shared catalog and chunk store, the
``loft`` CLI in its environment, and its disk service (``loft disk serve``) as a real
process, stopped (or killed) by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nbdtool import loft_command, run


class Node:
    """One node's environment (data dir) over a shared catalog and chunk store."""

    def __init__(self, root: Path, name: str) -> None:
        self.env = dict(os.environ)
        self.env.update(
            LOFT_DATA_DIR=str(root / name),
            LOFT_CHUNKS=f"file://{root / 'chunks'}",
            LOFT_CATALOG_URL=f"sqlite:///{root / 'catalog.db'}",
        )
        self.sock = root / name / "run" / "nbd.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.env["LOFT_DATA_DIR"])

    @property
    def log(self) -> Path:
        """The disk service's log (every start of it appends)."""
        return self.data_dir.with_suffix(".log")

    def loft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*loft_command(), *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"loft {args} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def serve(self) -> None:
        """Start the disk service and wait until its control socket answers."""
        control = self.sock.with_name("control.sock")
        control.unlink(missing_ok=True)  # left by a killed service: not a sign of readiness
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*loft_command(), "disk", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while not control.exists():
            assert self.proc.poll() is None, f"disk service died at start:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, "disk service did not start"
            time.sleep(0.01)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def kill(self) -> None:
        """SIGKILL the disk service: no commit, no release (a crash)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def uri(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A small filesystem of its own at ``path`` (a data disk that can fill up),
    unmounted by path when done."""
    path.mkdir()
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    try:
        yield path
    finally:
        run(["umount", str(path)], check=False)


def fill_to(root: Path, free: int) -> Path:
    """Take space on ``root``'s filesystem until ``free`` bytes are left (and give the
    disk service's reserve check time to see it); the filler file's path."""
    from loft.blockstore.reserve import CHECK_INTERVAL

    st = os.statvfs(root)
    filler = root / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - free)
    time.sleep(2 * CHECK_INTERVAL)
    return filler

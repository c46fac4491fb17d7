"""Workspaces on real runc for the tests: the example environment (built once per
session), loop-backed ext4 root filesystems mounted nosuid,nodev, and a runtime in a data
dir of the test's own. Everything a test makes is removed by name: its containers
(stop), mounts (umount of its mount point), loop devices (losetup -d of the one it
attached)."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from envbuild_support import Example, example

from loft.isolation.userns import IdRange
from loft.runtime.ids import allocate_range
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.spec import EnvironmentView, ExecRequest, Limits, WorkspaceSpec

needs_runc = pytest.mark.skipif(
    shutil.which("runc") is None or shutil.which("catatonit") is None,
    reason="runc and catatonit are not installed (make deps)",
)
_counter = itertools.count()


def environment(ex: Example) -> EnvironmentView:
    """The example environment as a workspace sees it."""
    env_path = ex.lock.env.path
    closure = tuple(sorted(ex.store.closure([env_path])))
    return EnvironmentView(ex.store.real_store_dir, env_path, closure)


@dataclass
class Volume:
    """A loop-backed ext4 filesystem mounted nosuid,nodev at ``mount``."""

    image: Path
    mount: Path
    device: str

    @classmethod
    def make(cls, directory: Path, size_mb: int = 96) -> Volume:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        image, mount = directory / "disk.img", directory / "mnt"
        with open(image, "wb") as f:
            f.truncate(size_mb * 2**20)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", str(image)],
            check=True,
            capture_output=True,
        )
        mount.mkdir()
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        try:
            subprocess.run(
                ["mount", "-o", "nosuid,nodev", device, str(mount)], check=True, capture_output=True
            )
        except BaseException:
            subprocess.run(["losetup", "-d", device], check=False)
            raise
        return cls(image, mount, device)

    def remove(self) -> None:
        subprocess.run(["umount", str(self.mount)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)


class Workspaces:
    """Starts workspaces on one runtime and removes all it started."""

    def __init__(self, tmp: Path, env: EnvironmentView) -> None:
        self.tmp = tmp
        self.env = env
        self.runtime = SandboxRuntime(tmp / "data")
        self.volumes: list[Volume] = []
        self.specs: list[WorkspaceSpec] = []

    def spec(self, limits: Limits | None = None, size_mb: int = 96) -> WorkspaceSpec:
        """A new workspace's spec on a new volume, with a free id range."""
        n = next(_counter)
        vol = Volume.make(self.tmp / f"vol{n}", size_mb)
        self.volumes.append(vol)
        ids = allocate_range([s.ids for s in self.specs] + _ranges_in_use())
        spec = WorkspaceSpec(f"t{n}", vol.mount, self.env, ids, limits or Limits())
        self.specs.append(spec)
        return spec

    def start(self, limits: Limits | None = None, size_mb: int = 96) -> WorkspaceSpec:
        spec = self.spec(limits, size_mb)
        self.runtime.start(spec)
        return spec

    def sh(
        self, spec: WorkspaceSpec, script: str, user: int = 1000, timeout: float = 60
    ) -> tuple[int, str, str]:
        done = self.runtime.run(
            spec.id, ExecRequest(("sh", "-c", script), user=user), timeout=timeout
        )
        return done.status, done.stdout.decode(), done.stderr.decode()

    def close(self) -> None:
        for spec in self.specs:
            with contextlib.suppress(Exception):
                self.runtime.stop(spec.id, grace=0)
        for vol in self.volumes:
            vol.remove()


def _ranges_in_use() -> list[IdRange]:
    """Ranges other test sessions' workspaces hold now (their init processes' uids), so
    parallel runs on one machine never share one."""
    used = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    if uid >= 0x80000:
                        used.add(uid - uid % 65536)
    return [IdRange(h) for h in used if h + 65536 <= 2**31]


@contextlib.contextmanager
def workspaces(ex: Example) -> Iterator[Workspaces]:
    """Workspaces whose data dir and volumes are in a directory of their own under /tmp,
    0711: a workspace's init (its mapped root) must search every directory down to the
    data dir, and pytest keeps its own temporary directories 0700 (resetting their root to
    0700 whenever a session starts)."""
    tmp = Path(tempfile.mkdtemp(prefix="loft-runtime-test-"))
    tmp.chmod(0o711)
    ws = Workspaces(tmp, environment(ex))
    try:
        yield ws
    finally:
        ws.close()
        shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["Volume", "Workspaces", "environment", "example", "needs_runc", "workspaces"]

"""A real filesystem on loft's NBD server: nbdfuse + loop + ext4, remounted and checked."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from nbdtool import NBDServerProcess, make_image, run

pytestmark = [pytest.mark.serial, pytest.mark.timeout(240)]


def _tree(root: Path, rng: random.Random) -> dict[str, str]:
    sums = {}
    for d in range(5):
        sub = root / f"dir{d}" / "nested"
        sub.mkdir(parents=True)
        for i in range(8):
            data = rng.randbytes(rng.choice([10, 4096, 70_000, 1 << 20]))
            p = sub / f"file{i}.bin"
            p.write_bytes(data)
            sums[str(p.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return sums


def _sums(root: Path, names: dict[str, str]) -> dict[str, str]:
    return {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in names}


def test_ext4_on_nbdfuse_loop(tmp_path: Path) -> None:
    img = make_image(tmp_path / "disk.img", 256 << 20)
    fuse_dir = tmp_path / "fuse"
    mnt = tmp_path / "mnt"
    fuse_dir.mkdir()
    mnt.mkdir()
    pidfile = tmp_path / "nbdfuse.pid"
    loop = ""
    fuse: subprocess.Popen[bytes] | None = None
    mounted = False
    with NBDServerProcess(tmp_path, {"disk": img}) as server:
        try:
            fuse = subprocess.Popen(
                ["nbdfuse", "-P", str(pidfile), str(fuse_dir / "disk"), server.uri()]
            )
            deadline = time.monotonic() + 30
            while not pidfile.exists() or not (fuse_dir / "disk").exists():
                assert fuse.poll() is None and time.monotonic() < deadline, "nbdfuse failed"
                time.sleep(0.05)
            loop = run(["losetup", "-f", "--show", str(fuse_dir / "disk")]).stdout.strip()
            run(["mkfs.ext4", "-q", "-F", loop])
            run(["mount", loop, str(mnt)])
            mounted = True
            sums = _tree(mnt, random.Random(7))
            run(["umount", str(mnt)])
            mounted = False
            fsck = run(["e2fsck", "-fn", loop], check=False)
            assert fsck.returncode == 0, fsck.stdout + fsck.stderr
            run(["mount", loop, str(mnt)])
            mounted = True
            assert _sums(mnt, sums) == sums
        finally:
            if mounted:
                run(["umount", str(mnt)], check=False)
            if loop:
                run(["losetup", "-d", loop], check=False)
            if fuse is not None:
                run(["fusermount3", "-u", str(fuse_dir)], check=False)
                try:
                    fuse.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(fuse.pid, 9)
                    fuse.wait(5)
    # After the server stopped (flushing), the image file itself holds the filesystem.
    fsck = run(["e2fsck", "-fn", str(img)], check=False)
    assert fsck.returncode == 0, fsck.stdout

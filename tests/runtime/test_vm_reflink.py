"""RAM files on a filesystem that shares extents (XFS with reflinks, loop-backed): a
memory image's copy is a reflink, so a VM restored from the image pages its memory in
from the image's blocks and allocates only what it writes, and still suspends with its
device state alone."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from vm_support import needs_qemu, sh, vms, xfs_mount

from loft.runtime.vm_image import copy_sparse

pytestmark = [pytest.mark.serial,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts: root only")]  # fmt: skip


@pytest.fixture
def xfs(tmp_path: Path) -> Iterator[Path]:
    """A loop-backed XFS with reflinks (``vm_support.xfs_mount``)."""
    with xfs_mount(tmp_path) as mnt:
        yield mnt


def _shared_bytes(path: Path) -> int:
    """Bytes of ``path`` in extents the filesystem says are shared (FIEMAP, through
    ``filefrag -v``)."""
    out = subprocess.run(["filefrag", "-v", str(path)], check=True, capture_output=True,
                         text=True, timeout=30).stdout  # fmt: skip
    blocks = 0
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0].rstrip(":").isdigit() and "shared" in fields[-1]:
            blocks += int(fields[-2 if fields[-2].isdigit() else -3].rstrip(":"))
    return blocks * 4096


def test_ram_copy_on_xfs_is_a_reflink_and_copy_on_write(xfs: Path) -> None:
    """32 MiB of data copied costs no data blocks (a copy would take 32 MiB), all of it
    shared, reads the same with the holes kept, and a write to the copy leaves the
    source as it was."""
    ram = xfs / "ram"
    data = os.urandom(32 << 20)
    with open(ram, "wb") as f:
        f.truncate(128 << 20)
        f.seek(64 << 20)
        f.write(data)
        os.fsync(f.fileno())
    st = os.statvfs(xfs)
    free = st.f_bavail * st.f_frsize
    copy_sparse(ram, xfs / "copy")
    st = os.statvfs(xfs)
    assert free - st.f_bavail * st.f_frsize < 1 << 20
    assert _shared_bytes(xfs / "copy") == 32 << 20
    copied = (xfs / "copy").read_bytes()
    assert copied[64 << 20 : 96 << 20] == data and copied.count(0, 0, 64 << 20) == 64 << 20
    assert os.stat(xfs / "copy").st_mode & 0o777 == 0o600
    with open(xfs / "copy", "r+b") as f:
        f.seek(64 << 20)
        f.write(b"x" * 4096)
    assert ram.read_bytes()[64 << 20 : 96 << 20] == data


@needs_qemu
@pytest.mark.timeout(180)
def test_vm_fork_on_xfs_maps_the_image_copy_on_write(xfs: Path) -> None:
    """A live fork on a data dir on XFS: its RAM file shares every block of the image's
    (nothing copied at the restore), it holds the source's memory, and its suspend is
    device state only."""
    with vms(xfs / "t") as node:
        rt = node.runtime
        src = node.spec()
        rt.start(src)
        digest = sh(
            node, src.id, "head -c 33554432 /dev/urandom > /dev/shm/fill; md5sum /dev/shm/fill"
        )
        rt.freeze(src.id)
        snap = rt.snapshot(src.id)
        node.node.node.loft("volume", "snapshot", src.id, "f")
        node.node.node.loft("volume", "fork", f"{src.id}@f", "fork1")
        rt.thaw(src.id)
        image = next(rt.images.iterdir()) / "ram"
        held = os.stat(image).st_blocks * 512
        assert held > 32 << 20
        fork = node.spec(name="fork1", volume=False)
        rt.restore(fork, snap, fork=True)
        assert _shared_bytes(rt.dir(fork.id) / "ram") >= held * 0.9
        assert sh(node, fork.id, "md5sum /dev/shm/fill") == digest
        rt.suspend(fork.id)
        assert (rt.dir(fork.id) / "state").stat().st_size < 1 << 20
        rt.stop(fork.id)
        rt.stop(src.id)

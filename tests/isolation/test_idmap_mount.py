"""Idmapped clones and read-only detached binds of a real ext4 filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loft.isolation.idmap import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    attach,
    detached_bind,
    idmapped_clone,
)
from loft.isolation.userns import IdRange, user_namespace

pytestmark = [pytest.mark.serial,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts: root only")]  # fmt: skip
IDS = IdRange(0x6FFE0000)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A loop-backed ext4 mounted at tmp_path/mnt, with files of uid 0 and 1000."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(16 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    try:
        subprocess.run(["mount", "-o", "nosuid,nodev", dev, str(mnt)], check=True)
        (mnt / "root-file").write_text("r")
        (mnt / "user-file").write_text("u")
        os.chown(mnt / "user-file", 1000, 1000)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        subprocess.run(["losetup", "-d", dev], check=False)


@contextlib.contextmanager
def attached(tree: int, target: Path) -> Iterator[Path]:
    """``tree`` attached at ``target``; the descriptor is closed (an open one keeps the
    mount busy) and the mount removed afterwards."""
    target.mkdir()
    try:
        attach(tree, target)
    finally:
        os.close(tree)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_idmap_clone_maps_disk_ids_onto_the_range(ext4: Path, tmp_path: Path) -> None:
    with user_namespace(IDS, IDS.host) as userns:
        tree = idmapped_clone(ext4, userns, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
    with attached(tree, tmp_path / "mapped") as mapped:
        assert (mapped / "root-file").stat().st_uid == IDS.host
        assert (mapped / "user-file").stat().st_gid == IDS.host_id(1000)
        flags = os.statvfs(mapped).f_flag
        assert flags & os.ST_NOSUID and flags & os.ST_NODEV
        # Host root is not in the map: it cannot create files through the clone.
        with pytest.raises(OSError) as e:
            (mapped / "new").write_text("x")
        assert e.value.errno == errno.EOVERFLOW
    assert (ext4 / "root-file").stat().st_uid == 0  # the disk keeps its own ids
    assert (ext4 / "user-file").stat().st_uid == 1000


def test_idmap_detached_bind_is_read_only_and_gone_unattached(ext4: Path, tmp_path: Path) -> None:
    before = Path("/proc/self/mountinfo").read_text()
    tree = detached_bind(ext4, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)
    with attached(tree, tmp_path / "ro") as ro:
        assert (ro / "root-file").read_text() == "r"
        with pytest.raises(OSError) as e:
            (ro / "root-file").write_text("x")
        assert e.value.errno == errno.EROFS
    os.close(detached_bind(ext4))  # never attached: nothing to undo
    assert Path("/proc/self/mountinfo").read_text() == before

"""A workspace on a node whose data disk falls under its reserve: the writer of new data
gets ENOSPC from fsync, the filesystem stays mounted and readable (its journal does not
abort), and it writes again once space is freed."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from attachtool import mount_options, served_node
from nodetool import fill_to, tmpfs

from loft.blockstore.reserve import CHECK_INTERVAL
from loft.runtime.attach import attach, detach
from loft.runtime.template import create_workspace_volume

pytestmark = [pytest.mark.serial, pytest.mark.timeout(180)]
MIB = 1 << 20


def _write(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, os.urandom(size))
        os.fsync(fd)
    finally:
        os.close(fd)


def test_disk_reserve_workspace_gets_enospc(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "disk", 192 * MIB) as disk,
        served_node(disk, LOFT_DISK_RESERVE="64M") as served,
    ):
        create_workspace_volume(served.bs, "vol", size=128 * MIB, extent_size=MIB)
        att = attach(served.bs, "vol", "ws", socket=served.attach_socket)
        home = att.root / "home/runner"
        _write(home / "before", 8 * MIB)
        filler = fill_to(disk, 48 * MIB)
        with pytest.raises(OSError) as refused:
            _write(home / "new", 16 * MIB)
        assert refused.value.errno == errno.ENOSPC
        assert len((home / "before").read_bytes()) == 8 * MIB
        assert "rw" in mount_options(att.root)  # no journal abort, no remount read-only
        filler.unlink()
        time.sleep(2 * CHECK_INTERVAL)
        _write(home / "after", 4 * MIB)
        detach(att)

"""A full data disk: writes that need space fail with ENOSPC, nothing acknowledged is
lost, and the volume works again (writes, flush, commit) once space returns."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from loft.blockstore import Blockstore
from loft.config import Settings

pytestmark = [pytest.mark.serial, pytest.mark.timeout(120)]
MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB filesystem for the node's data dir (a tmpfs: no device needed)."""
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mnt)],
                   check=True, timeout=30)  # fmt: skip
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=30)


def test_full_data_disk_gives_enospc_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    settings = Settings(
        data_dir=small_disk / "node",
        chunks_url=f"file://{tmp_path / 'chunks'}",  # the chunk store lives elsewhere
        catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
        cache_bytes=1 << 30,
        chunk_cache_bytes=0,
    )
    bs = Blockstore.from_settings(settings)
    try:
        bs.create("v", size=64 * MIB, extent_size=MIB)
        vol = bs.open("v")
        vol.write(0, b"\x01" * MIB)
        vol.flush()  # acknowledged: must survive whatever follows
        filler = small_disk / "filler"
        with open(filler, "wb") as f:  # eat the rest of the disk
            try:
                while True:
                    f.write(b"\0" * MIB)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC
        with pytest.raises(OSError) as full:
            for i in range(1, 32):
                vol.write(i * MIB, os.urandom(MIB))
        assert full.value.errno == errno.ENOSPC
        filler.unlink()  # space returns
        vol.write(40 * MIB, b"\x02" * MIB)
        vol.flush()
        rec = vol.commit()
        vol.close()
        view = bs.view("v")
        assert view.read(0, MIB) == b"\x01" * MIB  # the acknowledged write survived
        assert view.read(40 * MIB, MIB) == b"\x02" * MIB
        assert rec.version >= 1
    finally:
        bs.close()

"""The data disk's reserve in the blockstore itself: under it, a write into new space
raises NoSpace (an OSError with errno ENOSPC, as a full disk would) before anything is
applied, an overwrite of allocated bytes goes on, and freed space is used at once."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from nodetool import fill_to, tmpfs

from loft.blockstore import Blockstore
from loft.blockstore.errors import NoSpace
from loft.config import Settings

pytestmark = [pytest.mark.serial, pytest.mark.timeout(120)]
MIB = 1 << 20


@pytest.fixture
def bs(tmp_path: Path) -> Iterator[tuple[Blockstore, Path]]:
    with tmpfs(tmp_path / "disk", 48 * MIB) as disk:
        store = Blockstore.from_settings(
            Settings(
                data_dir=disk / "node",
                chunks_url=f"file://{tmp_path / 'chunks'}",  # elsewhere: commits go on
                catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}",
                cache_bytes=1 << 30,
                chunk_cache_bytes=0,
                disk_reserve="16M",
            )
        )
        try:
            yield store, disk
        finally:
            store.close()


def test_volume_reserve_refuses_new_space_only(bs: tuple[Blockstore, Path]) -> None:
    store, disk = bs
    store.create("v", size=64 * MIB, extent_size=MIB)
    vol = store.open("v")
    try:
        vol.write(0, b"\x01" * MIB)
        vol.flush()
        filler = fill_to(disk, 8 * MIB)
        with pytest.raises(OSError) as refused:
            vol.write(5 * MIB, b"\x02" * 4096)
        assert isinstance(refused.value, NoSpace) and refused.value.errno == errno.ENOSPC
        assert "reserve" in str(refused.value)
        assert vol.read(5 * MIB, 4096) == bytes(4096)  # nothing of it was applied
        vol.write(4096, b"\x03" * 4096)  # allocated already: goes on
        vol.commit()  # the chunk store is on another disk: commits go on too
        os.unlink(filler)
        vol.write(5 * MIB, b"\x02" * 4096)  # freed space is used at once
        vol.flush()
    finally:
        vol.close()
    view = store.view("v")
    assert view.read(4096, 4096) == b"\x03" * 4096
    assert view.read(5 * MIB, 4096) == b"\x02" * 4096

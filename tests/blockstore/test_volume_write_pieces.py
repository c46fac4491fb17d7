"""A volume's large writes: in pieces where they make new pages (small folios keep later
small writes cheap), in one call where they rewrite extents dirty already."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from bsfixtures import EXTENT, Deployment

from loft.blockstore import volume as volume_mod
from loft.blockstore.extents import WRITE_PIECE
from loft.blockstore.writebehind import LARGE_WRITE

pytestmark = pytest.mark.timeout(60)


def test_large_writes_are_pieced_until_their_extents_are_dirty(
    deployment_of: Callable[[str], Deployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    extent = 4 * WRITE_PIECE  # a write of a whole extent is larger than a piece
    assert extent >= LARGE_WRITE and extent % EXTENT == 0
    pieced: list[tuple[int, int]] = []
    real = volume_mod.write_pieces

    def recording(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        pieced.append((offset, len(data)))
        real(fd, data, offset)

    monkeypatch.setattr(volume_mod, "write_pieces", recording)
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=8 * extent, extent_size=extent, commit_interval=60.0)
    vol = bs.open("v")
    first, again, spanning = os.urandom(extent), os.urandom(extent), os.urandom(2 * extent)
    vol.write(2 * extent, first)  # new pages: pieces
    vol.write(2 * extent, again)  # the extent is dirty: one call
    vol.write(2 * extent, spanning)  # one extent of it is not dirty yet: pieces
    assert pieced == [(2 * extent, extent), (2 * extent, 2 * extent)]
    assert vol.read(2 * extent, 2 * extent) == spanning
    vol.commit()  # clean again: the next write is pieced
    vol.write(3 * extent, first)
    assert pieced[-1] == (3 * extent, extent)
    vol.close()
    got = dep.node("fresh").view("v").read(2 * extent, 2 * extent)
    assert got == spanning[:extent] + first

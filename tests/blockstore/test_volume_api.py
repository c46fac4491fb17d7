"""The Blockstore API on every catalog x chunk store combination: volumes, lazy forks,
restore with undo, import/export streams, block status, deletion."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from bsfixtures import EXTENT, KIB, MIB, Deployment

from loft.blockstore import (
    STATE_HOLE,
    STATE_ZERO,
    Blockstore,
    InvalidArgument,
    NotFast,
    ReadOnlyVolume,
    SnapshotNotFound,
    VolumeBusy,
    VolumeExists,
)

pytestmark = pytest.mark.timeout(90)


def rnd(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_fork_is_lazy_and_independent(deployment: Deployment, blockstore: Blockstore) -> None:
    bs = blockstore
    bs.create("base", size=16 * EXTENT, extent_size=EXTENT)
    vol = bs.open("base")
    content = rnd(1, 16 * EXTENT)
    vol.write(0, content)
    vol.close()
    bs.snapshot("base", "gold")

    node = deployment.node("b")  # another node: nothing cached
    node.fork("base@gold", "child")
    child = node.open("child")
    assert child.present_extents == 0  # nothing copied or fetched up front
    fetched = node.ctx.cache.fetched_bytes
    assert child.read(5 * EXTENT + 100, 10) == content[5 * EXTENT + 100 : 5 * EXTENT + 110]
    assert child.present_extents == 1
    # One extent (plus manifest pages) was fetched for a 10-byte read.
    assert node.ctx.cache.fetched_bytes - fetched < EXTENT + 64 * KIB
    child.write(0, b"child")
    child.close()
    assert bs.view("base").read(0, 5) == content[:5]
    assert node.view("child").read(0, 16 * EXTENT) == b"child" + content[5:]
    info = node.info("child")
    assert info.parent == "base@gold" and info.version == 1
    with pytest.raises(VolumeExists):
        bs.fork("base@gold", "child")
    with pytest.raises(SnapshotNotFound):
        bs.fork("base@nope", "other")
    with pytest.raises(InvalidArgument):
        bs.fork("base", "other")
    # Deleting the parent leaves the fork intact.
    bs.remove("base")
    assert deployment.node("c").view("child").read(EXTENT, EXTENT) == content[EXTENT : 2 * EXTENT]


def test_restore_commits_first_and_can_be_undone(blockstore: Blockstore) -> None:
    bs = blockstore
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(0, b"one")
    vol.close()
    bs.snapshot("v", "s1")
    vol = bs.open("v")
    vol.write(0, b"two")
    vol.flush()  # not committed: restore must commit it into the automatic snapshot
    vol.detach().close()
    bs.heads.release(bs.get("v").id, bs.get("v").epoch, vol.holder)
    rec, auto = bs.restore("v", "s1")
    assert bs.view("v").read(0, 3) == b"one"
    assert bs.view(f"v@{auto}").read(0, 3) == b"two"
    bs.restore("v", auto)  # undo
    assert bs.view("v").read(0, 3) == b"two"
    vol = bs.open("v")
    assert vol.read(0, 3) == b"two"
    with pytest.raises(VolumeBusy):
        bs.restore("v", "s1")
    vol.close()
    assert rec.epoch < bs.get("v").epoch


def test_block_status_and_allocation_depth(deployment_of: Callable[[str], Deployment]) -> None:
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=8 * EXTENT, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(2 * EXTENT, rnd(2, EXTENT))
    vol.write(5 * EXTENT + 4096, b"x" * 4096)
    vol.commit()
    status = vol.block_status(0, 8 * EXTENT)
    assert sum(n for n, _ in status) == 8 * EXTENT
    pos = 0
    for n, flags in status:
        if flags & STATE_ZERO:
            assert vol.read(pos, n) == bytes(n)
        pos += n
    assert status[0] == (2 * EXTENT, STATE_HOLE | STATE_ZERO)
    vol.close()
    bs.snapshot("v", "s")
    bs.fork("v@s", "f")
    f = bs.open("f")
    f.write(0, b"own")
    assert [d for _, d in f.allocation_depth(0, 3 * EXTENT)] == [1, 0, 2]
    f.close()
    view = bs.view("v@s")
    with pytest.raises(ReadOnlyVolume):
        view.write(0, b"x")
    assert view.block_status(0, 3 * EXTENT)[-1] == (EXTENT, 0)


def test_export_into_streams(deployment_of: Callable[[str], Deployment], tmp_path: Path) -> None:
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    vol = bs.open("v")
    vol.write(EXTENT, rnd(3, EXTENT))  # data in extent 1 only: extents 2 and 3 are a tail
    vol.close()
    want = bs.view("v").read(0, 4 * EXTENT)
    # A file that already holds something: the image goes after it, whole.
    path = tmp_path / "with-header"
    with open(path, "wb") as f:
        f.write(b"HEADER")
        bs.export_image("v", f)
    assert path.read_bytes() == b"HEADER" + want
    # Append mode: seeking is ignored by the kernel, so zeros must be written.
    path = tmp_path / "appended"
    path.write_bytes(b"12345")
    with open(path, "ab") as f:
        bs.export_image("v", f)
    assert path.read_bytes() == b"12345" + want
    # In memory and through a pipe-like (unseekable) stream.
    buf = io.BytesIO()
    bs.export_image("v", buf)
    assert buf.getvalue() == want
    got = bytearray()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b):  # type: ignore[no-untyped-def]
            got.extend(b)
            return len(b)

    bs.export_image("v", Unseekable())  # type: ignore[arg-type]
    assert bytes(got) == want
    # A fresh file is sparse.
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        bs.export_image("v", f)
    assert path.read_bytes() == want and os.stat(path).st_blocks * 512 < 4 * EXTENT


def test_import_stream_and_limits(deployment_of: Callable[[str], Deployment]) -> None:
    bs = deployment_of("sqlite-file").node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    img = rnd(4, 2 * EXTENT + 1000)
    rep = bs.import_image("v", io.BytesIO(img), None)
    assert rep.bytes >= len(img)
    assert bs.view("v").read(0, len(img)) == img
    version = bs.get("v").version
    with pytest.raises(InvalidArgument):
        bs.import_image("v", io.BytesIO(bytes(4 * EXTENT + 1)), None)
    with pytest.raises(InvalidArgument):
        bs.import_image("v", io.BytesIO(b""), 4 * EXTENT + 1)
    assert bs.get("v").version == version and bs.view("v").read(0, len(img)) == img
    assert bs.get("v").holder is None
    # A second import of the same image dedups every chunk.
    bs.create("w", size=4 * EXTENT, extent_size=EXTENT)
    rep = bs.import_image("w", io.BytesIO(img), len(img))
    assert rep.uploaded_bytes < EXTENT // 4


def test_remove_and_bad_arguments(deployment_of: Callable[[str], Deployment]) -> None:
    bs = deployment_of("sqlite-file").node("a")
    with pytest.raises(InvalidArgument):
        bs.create("x", size=MIB + 1, extent_size=EXTENT)
    with pytest.raises(InvalidArgument):
        bs.create("x", size=MIB, extent_size=EXTENT, durability="sometimes")
    with pytest.raises(InvalidArgument):
        bs.create("../x", size=MIB)
    bs.create("v", size=MIB, extent_size=EXTENT)
    vol = bs.open("v")
    with pytest.raises(InvalidArgument):
        vol.write(MIB - 1, b"ab")
    with pytest.raises(InvalidArgument):
        vol.read(-1, 1)
    with pytest.raises(VolumeBusy):
        bs.remove("v")
    vol.close()
    bs.remove("v")
    assert [v.name for v in bs.volumes()] == []


def test_fast_zero_and_prefetch(deployment_of: Callable[[str], Deployment]) -> None:
    dep = deployment_of("sqlite-file")
    bs = dep.node("a")
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    vol = bs.open("v")
    content = rnd(5, 4 * EXTENT)
    vol.write(0, content)
    vol.close()
    node = dep.node("b")
    vol = node.open("v")
    # Part of an absent extent cannot be zeroed without fetching it first.
    with pytest.raises(NotFast):
        vol.zero(10, 100, fast_only=True)
    assert vol.present_extents == 0
    vol.zero(EXTENT, EXTENT, fast_only=True)  # a whole extent costs nothing
    assert vol.present_extents == 1 and node.ctx.cache.fetched_count == 0
    vol.cache(2 * EXTENT, 2 * EXTENT)  # prefetch
    assert vol.is_resident(2 * EXTENT, 2 * EXTENT) and not vol.is_resident(0, 1)
    fetched = node.ctx.cache.fetched_count
    assert vol.read(2 * EXTENT, 2 * EXTENT) == content[2 * EXTENT :]
    assert node.ctx.cache.fetched_count == fetched
    vol.zero(10, 100)
    want = content[:10] + bytes(100) + content[110:EXTENT] + bytes(EXTENT) + content[2 * EXTENT :]
    assert vol.read(0, 4 * EXTENT) == want
    vol.close()
    assert dep.node("c").view("v").read(0, 4 * EXTENT) == want

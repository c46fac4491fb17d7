"""The volume backend: a real loft volume (and snapshot view) served over NBD."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbd_helpers import Client, ServerThread

from loft.blockstore import Blockstore, Volume
from loft.blockstore.errors import (
    BlockstoreError,
    InvalidArgument,
    LeaseLost,
    NotFast,
    ReadOnlyVolume,
    VolumeIOError,
)
from loft.config import Settings
from loft.nbd import protocol as p
from loft.nbd.server import ExportRegistry, errno_for
from loft.node.served import ServedVolume
from loft.node.volume_backend import VolumeBackend, backend_error

C = p.Command
MIB = 1 << 20
SIZE = 32 * MIB
EXTENT = 1 * MIB
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def blockstore(tmp_path: Path) -> Iterator[Blockstore]:
    (tmp_path / "catalog").mkdir()
    settings = Settings(
        data_dir=tmp_path / "node",
        chunks_url=f"file://{tmp_path / 'chunks'}",
        catalog_url=f"sqlite:///{tmp_path / 'catalog' / 'catalog.db'}",
        cache_bytes=1 << 30,
        chunk_cache_bytes=64 * MIB,
    )
    bs = Blockstore.from_settings(settings)
    yield bs
    bs.close()


def test_volume_and_snapshot_over_nbd(blockstore: Blockstore, tmp_path: Path) -> None:
    blockstore.create("vol", size=SIZE, extent_size=EXTENT)
    seed = blockstore.open("vol")
    first = os.urandom(3 * MIB)
    seed.write(4 * MIB, first)
    seed.flush()
    seed.commit()
    seed.close()
    blockstore.snapshot("vol", "s1")
    blockstore.fork("vol@s1", "child")

    vol = blockstore.open("child")  # a fork: nothing local yet, reads fetch lazily
    view = blockstore.view("vol@s1")
    reg = ExportRegistry()
    reg.add("child", VolumeBackend(vol))
    reg.add("vol@s1", VolumeBackend(view))
    try:
        with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
            c = Client(st.sock)
            c.handshake("child", contexts=("base:allocation", "qemu:allocation-depth"))
            assert c.flags & p.TransmissionFlag.CAN_MULTI_CONN
            assert not vol.is_resident(4 * MIB, 4096)
            # Cold read: served on a worker thread after a fetch from the chunk store.
            assert c.read(4 * MIB, 3 * MIB) == first
            assert vol.is_resident(4 * MIB, 4096)
            # Sparse read of a never-written range: all holes.
            chunks = c.request(C.READ, 16 * MIB, 2 * MIB)
            assert all(isinstance(ch, p.OffsetHoleChunk) for ch in chunks)
            # Writes, zero, trim, FUA, flush.
            data = os.urandom(MIB + 123)
            assert c.error_of(c.request(C.WRITE, 10 * MIB + 7, payload=data)) == 0
            assert c.error_of(c.request(C.WRITE, 0, payload=b"f" * 4096, flags=1)) == 0
            assert c.error_of(c.request(C.WRITE_ZEROES, 5 * MIB, MIB)) == 0
            assert c.error_of(c.request(C.TRIM, 20 * MIB, 2 * MIB)) == 0
            assert c.error_of(c.request(C.CACHE, 0, SIZE)) == 0
            assert c.error_of(c.request(C.FLUSH)) == 0
            assert c.read(10 * MIB + 7, len(data)) == data
            assert c.read(5 * MIB, MIB) == bytes(MIB)
            chunks = c.request(C.BLOCK_STATUS, 0, SIZE)
            by_ctx = {ch.context_id: ch.extents for ch in chunks}  # type: ignore[attr-defined]
            assert set(by_ctx) == {1, 2}
            assert by_ctx[1][0] == (4096, 0) or by_ctx[1][0][1] == 0
            depths = {d for _, d in by_ctx[2]}
            assert 1 in depths and 2 in depths  # written here, and inherited from vol
            # The snapshot export is read-only and shows the snapshot's content.
            s = Client(st.sock)
            s.handshake("vol@s1")
            assert s.flags & p.TransmissionFlag.READ_ONLY
            assert s.read(4 * MIB, 3 * MIB) == first
            assert s.error_of(s.request(C.WRITE, 0, payload=b"x")) == p.Errno.EPERM
            # Out-of-range requests never reach the volume.
            assert c.error_of(c.request(C.WRITE, SIZE - 1, payload=b"ab")) == p.Errno.ENOSPC
    finally:
        vol.close()
        view.close()


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (ReadOnlyVolume("x"), p.Errno.EPERM),
        (NotFast("x"), p.Errno.ENOTSUP),
        (LeaseLost("x"), p.Errno.ESHUTDOWN),
        (InvalidArgument("x"), p.Errno.EINVAL),
        (VolumeIOError("x"), p.Errno.EIO),
    ],
)
def test_volume_backend_translates_blockstore_errors(exc: BlockstoreError, want: p.Errno) -> None:
    err = backend_error(exc)
    assert isinstance(err, OSError) and errno_for(err) == want
    assert str(err) == str(exc)  # the message (and hint) reach the client unchanged


def test_served_volume_reads_on_the_event_loop_only_once_open(blockstore: Blockstore) -> None:
    """A served volume's read_nowait (the server's one call for a small READ) never opens
    the volume -- opening takes the lease and may block -- and reads it once open."""
    rec = blockstore.create("lazy", size=SIZE, extent_size=EXTENT)
    opened: list[str] = []

    def opener(name: str) -> Volume:
        opened.append(name)
        return blockstore.open(name)

    served = ServedVolume(rec.name, rec.uid, rec.size, rec.extent_size, opener)
    backend = VolumeBackend(served)
    assert backend.read_resident is not None
    try:
        assert backend.read_resident(0, 4096) is None and opened == []
        backend.pwrite(0, b"y" * 4096)  # a worker thread's call: opens the volume
        assert opened == ["lazy"]
        assert bytes(backend.read_resident(0, 4096) or b"") == b"y" * 4096
        backend.pwrite(SIZE - EXTENT - 10, b"z" * 20)
        assert backend.read_resident(SIZE - EXTENT - 10, 20) == b"z" * 20  # two extents
    finally:
        served.close()


def test_snapshot_views_have_no_one_call_read(blockstore: Blockstore) -> None:
    """A snapshot view's read may fetch: the server asks is_resident before it."""
    blockstore.create("base", size=SIZE, extent_size=EXTENT)
    blockstore.snapshot("base", "s")
    view = blockstore.view("base@s")
    try:
        assert VolumeBackend(view).read_resident is None
    finally:
        view.close()

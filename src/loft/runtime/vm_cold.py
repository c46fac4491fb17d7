"""A VM's memory image in the chunk store: uploaded after a snapshot, fetched on any node.

A memory snapshot (:mod:`loft.runtime.vm_image`) lives on one node's disk; to outlive the
node, or to resume on another one ("cold"), it becomes a volume of its own,
``loft-vm-<image id>`` (loft's reserved prefix, as templates have): the RAM file the
image maps at offset 0, then, at the RAM's size, the device state behind an 8-byte
length. It is written through the blockstore API from the RAM file's data ranges only,
and pieces that are all zeros are skipped, so pages the guest never touched cost
nothing, and identical extents (of other images, of the same guest suspended again) are
stored once: chunks are keyed by their content.

The environment disk an image was taken with (:mod:`loft.runtime.vm_envdisk`) travels
the same way, as ``loft-vmenv-<digest>``: named by its content, so every image of every
VM on that environment shares one volume (and, chunk by chunk, with its other versions).

A fetch exports the volume back into the node's images directory (sparse: zero extents
stay holes), checks the state against the record's SHA-256, and from then on the image
is restored as any local one. The volume is never served over NBD: only this code
reads or writes it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from loft.blockstore import Blockstore
from loft.blockstore.api import DEFAULT_MAX_DIRTY
from loft.runtime.errors import WorkspaceError
from loft.runtime.vm_image import ImageRecord, data_ranges, sha256_file

__all__ = [
    "EXTENT_SIZE",
    "data_pieces",
    "env_volume_name",
    "fetch",
    "fetch_env",
    "remove",
    "upload",
    "upload_env",
    "volume_name",
]

#: 1 MiB extents: a guest's RAM changes in scattered pages, and smaller extents make a
#: second suspend of one VM, and images of VMs booted from the same kernel, share more.
EXTENT_SIZE = 1 << 20
_LEN = 8


def volume_name(image: str) -> str:
    """The volume that holds image ``image`` in the chunk store."""
    return f"loft-vm-{image}"


def _size(rec: ImageRecord, state_len: int) -> int:
    return (rec.memory_mib << 20) + _LEN + state_len


def upload(bs: Blockstore, images: Path, rec: ImageRecord) -> str:
    """Write the image of ``rec`` (its state, and the RAM file it maps) into its volume
    and commit; the volume's name. Idempotent: an image already uploaded is left."""
    name = volume_name(rec.image)
    if bs.heads.find(name) is not None:
        return name
    state_bytes = (images / rec.image / "state").read_bytes()
    pieces = itertools.chain(
        data_pieces(images / rec.ram_from / "ram", EXTENT_SIZE),
        [(rec.memory_mib << 20, len(state_bytes).to_bytes(_LEN, "big") + state_bytes)],
    )
    _write_volume(bs, name, _size(rec, len(state_bytes)), pieces)
    return name


def _write_volume(bs: Blockstore, name: str, size: int,
                  pieces: Iterable[tuple[int, bytes]]) -> None:  # fmt: skip
    """A new volume ``name`` of ``size`` bytes holding ``pieces`` (offset, bytes),
    committed; none when any step fails."""
    bs.heads.create(name, size=-(-size // EXTENT_SIZE) * EXTENT_SIZE, extent_size=EXTENT_SIZE,
                    durability="local", commit_interval=5.0,
                    max_dirty=DEFAULT_MAX_DIRTY)  # fmt: skip
    try:
        vol = bs.open(name)
        try:
            for offset, data in pieces:
                vol.write(offset, data)
        finally:
            vol.close()  # commits
    except BaseException:
        bs.remove(name)
        raise


def fetch(bs: Blockstore, images: Path, rec: ImageRecord) -> None:
    """Make the image of ``rec`` whole in ``images`` from its volume (what is there
    already is kept); WorkspaceError when the volume is missing or does not match."""
    state = images / rec.image / "state"
    ram = images / rec.ram_from / "ram"
    if state.is_file() and ram.is_file():
        return
    name = volume_name(rec.image)
    if bs.heads.find(name) is None:
        raise WorkspaceError(f"VM image {rec.image} is neither on this node nor in the chunk store",
                             hint="restore the volume snapshot alone (a cold boot)")  # fmt: skip
    for d in {state.parent, ram.parent}:
        d.mkdir(mode=0o700, exist_ok=True)
    tmp = images / f".{rec.image}.fetch"
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            bs.export_image(name, f)
        memory = rec.memory_mib << 20
        with open(tmp, "rb") as f:
            f.seek(memory)
            length = int.from_bytes(f.read(_LEN), "big")
            if length > os.fstat(f.fileno()).st_size - memory - _LEN:
                raise WorkspaceError(f"VM image volume {name} is damaged (bad state length)")
            data = f.read(length)
        state_tmp = state.with_name(".state.tmp")
        state_tmp.write_bytes(data)
        os.chmod(state_tmp, 0o600)
        if sha256_file(state_tmp) != rec.state_sha256:
            state_tmp.unlink()
            raise WorkspaceError(f"VM image volume {name} does not match its record")
        os.truncate(tmp, memory)
        if not ram.is_file():
            os.replace(tmp, ram)
        os.replace(state_tmp, state)
    finally:
        tmp.unlink(missing_ok=True)


def env_volume_name(sha256: str) -> str:
    """The volume that holds the environment disk image of digest ``sha256``."""
    return f"loft-vmenv-{sha256[:32]}"


def upload_env(bs: Blockstore, image: Path, sha256: str) -> str:
    """Write environment disk ``image`` (of digest ``sha256``) into its volume; the
    volume's name. Idempotent, as :func:`upload`."""
    name = env_volume_name(sha256)
    if bs.heads.find(name) is not None:
        return name
    _write_volume(bs, name, image.stat().st_size, data_pieces(image, EXTENT_SIZE))
    return name


def fetch_env(bs: Blockstore, sha256: str, dest: Path) -> None:
    """Make ``dest`` (0600) the environment disk image of digest ``sha256`` from its
    volume; WorkspaceError when there is none or it does not match."""
    name = env_volume_name(sha256)
    if bs.heads.find(name) is None:
        raise WorkspaceError(f"environment disk {sha256[:16]} is neither on this node nor "
                             "in the chunk store",
                             hint="restore the volume snapshot alone (a cold boot)")  # fmt: skip
    tmp = dest.with_name(f".{dest.name}.fetch")
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            bs.export_image(name, f)
        if sha256_file(tmp) != sha256:
            raise WorkspaceError(f"environment disk volume {name} does not match its record")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def remove(bs: Blockstore, image: str) -> None:
    """Delete image ``image``'s volume, if it was uploaded."""
    name = volume_name(image)
    if bs.heads.find(name) is not None:
        bs.remove(name)


def data_pieces(path: Path, piece: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of ``path``'s ``piece``-aligned pieces in its data ranges that
    hold something other than zeros (a new volume reads as zeros already)."""
    zero = bytes(piece)
    with open(path, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        unread = 0  # pieces before it are read (two data ranges may share one)
        for data_at, hole in data_ranges(fd):
            for offset in range(max(data_at - data_at % piece, unread), hole, piece):
                data = os.pread(fd, min(piece, end - offset), offset)
                if data != zero[: len(data)]:
                    yield offset, data
                unread = offset + piece

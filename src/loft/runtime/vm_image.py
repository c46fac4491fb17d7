"""A VM's memory snapshot: the images on the node's disk and the record that names them.

A snapshot of a running VM is its device state (a migration stream) and its RAM, taken
while the vCPUs are stopped, beside the volume snapshot the caller takes at the same
moment. Both live in an **image** directory, ``<data>/runtime/vm-images/<id>`` (0700):

- ``ram``: a copy of the VM's RAM file (holes where it has them), never written again:
  every VM restored from it starts on a sparse copy of it of its own;
- ``state``: the device state; for a VM that runs on a private mapping of an image (as
  restores did before each got its own RAM file), the stream carries its RAM too, and
  the image names the RAM file it loads over (``ram_from``) instead of holding one.

The caller keeps the :class:`~loft.runtime.interface.RuntimeSnapshot` whose ``state`` is
the record (:func:`encode_record`): magic, format version, the image's id, the
workspace it came from, the memory size, the state's SHA-256, and a CRC32 of it all, so
a damaged or foreign record is refused before anything starts (Firecracker's snapshot
header, in JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loft.runtime.errors import WorkspaceError
from loft.runtime.vm_envdisk import check_env_ref

__all__ = [
    "FORMAT",
    "MAGIC",
    "ImageRecord",
    "copy_sparse",
    "data_ranges",
    "decode_framed",
    "decode_record",
    "encode_framed",
    "encode_record",
    "is_image_id",
    "sha256_file",
]

MAGIC = b"LOFTVMS\n"
FORMAT = 1
#: A record is a few hundred bytes; anything much longer is not one.
_MAX_RECORD = 4096
_ID = re.compile(r"[0-9a-f]{32}")


def is_image_id(ident: str) -> bool:
    """Whether ``ident`` is a memory image's id (32 lowercase hex digits, as made)."""
    return _ID.fullmatch(ident) is not None


@dataclass(frozen=True)
class ImageRecord:
    """What names a memory snapshot: image ``image`` (a directory of the images dir)
    taken of ``workspace`` with ``memory_mib`` of RAM; ``ram_from``: the image whose
    ``ram`` file to map (itself, or the one a restored VM ran from); ``state_sha256``:
    of its ``state`` file."""

    image: str
    workspace: str
    memory_mib: int
    ram_from: str
    state_sha256: str
    #: The environment disk the guest had mounted (its store path name and image
    #: digest; empty for a VM without one), linked beside as ``env.img``: a restore
    #: needs those very bytes.
    env: str = ""
    env_sha256: str = ""

    def __post_init__(self) -> None:
        for ident in (self.image, self.ram_from):
            if not is_image_id(ident):
                raise ValueError(f"bad image id {ident!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.state_sha256):
            raise ValueError("bad state digest")
        if not 0 < self.memory_mib <= 1 << 22:
            raise ValueError(f"bad memory size {self.memory_mib} MiB")
        check_env_ref(self.env, self.env_sha256)


def encode_framed(magic: bytes, fmt: int, fields: Mapping[str, object]) -> bytes:
    """``fields`` framed as loft frames what it records of a VM's memory (snapshot
    records, suspend headers): magic, format, length-prefixed JSON, CRC32 of all before."""
    body = json.dumps(fields, sort_keys=True).encode()
    data = magic + struct.pack(">II", fmt, len(body)) + body
    return data + struct.pack(">I", zlib.crc32(data))


def decode_framed(data: bytes, magic: bytes, fmt: int, limit: int, what: str,
                  hint: str = "") -> dict[str, Any]:  # fmt: skip
    """The fields :func:`encode_framed` framed in ``data`` (at most ``limit`` bytes);
    WorkspaceError naming ``what`` when it is not one, of another format or damaged."""
    head = len(magic) + 8
    if len(data) > limit or len(data) < head + 4 or not data.startswith(magic):
        raise WorkspaceError(f"not a {what}")
    got, length = struct.unpack_from(">II", data, len(magic))
    if got != fmt:
        raise WorkspaceError(f"{what} format {got} is not {fmt}", hint=hint)
    if len(data) != head + length + 4 or zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
        raise WorkspaceError(f"the {what} is damaged (checksum mismatch)")
    try:
        fields = json.loads(data[head:-4])
    except ValueError as e:
        raise WorkspaceError(f"the {what} is damaged: {e}") from e
    if not isinstance(fields, dict):
        raise WorkspaceError(f"the {what} is damaged: not an object")
    return fields


def encode_record(rec: ImageRecord) -> bytes:
    """The bytes of ``rec`` (:func:`encode_framed`)."""
    return encode_framed(MAGIC, FORMAT, asdict(rec))


def decode_record(data: bytes) -> ImageRecord:
    """The record in ``data``; WorkspaceError when it is damaged, of another format, or
    not a VM memory snapshot at all."""
    what = "VM memory snapshot record"
    fields = decode_framed(data, MAGIC, FORMAT, _MAX_RECORD, what,
                           hint="restore it with the loft version that took it")  # fmt: skip
    try:
        return ImageRecord(**fields)
    except (ValueError, TypeError) as e:
        raise WorkspaceError(f"the {what} is damaged: {e}") from e


def sha256_file(path: Path) -> str:
    """The SHA-256 of ``path``'s contents, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def data_ranges(fd: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` of each data range of file ``fd`` (``SEEK_DATA``/``SEEK_HOLE``):
    what a sparse RAM file holds, the rest holes."""
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole is left
            return
        pos = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, pos


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new ``dst`` (0600) through its data ranges only, so the holes of
    a RAM file (pages the guest never touched) stay holes; fsynced. Where the filesystem
    shares extents (XFS, Btrfs) ``copy_file_range`` clones them: constant time, no byte
    moved, each block shared copy-on-write until one side writes it, so a VM restored
    onto the copy pages its memory in from the image lazily."""
    fd_in = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd_in).st_size
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd_out, size)
            for start, end in data_ranges(fd_in):
                while start < end:
                    n = os.copy_file_range(fd_in, fd_out, end - start, start, start)
                    if n == 0:
                        break
                    start += n
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)

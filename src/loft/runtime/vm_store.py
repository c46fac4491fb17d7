"""A suspended VM's image in the chunk store: uploaded at each suspend, fetched on any node.

A suspend (:meth:`loft.runtime.vm.VmRuntime.suspend`) leaves the VM's RAM file and its
device state beside the VM on the node; to outlive the node, they go into a volume of
the workspace's own, ``loft-vm-suspend-<workspace id>`` (loft's reserved prefix), one
per workspace, rewritten in place at every suspend:

- ``[0, 1 MiB)``: the **header**: an 8-byte length, then the record
  (:func:`encode_header`: magic, format, JSON, CRC32); zeroed first at every upload
  and written last;
- ``[1 MiB, 1 MiB + M)``: the RAM file (M = the VM's memory), 1 MiB extents;
- from ``1 MiB + M``: the device state.

Only extents whose content changed since the last upload are written: each RAM extent's
digest (the blockstore's keyed hash, :meth:`loft.blockstore.Blockstore.digest`) is
compared with the one the volume's committed manifest holds, extents that are zeros now
are zeroed, and the chunk store keeps chunks by content, so a second suspend of a VM
stores only the pages that changed, and pages no guest touched cost nothing.

The record says what the image belongs with: the workspace, the memory size, the
SHA-256 of the state, a SHA-256 over every RAM extent's digest (``ram_sum``), the
committed state of the workspace's volume when the VM was suspended (its manifest
root), and the environment disk its guest has mounted (name and SHA-256; the disk is a
volume of its own, fetched and checked on a node that lacks it). A fetch resumes only
an image whose record checks out, whose manifest matches ``ram_sum`` (each chunk is
checked against its digest as it is read) and whose volume root is the workspace
volume's root now: an upload cut short (a commit that caught
half the extents), one of another workspace, or one older than the disk (the VM ran
and wrote after it, then died before its next upload) is refused, and the VM boots
from its disk instead. Memory and disk always agree.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loft.blockstore import Blockstore
from loft.blockstore.chunks import ZERO_HASH
from loft.runtime.errors import WorkspaceError
from loft.runtime.vm_cold import EXTENT_SIZE, data_pieces
from loft.runtime.vm_envdisk import EnvDisk, check_env_ref
from loft.runtime.vm_image import decode_framed, encode_framed

__all__ = [
    "MAGIC",
    "PREFIX",
    "SuspendHeader",
    "Upload",
    "decode_header",
    "encode_header",
    "fetch",
    "header",
    "header_exists",
    "remove",
    "upload",
    "volume_name",
]

MAGIC = b"LOFTVMU\n"
_FORMAT = 1
PREFIX = "loft-vm-suspend-"
#: A header is a few hundred bytes; anything much longer is not one.
_MAX_HEADER = 4096
_LEN = 8
_HEX64 = re.compile(r"[0-9a-f]{64}")
#: The largest state a suspend image holds: device state is tens of KB; a VM whose RAM
#: is a private mapping (restored by an older loft) streams its RAM too.
_STATE_SLACK = 64 << 20
#: The header's extent comes first, the RAM behind it.
_RAM_AT = EXTENT_SIZE
#: Only the upload commits (once, at its end), never the volume's timer half way.
_NO_AUTO_COMMIT = 86400.0
#: Extents fetched from the chunk store at once.
_AHEAD = 8


@dataclass(frozen=True)
class SuspendHeader:
    """What a suspend image in the chunk store is: of ``workspace``, ``memory_mib`` of
    RAM whose extents' digests hash to ``ram_sum``, a state of ``state_len`` bytes with
    SHA-256 ``state_sha256``, taken when the workspace's volume's committed root was
    ``disk_root``."""

    workspace: str
    memory_mib: int
    state_len: int
    state_sha256: str
    ram_sum: str
    disk_root: str
    #: The environment disk the guest has mounted (its store path name and digest; empty
    #: for a VM without one), which travels as its own volume (:mod:`~loft.runtime.vm_cold`).
    env: str = ""
    env_sha256: str = ""

    def __post_init__(self) -> None:
        for value in (self.state_sha256, self.ram_sum, self.disk_root):
            if not _HEX64.fullmatch(value):
                raise ValueError(f"bad digest {value!r}")
        check_env_ref(self.env, self.env_sha256)
        if not 0 < self.memory_mib <= 1 << 22:
            raise ValueError(f"bad memory size {self.memory_mib} MiB")
        if not 0 < self.state_len <= (self.memory_mib << 20) + _STATE_SLACK:
            raise ValueError(f"bad state length {self.state_len}")


@dataclass(frozen=True)
class Upload:
    """What an upload did: extents written (changed) of the RAM's, and bytes of new
    chunks the chunk store took (compressed; chunks it held already cost nothing)."""

    volume: str
    extents_written: int
    extents_total: int
    stored_bytes: int
    seconds: float


def volume_name(workspace: str) -> str:
    """The volume that holds ``workspace``'s suspend image."""
    return f"{PREFIX}{workspace}"


def encode_header(h: SuspendHeader) -> bytes:
    """The bytes of ``h`` (:func:`~loft.runtime.vm_image.encode_framed`)."""
    return encode_framed(MAGIC, _FORMAT, asdict(h))


def decode_header(data: bytes) -> SuspendHeader:
    """The header in ``data``; WorkspaceError when it is damaged or not one."""
    what = "VM suspend image header"
    fields = decode_framed(data, MAGIC, _FORMAT, _MAX_HEADER, what)
    try:
        return SuspendHeader(**fields)
    except (ValueError, TypeError) as e:
        raise WorkspaceError(f"the {what} is damaged: {e}") from e


def _size(memory: int, state_len: int) -> int:
    return _RAM_AT + memory + -(-state_len // EXTENT_SIZE) * EXTENT_SIZE


def _ram_sum(digests: list[bytes]) -> str:
    return hashlib.sha256(b"".join(digests)).hexdigest()


def upload(bs: Blockstore, workspace: str, ram: Path, state: Path, disk_root: str,
           env: EnvDisk | None = None) -> Upload:  # fmt: skip
    """Write the suspend image (``ram``, ``state``) of ``workspace``, whose volume's
    committed root is ``disk_root`` and whose guest has environment disk ``env``
    mounted, into its volume: only the extents that changed since the last upload, the
    header last, then one commit."""
    t0 = time.monotonic()
    name = volume_name(workspace)
    memory = ram.stat().st_size
    if memory % EXTENT_SIZE:
        raise WorkspaceError(f"VM RAM file {ram} is not a whole number of MiB")
    state_bytes = state.read_bytes()
    size = _size(memory, len(state_bytes))
    existing = bs.heads.find(name)
    if existing is not None and existing.size != size:  # another memory size: start anew
        bs.remove(name)
        existing = None
    if existing is None:
        bs.heads.create(name, size=size, extent_size=EXTENT_SIZE, durability="local",
                        commit_interval=_NO_AUTO_COMMIT, max_dirty=size)  # fmt: skip
        before: dict[int, bytes] = {}
    else:
        before = dict(bs.view(name).written_extents())
    n = memory // EXTENT_SIZE
    digests = [ZERO_HASH] * n
    written = 0
    vol = bs.open(name)
    try:
        # an upload cut short must not leave an old header over new pieces: it goes first
        vol.zero(0, EXTENT_SIZE)
        for offset, data in data_pieces(ram, EXTENT_SIZE):
            e = offset // EXTENT_SIZE
            digests[e] = bs.digest(data)
            if before.get(e + 1) != digests[e]:
                vol.write(_RAM_AT + offset, data)
                written += 1
        for e in before:  # RAM that is zeros now
            if 1 <= e <= n and digests[e - 1] == ZERO_HASH:
                vol.zero(e * EXTENT_SIZE, EXTENT_SIZE)
                written += 1
        vol.write(_RAM_AT + memory, state_bytes)
        h = SuspendHeader(workspace, memory >> 20, len(state_bytes),
                          hashlib.sha256(state_bytes).hexdigest(), _ram_sum(digests),
                          disk_root, env.name if env else "",
                          env.sha256 if env else "")  # fmt: skip
        blob = encode_header(h)
        vol.write(0, len(blob).to_bytes(_LEN, "big") + blob)
        vol.commit()
        result = vol.last_commit
        stored = result.uploaded_bytes if result is not None else 0
    finally:
        vol.close()
    return Upload(name, written, n, stored, time.monotonic() - t0)


def header_exists(bs: Blockstore, workspace: str) -> bool:
    """Whether ``workspace`` has a suspend image in the chunk store (unchecked)."""
    return bs.heads.find(volume_name(workspace)) is not None


def header(bs: Blockstore, workspace: str) -> SuspendHeader | None:
    """The header of ``workspace``'s uploaded suspend image; None when there is none;
    WorkspaceError when it is damaged (or an upload was cut short)."""
    name = volume_name(workspace)
    if bs.heads.find(name) is None:
        return None
    raw = bs.view(name).read(0, _LEN + _MAX_HEADER)
    length = int.from_bytes(raw[:_LEN], "big")
    if not 0 < length <= _MAX_HEADER:
        raise WorkspaceError(f"VM suspend image {name} has no header (an upload cut short?)")
    return decode_header(raw[_LEN : _LEN + length])


def fetch(bs: Blockstore, workspace: str, disk_root: str, ram: Path, state: Path) -> SuspendHeader:
    """Write ``workspace``'s uploaded suspend image into new files ``ram`` (sparse)
    and ``state``, once its header, its RAM's digests and its state check out and it
    belongs with the volume's root ``disk_root``; WorkspaceError (and nothing written)
    otherwise."""
    name = volume_name(workspace)
    h = header(bs, workspace)
    if h is None:
        raise WorkspaceError(f"no suspend image of {workspace} in the chunk store")
    if h.workspace != workspace:
        raise WorkspaceError(f"the suspend image in {name} is of workspace {h.workspace}")
    if h.disk_root != disk_root:
        raise WorkspaceError(f"the suspend image in {name} is older than the disk")
    view = bs.view(name)
    memory = h.memory_mib << 20
    n = memory // EXTENT_SIZE
    if view.size != _size(memory, h.state_len):
        raise WorkspaceError(f"the suspend image in {name} does not fit its header")
    if _ram_sum([view.digest(e + 1) for e in range(n)]) != h.ram_sum:
        raise WorkspaceError(f"the suspend image in {name} is damaged (its RAM does not "
                             "match its header)")  # fmt: skip
    data = view.read(_RAM_AT + memory, h.state_len)
    if hashlib.sha256(data).hexdigest() != h.state_sha256:
        raise WorkspaceError(f"the suspend image in {name} is damaged (its state)")
    try:
        fd = os.open(ram, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, memory)
            written = [e for e, _ in view.written_extents() if 1 <= e <= n]
            for i in range(0, len(written), _AHEAD):  # a batch fetched at once
                batch = written[i : i + _AHEAD]
                view.cache(batch[0] * EXTENT_SIZE, (batch[-1] + 1 - batch[0]) * EXTENT_SIZE)
                for e in batch:
                    os.pwrite(fd, view.extent(e), (e - 1) * EXTENT_SIZE)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        ram.unlink(missing_ok=True)
        state.unlink(missing_ok=True)
        raise
    return h


def remove(bs: Blockstore, workspace: str) -> bool:
    """Delete ``workspace``'s uploaded suspend image; whether there was one."""
    name = volume_name(workspace)
    if bs.heads.find(name) is None:
        return False
    bs.remove(name)
    return True

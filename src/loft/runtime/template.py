"""Template volumes: a workspace's volume is a fork of a filesystem loft formatted once.

For each (size, extent size) there is one hidden volume, ``loft-template-<size>-<es>``
(``loft-template-16g-4m``), holding an ext4 filesystem with the workspace layout
(:mod:`loft.runtime.rootfs_layout`), and its snapshot ``base``. A workspace's volume is
a fork of ``base``: constant time whatever the size, no mkfs per workspace, and every
workspace shares the template's chunks (in the store and in the node's chunk cache).

How the filesystem is made, and why:

- ``mkfs.ext4 -d STAGING`` fills it from a directory without mounting anything;
- ``lazy_itable_init=0,lazy_journal_init=0``: no inode table or journal is left for
  the kernel to zero after the first mount. With lazy init, the ``ext4lazyinit`` thread
  would zero them in every workspace, writing (and committing) the same megabytes in
  each fork. Here mkfs discards the sparse image (punches holes, which read as zeros)
  and so marks every table zeroed without writing it: zero extents, nothing stored;
- ``-m 1``: reserved blocks keep root's daemons alive on a full multi-user disk; a
  workspace has one user, 1 % is enough;
- the default ``resize_inode`` stays, so a fork can later be grown online.

The image is then written into the volume through its data ranges only (``SEEK_DATA``,
and pieces that are all zeros skipped): a 16 GiB template holds a few MiB of metadata,
so the build costs about the same for every size.

Sizes: one template per size, built on first use. ``bench/workspace_template.py``
measured it against forking a smaller template and growing it with ``resize2fs``: a
build costs 0.14 s (1 GiB), 0.3 s (16 GiB), 0.6 s (64 GiB), once per node and size,
while growing a 1 GiB filesystem to 16 or 64 GiB costs every workspace 0.1 s and leaves
80 or 184 MiB of new metadata dirty in it, to commit and store per workspace (and needs
CAP_SYS_RESOURCE to do online, which some hosts drop from root).

The template's bytes are written through the blockstore API and committed to the chunk
store like any volume's (so they dedup), not imported: an import flags the volume
raw-written, and this filesystem is loft's own. A template that is flagged (someone
wrote it raw) is refused, never forked.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loft.blockstore import Blockstore
from loft.blockstore.api import DEFAULT_EXTENT_SIZE, DEFAULT_MAX_DIRTY, DEFAULT_SIZE
from loft.blockstore.errors import SnapshotNotFound
from loft.blockstore.heads import VolumeRecord
from loft.blockstore.names import RESERVED_PREFIX, check_geometry, check_name
from loft.errors import LoftError
from loft.runtime.rootfs_layout import populate

__all__ = [
    "BASE_SNAPSHOT",
    "MKFS_OPTIONS",
    "TEMPLATE_PREFIX",
    "TemplateError",
    "create_workspace_volume",
    "ensure_template",
    "format_image",
    "template_name",
    "write_image",
]

log = logging.getLogger("loft.runtime")

TEMPLATE_PREFIX = f"{RESERVED_PREFIX}template-"
BASE_SNAPSHOT = "base"
#: mkfs.ext4 options (see the module docstring for each one's reason).
MKFS_OPTIONS = (
    "-q",
    "-F",
    "-b",
    "4096",
    "-m",
    "1",
    "-L",
    "workspace",
    "-E",
    "lazy_itable_init=0,lazy_journal_init=0,root_owner=0:0",
)


class TemplateError(LoftError):
    """A template volume could not be made or used."""


def template_name(size: int, extent_size: int) -> str:
    """The template volume's name for a geometry: ``loft-template-16g-4m``."""
    return f"{TEMPLATE_PREFIX}{_exact(size)}-{_exact(extent_size)}"


def _exact(n: int) -> str:
    """``n`` bytes in the largest unit that divides it exactly (a name must be exact)."""
    for shift, unit in ((40, "t"), (30, "g"), (20, "m"), (10, "k")):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def ensure_template(
    bs: Blockstore, size: int = DEFAULT_SIZE, extent_size: int = DEFAULT_EXTENT_SIZE
) -> str:
    """The template snapshot for this geometry (``NAME@base``), built on first use."""
    check_geometry(size, extent_size)
    name = template_name(size, extent_size)
    ref = _usable(bs, name)
    if ref is not None:
        return ref
    with _build_lock(bs):
        ref = _usable(bs, name)  # another build may have finished while we waited
        if ref is not None:
            return ref
        stale = bs.heads.find(name)
        if stale is not None:  # a build that died before its snapshot: start over
            log.warning("template.rebuild volume=%s reason=incomplete", name)
            bs.remove(name)
        _build(bs, name, size, extent_size)
    ref = _usable(bs, name)
    assert ref is not None
    return ref


def create_workspace_volume(
    bs: Blockstore,
    name: str,
    *,
    size: int = DEFAULT_SIZE,
    extent_size: int = DEFAULT_EXTENT_SIZE,
) -> VolumeRecord:
    """A new volume ``name`` holding a fresh workspace root filesystem: a fork of the
    template of its geometry (built first if this is the first of its size)."""
    return bs.fork(ensure_template(bs, size, extent_size), name)


def _usable(bs: Blockstore, name: str) -> str | None:
    """``NAME@base`` when the template exists and is complete; None when it is absent or
    incomplete; TemplateError when it may not be used."""
    rec = bs.heads.find(name)
    if rec is None:
        return None
    if rec.raw_written:
        raise TemplateError(
            f"template volume {name!r} was written raw; workspaces are never made from it",
            hint=f"remove it (`loft volume rm {name}`); it is built again on next use",
        )
    try:
        bs.heads.get_snapshot(rec, BASE_SNAPSHOT)
    except SnapshotNotFound:
        return None
    return f"{name}@{BASE_SNAPSHOT}"


@contextmanager
def _build_lock(bs: Blockstore) -> Iterator[None]:
    """One template build at a time on this node (a second waits, then finds it built)."""
    directory = _templates_dir(bs)
    with open(directory / "build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _templates_dir(bs: Blockstore) -> Path:
    directory = bs.ctx.settings.data_dir / "templates"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _build(bs: Blockstore, name: str, size: int, extent_size: int) -> None:
    """Format an image with the workspace layout, write it into a new volume ``name``
    and snapshot it as ``base``."""
    check_name(name, new=True)
    with tempfile.TemporaryDirectory(dir=_templates_dir(bs)) as scratch:
        image = format_image(Path(scratch), size)
        bs.heads.create(
            name,
            size=size,
            extent_size=extent_size,
            durability="local",
            commit_interval=5.0,
            max_dirty=DEFAULT_MAX_DIRTY,
        )
        try:
            write_image(bs, name, image)
            bs.snapshot(name, BASE_SNAPSHOT)
        except BaseException:
            try:
                bs.remove(name)
            except LoftError as e:  # the next build removes it then
                log.warning("template.cleanup volume=%s error=%s", name, e)
            raise
    log.info("template.built volume=%s size=%d extent_size=%d", name, size, extent_size)


def format_image(scratch: Path, size: int) -> Path:
    """A sparse image of ``size`` bytes in ``scratch`` holding an ext4 with the workspace
    layout (:data:`MKFS_OPTIONS`)."""
    staging = scratch / "root"
    staging.mkdir()
    populate(staging)
    image = scratch / "image"
    with open(image, "wb") as f:
        f.truncate(size)
    proc = subprocess.run(
        ["mkfs.ext4", *MKFS_OPTIONS, "-d", str(staging), str(image)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise TemplateError(
            f"mkfs.ext4 failed: {proc.stderr.strip()}",
            hint="is e2fsprogs (mkfs.ext4) 1.43 or newer installed?",
        )
    return image


def write_image(bs: Blockstore, name: str, image: Path) -> None:
    """Write what ``image`` holds into volume ``name`` (new, so all zeros) through the
    blockstore API, and commit: only its pieces that are not all zeros are written."""
    vol = bs.open(name)
    try:
        for offset, data in _data_pieces(image, vol.extent_size):
            vol.write(offset, data)
    finally:
        vol.close()  # commits


def _data_pieces(image: Path, piece: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of the image's ``piece``-aligned pieces that hold something
    other than zeros (a new volume reads as zeros already)."""
    with open(image, "rb") as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        pos = 0  # every piece before pos was looked at
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:  # ENXIO: only a hole is left
                if e.errno == errno.ENXIO:
                    return
                raise
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            for offset in range(data - data % piece, hole, piece):
                chunk = os.pread(fd, min(piece, end - offset), offset)
                if chunk.count(0) != len(chunk):
                    yield offset, chunk
                pos = offset + piece

"""Freezing a mounted workspace filesystem for a consistent snapshot of its volume.

A snapshot of a running workspace must catch the filesystem at a point where everything
on its disk agrees: no half-written journal transaction, no data block a committed
inode points to and the disk lacks. The sequence::

    syncfs(root)            write back the bulk of dirty data while writers still run,
                            so the frozen window below is short
    with frozen(root):      FIFREEZE: new writes block; the kernel syncs what is left,
                            checkpoints the journal (the on-disk image is clean: no
                            recovery needed) and flushes the device cache -- through the
                            loop device and nbdfuse that is an NBD FLUSH
        snapshot the volume (the disk service commits what it was sent, and records it)
                            FITHAW on leaving the block, whatever happened inside

Writers are paused only while the volume is snapshotted, which costs what the dirty
data costs (the upload runs after). :func:`frozen` always thaws: a filesystem left
frozen would hang every writer of the workspace.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loft import libc

__all__ = ["FIFREEZE", "FITHAW", "freeze", "frozen", "thaw"]

#: ``_IOWR('X', 119, int)`` and ``_IOWR('X', 120, int)`` (linux/fs.h).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def freeze(path: Path) -> None:
    """Freeze the filesystem mounted at ``path`` (OSError EBUSY if it already is)."""
    fd = _open(path)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    finally:
        os.close(fd)


def thaw(path: Path) -> None:
    """Thaw the filesystem mounted at ``path`` (OSError EINVAL if it is not frozen)."""
    fd = _open(path)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    finally:
        os.close(fd)


@contextmanager
def frozen(path: Path) -> Iterator[None]:
    """``syncfs``, then freeze for the block; thawed on the way out, always."""
    libc.syncfs_path(path)
    freeze(path)
    try:
        yield
    finally:
        thaw(path)

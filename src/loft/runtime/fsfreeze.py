"""Freezing a workspace's filesystem for a consistent snapshot of its volume.

``FIFREEZE`` syncs the filesystem (its journal included) and then blocks every new write
until ``FITHAW``: what the block device holds meanwhile is a clean filesystem, which is
what the volume snapshot captures. It applies to the superblock, so any descriptor on the
filesystem will do: the host's mount of the workspace's root. ``syncfs`` first writes
back dirty data while writers still run, so the frozen pause is short. Both need host
root (CAP_SYS_ADMIN): nothing inside a workspace can freeze or thaw it.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from pathlib import Path

__all__ = ["freeze_filesystem", "thaw_filesystem"]

# linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int)
_FIFREEZE = 0xC0045877
_FITHAW = 0xC0045878
_libc = ctypes.CDLL(None, use_errno=True)


def _ioctl(mount: Path, request: int) -> None:
    fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if request == _FIFREEZE and _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs {mount}")
        fcntl.ioctl(fd, request, 0)
    finally:
        os.close(fd)


def freeze_filesystem(mount: Path) -> None:
    """``syncfs`` then ``FIFREEZE`` the filesystem mounted at ``mount``; EBUSY when it is
    frozen already."""
    _ioctl(mount, _FIFREEZE)


def thaw_filesystem(mount: Path) -> None:
    """``FITHAW`` the filesystem mounted at ``mount``; EINVAL when it is not frozen."""
    _ioctl(mount, _FITHAW)

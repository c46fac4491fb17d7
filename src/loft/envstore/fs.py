"""The store's filesystem chores: flush it (``syncfs``), remove read-only trees, and
measure what a tree takes on disk."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from loft import libc

__all__ = ["disk_usage", "force_rmtree", "syncfs"]


def syncfs(directory: Path) -> None:
    """Write back every dirty page of the filesystem holding ``directory``.

    ``syncfs(2)`` flushes the whole filesystem, other programs' data included; where it
    fails, an ``fsync`` of the directory is the fallback.
    """
    try:
        libc.syncfs_path(directory)
    except OSError:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def disk_usage(p: Path) -> int:
    """Bytes allocated on disk by the file or tree at ``p`` (hard links counted once)."""
    st = os.lstat(p)
    seen = {(st.st_dev, st.st_ino)}
    total = st.st_blocks * 512
    if stat.S_ISDIR(st.st_mode):
        for dirpath, dirnames, filenames in os.walk(p):
            for n in (*dirnames, *filenames):
                st = os.lstat(os.path.join(dirpath, n))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def force_rmtree(p: Path) -> None:
    """Remove a file or tree even when it is read-only (store trees are 0555)."""
    if not os.path.lexists(p):
        return
    if os.path.islink(p) or not os.path.isdir(p):
        os.unlink(p)
        return
    for dirpath, dirnames, _ in os.walk(p):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    shutil.rmtree(p)

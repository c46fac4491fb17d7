"""Canonical trees: the metadata normalisation applied before a tree enters the store.

After :func:`canonicalise` a tree's metadata carries nothing but what a NAR records: every
mtime is 1, regular files are 0444 (0555 when the owner could execute them), directories
0555, no setuid/setgid/sticky bits, no hard links, owner root when we run as root. Device
nodes, sockets and FIFOs have no NAR form and are refused.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from loft.envstore import EnvstoreError

__all__ = ["UnsupportedFileType", "canonicalise"]


class UnsupportedFileType(EnvstoreError):
    """The tree holds a device node, socket or FIFO, which a store path cannot contain."""


def canonicalise(tree: Path) -> None:
    """Normalise ``tree`` (a directory, file or symlink) in place; see the module docstring."""
    _canon(os.fsencode(tree), os.geteuid() == 0)


def _canon(p: bytes, as_root: bool) -> None:
    st = os.lstat(p)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        if mode & 0o700 != 0o700:
            os.chmod(p, 0o755)  # we need to enter and modify it first
        for name in os.listdir(p):
            _canon(p + b"/" + name, as_root)
        os.chmod(p, 0o555)
    elif stat.S_ISREG(mode):
        if st.st_nlink > 1:
            _break_hard_link(p)
        want = 0o555 if mode & stat.S_IXUSR else 0o444
        if stat.S_IMODE(mode) != want:
            os.chmod(p, want)
    elif not stat.S_ISLNK(mode):
        kind = "socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device"
        raise UnsupportedFileType(
            f"{os.fsdecode(p)!r} is a {kind}; store paths hold only files, symlinks and dirs"
        )
    if as_root and (st.st_uid or st.st_gid):
        os.lchown(p, 0, 0)
    if st.st_mtime != 1 or stat.S_ISDIR(mode):
        os.utime(p, (1, 1), follow_symlinks=False)


def _break_hard_link(p: bytes) -> None:
    """Replace ``p`` by a private copy so no two store files share an inode.

    The copy is made under a fresh name (``O_EXCL``): a tree may hold a symlink under any
    name a fixed temporary name could have, and the copy must not be written through it.
    """
    parent = os.path.dirname(p)
    pst = os.stat(parent)
    if pst.st_mode & 0o200 == 0:
        os.chmod(parent, pst.st_mode | 0o700)
    fd, tmp = tempfile.mkstemp(prefix=b".loft-unlink-", dir=parent)
    try:
        with os.fdopen(fd, "wb") as out, open(p, "rb") as src:  # p: lstat said a file
            shutil.copyfileobj(src, out)
        shutil.copystat(p, tmp, follow_symlinks=False)
        os.replace(tmp, p)
    except BaseException:
        os.unlink(tmp)
        raise

"""The data dir (``$LOFT_DATA_DIR``) is private to the service.

It holds every tenant's volumes (working copies, chunks, the chunk cache), the catalog
with the deployment's chunk-key secret, and the env store: nothing under it is any other
local account's business. So loft creates directories 0700 and files 0600 (explicit
modes where it creates them, and a ``umask`` of 077 for everything else a loft process
creates), and at start it checks the data dir and its top-level entries: a refusal, with
the command that fixes it, when one is open to group or others or owned by someone else.

Two documented exceptions: store paths keep the modes the Nix format gives them
(0444/0555) inside the private store directory, and the directories leading to a
workspace's root filesystem, the data dir itself and :data:`SEARCH_ONLY` entries, may be
0711 (search only: nobody else can list them, and every entry in them is private or, for
a workspace's own directory, its mapped root's alone) so that a container's init, running
as the workspace's unprivileged mapped root, can reach it (:func:`search_only_dir`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from loft.errors import LoftError

__all__ = [
    "PRIVATE_UMASK",
    "SEARCH_ONLY",
    "TOP_LEVEL",
    "DataDirError",
    "check_private",
    "private_data_dir",
    "private_database_file",
    "search_only_dir",
]

#: The umask of every loft process: what it creates is its owner's alone.
PRIVATE_UMASK = 0o077
#: The entries loft creates directly under the data dir, checked at every start.
TOP_LEVEL = ("catalog.db", "chunks", "chunk-cache", "envstore", "run", "runtime", "volumes")
#: Top-level entries that may be search-only (0711), like the data dir itself: the path
#: to workspaces' root filesystems (see :mod:`loft.runtime.layout`).
SEARCH_ONLY = ("runtime",)
_SEARCH_BITS = 0o011


class DataDirError(LoftError):
    """The data dir (or an entry under it) is not private to this service."""


def check_private(path: Path, *, search_only: bool = False) -> None:
    """Refuse ``path`` unless this process's user owns it and nobody else may access it
    (but search it, with ``search_only``: mode 0711 passes too).

    The mode is checked on what the path names (a link to a private directory is fine);
    the owner too, so a directory made by another account cannot be adopted."""
    st = os.stat(path)
    me = os.geteuid()
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if st.st_uid != me:
        raise DataDirError(
            f"data {kind} {path} is owned by uid {st.st_uid}, not by this service (uid {me})",
            hint=f"chown -R {me} {path}, or point LOFT_DATA_DIR elsewhere",
        )
    others = st.st_mode & 0o077
    if others and not (search_only and kind == "directory" and others == _SEARCH_BITS):
        raise DataDirError(
            f"data {kind} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod -R go-rwx {path}",
        )


def private_data_dir(data_dir: Path) -> Path:
    """Create the data dir 0700 when missing, then check it and its top-level entries
    (:data:`TOP_LEVEL`) with :func:`check_private`. Returns ``data_dir``."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(data_dir, search_only=True)
    for name in TOP_LEVEL:
        entry = data_dir / name
        if entry.exists():
            check_private(entry, search_only=name in SEARCH_ONLY)
    return data_dir


def search_only_dir(path: Path) -> Path:
    """Create ``path`` (0700 at first) when missing and make it 0711: searchable by every
    uid, listable and writable only by its owner. For the data dir itself, the
    :data:`SEARCH_ONLY` entries and the directories under them only. Returns ``path``."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o711)
    return path


def private_database_file(path: Path) -> Path:
    """Create an SQLite database file 0600 before SQLite does (it would make it 0644 less
    the umask), so its journal and WAL files, which SQLite gives the database's mode,
    are private too. Returns ``path``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL: never open an existing database here. Closing any descriptor of a file
    # drops every POSIX lock this process holds on it, SQLite's included (and SQLite
    # may already have it open in this process): that corrupts a live database.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return path
    os.close(fd)
    return path

"""The data dir (``$LOFT_DATA_DIR``) is private to the service.

It holds every tenant's volumes (working copies, chunks, the chunk cache), the catalog
with the deployment's chunk-key secret, and the env store: nothing under it is any other
local account's business. So loft creates directories 0700 and files 0600 (explicit
modes where it creates them, and a ``umask`` of 077 for everything else a loft process
creates), and at start it checks the data dir and its top-level entries: a refusal, with
the command that fixes it, when one is open to group or others or owned by someone else.

Two documented exceptions: store paths keep the modes the Nix format gives them
(0444/0555) inside the private store directory, and the directories leading to a
workspace's root filesystem may be 0711 (search only) so that a container's init,
running as the workspace's unprivileged mapped root, can reach it.
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
TOP_LEVEL = (
    "catalog.db",
    "chunks",
    "chunk-cache",
    "control",
    "envstore",
    "run",
    "runtime",
    "templates",
    "volumes",
    "workspaces",
)
#: The one mode other than private that the data dir and ``workspaces`` may have: search
#: only, so a container's init can walk to a workspace's root filesystem by its path
#: without being able to list or read anything on the way.
SEARCH_ONLY = 0o711
#: The top-level entries that may be :data:`SEARCH_ONLY` (the data dir itself may too).
_SEARCH_ONLY_OK = ("workspaces",)


class DataDirError(LoftError):
    """The data dir (or an entry under it) is not private to this service."""


def check_private(path: Path, *, search_only_ok: bool = False) -> None:
    """Refuse ``path`` unless this process's user owns it and nobody else may access it
    (with ``search_only_ok``, a directory may also be exactly :data:`SEARCH_ONLY`).

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
    search_only = search_only_ok and kind == "directory"
    if st.st_mode & 0o077 and not (search_only and stat.S_IMODE(st.st_mode) == SEARCH_ONLY):
        raise DataDirError(
            f"data {kind} {path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o})",
            hint=f"chmod -R go-rwx {path}",
        )


def private_data_dir(data_dir: Path) -> Path:
    """Create the data dir 0700 when missing, then check it and its top-level entries
    (:data:`TOP_LEVEL`) with :func:`check_private`. Returns ``data_dir``."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(data_dir, search_only_ok=True)
    for name in TOP_LEVEL:
        entry = data_dir / name
        if entry.exists():
            check_private(entry, search_only_ok=name in _SEARCH_ONLY_OK)
    return data_dir


def search_only_dir(path: Path) -> Path:
    """Make directory ``path`` exist with mode :data:`SEARCH_ONLY` (one of the documented
    directories leading to a workspace's root filesystem). Returns ``path``."""
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, SEARCH_ONLY)
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

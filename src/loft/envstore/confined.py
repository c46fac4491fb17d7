"""Reading and writing beneath one directory without ever following a symlink.

The builder composes environments out of package trees it does not trust, as root: a
package may ship a symlink (``node_modules -> /``, ``usr/share -> /etc``) exactly where a
later write goes, or where a file the builder reads should be. Every filesystem write of
a composition and every read of a file inside a package goes through :class:`Beneath`:

- the path is a *normal relative* path (:func:`check_relative`): no ``..``, no absolute
  name, no empty or ``.`` component, no NUL, bounded length;
- it is walked one component at a time from an open directory fd, each component opened
  with ``O_DIRECTORY | O_NOFOLLOW``, so a symlink (or a file) on the way is an error and
  is never followed;
- the last component is created with calls that do not follow it either: ``O_CREAT |
  O_EXCL`` files, ``mkdirat``, ``symlinkat``; reads open it with ``O_NOFOLLOW``.

Without ``..`` and without following symlinks there is no way out of the directory, which
is what ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` would guarantee; the walk does
it with plain ``*at`` calls, so it needs no particular kernel or libc.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from loft.envstore import EnvstoreError
from loft.envstore.bounded import read_bounded

__all__ = [
    "MAX_COMPONENT",
    "MAX_PATH",
    "MAX_READ",
    "Beneath",
    "ConfinementError",
    "UnsafePath",
    "check_relative",
]

#: Longest relative path accepted (Linux's PATH_MAX: longer ones cannot be opened anyway).
MAX_PATH = 4096
#: Longest single component (NAME_MAX of every Linux filesystem the store lives on).
MAX_COMPONENT = 255
#: Largest file :meth:`Beneath.read_bytes` reads by default. The builder reads CA
#: certificates, passwd.master and postinst scripts out of packages: Debian's biggest are
#: a few hundred KiB, and a package must not make the builder hold gigabytes.
MAX_READ = 16 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HINT = "a package ships a symlink or file where another path goes; nothing was written there"


class UnsafePath(EnvstoreError):
    """A path from an untrusted source is not a normal relative path."""


class ConfinementError(EnvstoreError):
    """A write or read would have gone through a symlink (or a file) on its way."""


def check_relative(rel: str, what: str = "path") -> list[str]:
    """The components of ``rel`` when it is a normal relative path, else :class:`UnsafePath`.

    ``what`` names the path in the error (``"npm location"``...).
    """
    if not rel:
        raise UnsafePath(f"{what} is empty")
    if "\0" in rel:
        raise UnsafePath(f"{what} {rel[:80]!r} contains a NUL byte")
    if len(rel.encode("utf-8", "surrogateescape")) > MAX_PATH:
        raise UnsafePath(f"{what} {rel[:40]!r}... is longer than {MAX_PATH} bytes")
    if rel.startswith("/"):
        raise UnsafePath(f"{what} {rel[:200]!r} is absolute")
    parts = rel.split("/")
    for p in parts:
        if p in ("", ".", ".."):
            raise UnsafePath(f"{what} {rel[:200]!r} has a {p or 'empty'!r} component")
        if len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT:
            raise UnsafePath(f"{what} {rel[:40]!r}... has a component over {MAX_COMPONENT} bytes")
    return parts


class Beneath:
    """A directory that files, directories and symlinks are created in and read from by
    relative path, never following a symlink (see the module docstring).

    The directory fds of the last path walked stay open, so writing a sorted forest opens
    each directory once. Not thread-safe; close it (or use ``with``) when done.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        try:
            self._fd = os.open(self.root, _DIR_FLAGS)
        except OSError as e:
            raise ConfinementError(f"{self.root} is not a directory: {e.strerror}") from None
        #: (component, fd) of the directories of the last walk, outermost first.
        self._chain: list[tuple[str, int]] = []

    def __enter__(self) -> Beneath:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every fd held."""
        self._truncate(0)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- walking --------------------------------------------------------------------------

    def _truncate(self, n: int) -> None:
        while len(self._chain) > n:
            os.close(self._chain.pop()[1])

    def _dir(self, parts: list[str], rel: str, create: bool) -> int:
        """The fd of the directory ``parts`` (created when ``create``), walked without
        following anything; the fd belongs to the chain."""
        k = 0
        while k < min(len(parts), len(self._chain)) and self._chain[k][0] == parts[k]:
            k += 1
        self._truncate(k)
        fd = self._chain[-1][1] if self._chain else self._fd
        for i in range(k, len(parts)):
            name = parts[i]
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self._refuse(rel, "/".join(parts[: i + 1]), fd, name)
            self._chain.append((name, sub))
            fd = sub
        return fd

    def _refuse(self, rel: str, prefix: str, dir_fd: int, name: str) -> NoReturn:
        try:
            target = f"a symlink to {os.readlink(name, dir_fd=dir_fd)!r}"
        except OSError:
            target = "not a directory"
        raise ConfinementError(
            f"refusing {rel!r} under {self.root}: {prefix!r} is {target}", hint=_HINT
        )

    def _parent(self, rel: str, create: bool) -> tuple[int, str]:
        parts = check_relative(rel)
        return self._dir(parts[:-1], rel, create), parts[-1]

    # -- writing --------------------------------------------------------------------------

    def mkdir(self, rel: str) -> None:
        """Create the directory ``rel`` and any missing parents (0755: trees get their
        final modes when canonicalised); an existing real directory is fine, anything
        else there is :class:`ConfinementError`."""
        self._dir(check_relative(rel), rel, create=True)

    def write_file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Create the new file ``rel`` (and missing parents) holding ``data``."""
        fd, name = self._parent(rel, create=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            out = os.open(name, flags, mode, dir_fd=fd)
        except FileExistsError:
            self._exists(rel, fd, name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
        finally:
            os.close(out)

    def symlink(self, rel: str, target: str) -> None:
        """Create the symlink ``rel -> target`` (and missing parents). ``target`` is only
        link content here: nothing is ever written through it."""
        if not target or "\0" in target or len(target) > MAX_PATH:
            raise UnsafePath(f"symlink target for {rel!r} is empty, too long or has a NUL")
        fd, name = self._parent(rel, create=True)
        try:
            os.symlink(target, name, dir_fd=fd)
        except FileExistsError:
            self._exists(rel, fd, name)

    def _exists(self, rel: str, fd: int, name: str) -> NoReturn:
        kind = _kind(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
        raise ConfinementError(
            f"refusing {rel!r} under {self.root}: a {kind} is already there", hint=_HINT
        )

    # -- reading --------------------------------------------------------------------------

    def read_bytes(self, rel: str, limit: int = MAX_READ) -> bytes:
        """The contents of the regular file ``rel``; a file over ``limit`` bytes is
        :class:`~loft.envstore.bounded.TooLarge`, a missing one FileNotFoundError."""
        fd, name = self._parent(rel, create=False)
        try:
            f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                        dir_fd=fd)  # fmt: skip
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            self._refuse(rel, rel, fd, name)
        with os.fdopen(f, "rb") as fo:
            st = os.fstat(f)
            if not stat.S_ISREG(st.st_mode):
                raise ConfinementError(f"refusing {rel!r} under {self.root}: not a regular file")
            return read_bounded(fo, limit, f"{self.root}/{rel}", st.st_size)

    def is_dir(self, rel: str) -> bool:
        """True when ``rel`` is a real directory reached without following a symlink."""
        try:
            self._dir(check_relative(rel), rel, create=False)
        except (FileNotFoundError, ConfinementError):
            return False
        return True

    def files(self, rel: str) -> Iterator[str]:
        """Paths (relative to ``rel``) of the regular files in the tree ``rel``, in no
        particular order; symlinks are neither followed nor listed. ``rel`` must be a
        real directory (:class:`ConfinementError` otherwise)."""
        top = os.dup(self._dir(check_relative(rel), rel, create=False))
        try:
            for dirpath, _dirs, names, dfd in os.fwalk(".", dir_fd=top):
                for n in names:
                    if stat.S_ISREG(os.stat(n, dir_fd=dfd, follow_symlinks=False).st_mode):
                        yield os.path.normpath(os.path.join(dirpath, n))
        finally:
            os.close(top)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "file"

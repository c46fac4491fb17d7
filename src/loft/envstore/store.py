"""The local store: the physical directory over its SQLite metadata, a thin layer over the
pure formats. The metadata is :mod:`~loft.envstore.store_db`; adding several paths at once,
:mod:`~loft.envstore.batch`.

Layout under ``root`` (like Nix's ``local?root=``)::

    root/nix/store/<hash>-<name>   store contents (logical path /nix/store/<hash>-<name>)
    root/db.sqlite                 validity, NAR hash and size, references, recipe (WAL)
    root/tmp/<pid>-<rand>/          scratch space on the same filesystem, for atomic renames
    root/locks/<hash>.lock          per-path locks, so concurrent adders never collide
    root/gc.lock                    shared by adders, exclusive for the garbage collector

A path is *valid* when it has a row in ``paths``. Adding moves a finished tree into place,
flushes it, and only then registers it in one transaction (references first must be
valid), so a kill -9 at any point leaves either a valid path or an unregistered directory,
which is garbage: the next add of the same path or the next GC removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loft.datadir import private_data_dir
from loft.envstore import EnvstoreError, nar
from loft.envstore.batch import Batch, open_batch
from loft.envstore.canonical import canonicalise
from loft.envstore.fs import force_rmtree, syncfs
from loft.envstore.pathinfo import PathInfo, format_nar_hash
from loft.envstore.store_db import StoreDB
from loft.envstore.store_path import STORE_DIR, basename, hash_part, parse

if TYPE_CHECKING:
    from loft.config import Settings

__all__ = ["Store"]


class Store(StoreDB):
    """A Nix-format store rooted at ``root``; safe to share between threads and processes.

    The metadata queries (:meth:`is_valid`, :meth:`query`, :meth:`closure`, roots...) are
    :class:`~loft.envstore.store_db.StoreDB`'s; this class adds the files.
    """

    def __init__(self, root: Path, store_dir: str = STORE_DIR, *, durable: bool = True) -> None:
        self.root = Path(root)
        #: Flush data to disk before registering (power-loss safety). Tests may turn it off.
        self.durable = durable
        self.real_store_dir = self.root / store_dir.lstrip("/")
        # The store's root is private (its database, locks and scratch space). Inside it,
        # the store directory and its paths keep the modes the Nix format gives them
        # (0755 here, 0555/0444 for paths), whatever loft's umask: a sandbox's
        # unprivileged uid reaches its closure through them (a bind of the store).
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.real_store_dir.mkdir(parents=True, exist_ok=True)
        d = self.real_store_dir
        while d != self.root:
            os.chmod(d, 0o755)
            d = d.parent
        (self.root / "tmp").mkdir(mode=0o700, exist_ok=True)
        (self.root / "locks").mkdir(mode=0o700, exist_ok=True)
        self._temp_lock = threading.Lock()
        self._temp_fds: dict[int, int] = {}
        super().__init__(self.root / "db.sqlite", store_dir)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The node's store, under ``<data dir>/envstore`` (the data dir checked private)."""
        return cls(private_data_dir(Path(settings.data_dir)) / "envstore")

    # -- paths ----------------------------------------------------------------------------

    def physical(self, store_path: str) -> Path:
        """Where ``store_path`` lives on this machine's filesystem."""
        parse(store_path, self.store_dir)
        return self.real_store_dir / basename(store_path)

    # -- scratch space and locks ----------------------------------------------------------

    @contextlib.contextmanager
    def tmpdir(self) -> Iterator[Path]:
        """A fresh scratch directory on the store's filesystem, removed afterwards."""
        d = self.root / "tmp" / f"{os.getpid()}-{secrets.token_hex(6)}"
        d.mkdir()
        try:
            yield d
        finally:
            force_rmtree(d)

    @contextlib.contextmanager
    def _flock(self, path: Path, mode: int) -> Iterator[None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def _path_lock(self, store_path: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(self.root / "locks" / f"{hash_part(store_path)}.lock", fcntl.LOCK_EX)

    def gc_lock(self, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        """Adders hold it shared; the collector holds it exclusively."""
        return self._flock(self.root / "gc.lock", fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    # -- adding ---------------------------------------------------------------------------

    def batch(self) -> contextlib.AbstractContextManager[Batch]:
        """Add several paths together: hashed as they are added, made valid all at once.

        ``with store.batch() as b: b.add_tree(...); b.add_fixed_file(...)`` registers
        everything on leaving the block (one flush and one transaction per
        :data:`COMMIT_CHUNK` paths) and nothing when the block raises. See :class:`Batch`.
        """
        return open_batch(self)

    def add_tree(
        self,
        src: Path,
        name: str,
        *,
        references_from: Iterable[str] = (),
        deriver: str | None = None,
        recipe: dict[str, object] | None = None,
    ) -> PathInfo:
        """Add the tree (or single file) ``src`` as a content-addressed ``source`` path.

        ``src`` is consumed (moved into the store, or removed if the path already exists);
        it should sit in :meth:`tmpdir`. References are the paths among ``references_from``
        whose hash part occurs in the tree's NAR.
        """
        with self.batch() as b:
            info = b.add_tree(
                src, name, references_from=references_from, deriver=deriver, recipe=recipe
            )
        return b.result(info.path)

    def add_fixed_file(
        self, file: Path, name: str, sha256_hex: str, *, recipe: dict[str, object] | None = None
    ) -> PathInfo:
        """Add a flat file whose SHA-256 must be ``sha256_hex`` (a downloaded artefact).

        On a mismatch nothing is added and :class:`HashMismatch` names the file. A file
        inside the store's scratch space (a :meth:`tmpdir`) is moved; any other file is copied.
        """
        with self.batch() as b:
            info = b.add_fixed_file(file, name, sha256_hex, recipe=recipe)
        return b.result(info.path)

    def import_nar(self, chunks: Iterable[bytes], info: PathInfo) -> PathInfo:
        """Restore a NAR for ``info.path`` (e.g. from a binary cache) and register ``info``.

        The stream's SHA-256 and size must equal ``info.nar_hash``/``info.nar_size`` and every
        reference (other than itself) must already be valid; otherwise nothing is added.
        """
        with self.batch() as b:
            b.import_nar(chunks, info)
        return b.result(info.path)

    def _move_into_place(self, src: Path, store_path: str) -> None:
        """Rename a finished, canonical ``src`` to the physical location of ``store_path``.

        The caller holds the path's lock and has checked that it is not valid.
        """
        dest = self.physical(store_path)
        if os.path.lexists(dest):
            force_rmtree(dest)  # an unregistered leftover of an interrupted add
        is_dir = src.is_dir() and not src.is_symlink()
        if is_dir:
            os.chmod(src, 0o755)  # moving a directory across parents needs it writable
        try:
            os.rename(src, dest)
        except OSError as e:
            if e.errno != 18:  # EXDEV: src is on another filesystem
                raise
            shutil.copytree(src, dest, symlinks=True) if is_dir else shutil.copy2(src, dest)
            canonicalise(dest)
            force_rmtree(src)
        if is_dir:
            os.chmod(dest, 0o555)
            os.utime(dest, (1, 1))

    def _existing(self, store_path: str) -> PathInfo | None:
        """The info of an already valid path, temp-rooted for this process."""
        with self.gc_lock(exclusive=False):
            info = self.query(store_path)
            if info is not None:
                self.add_temp_root(store_path)
            return info

    # -- temporary roots ------------------------------------------------------------------

    def add_temp_root(self, store_path: str) -> None:
        """Protect ``store_path`` from GC for as long as this process lives.

        See :meth:`add_temp_roots`.
        """
        self.add_temp_roots([store_path])

    def add_temp_roots(self, store_paths: Iterable[str]) -> None:
        """Protect ``store_paths`` from GC for as long as this process lives.

        Every path a process adds (or finds already present) is temp-rooted, so a build
        that adds packages one by one and the environment last never loses a package to
        a concurrent GC. Each process appends to its own file, which it holds a shared
        lock on; the collector treats files it can lock exclusively as stale.
        """
        pid = os.getpid()
        with self._temp_lock:
            fd = self._temp_fds.get(pid)
            if fd is None:
                d = self.root / "temproots"
                d.mkdir(exist_ok=True)
                fd = os.open(d / str(pid), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC)
                # No truncation: other Store objects of this process share the file, and
                # roots left by a dead process with a recycled pid only protect a bit longer.
                fcntl.flock(fd, fcntl.LOCK_SH)
                self._temp_fds[pid] = fd
            data = b"".join(p.encode() + b"\n" for p in store_paths)
            while data:  # one write in practice (O_APPEND); loop in case it is short
                data = data[os.write(fd, data) :]

    def clear_temp_roots(self) -> None:
        """Forget this process's temp roots (long-running agents, between jobs).

        Shared by every Store object of the process on this root.
        """
        with self._temp_lock:
            fd = self._temp_fds.get(os.getpid())
            if fd is not None:
                os.ftruncate(fd, 0)

    def temp_roots(self) -> set[str]:
        """Temp roots of live processes; stale files of dead ones are removed."""
        d = self.root / "temproots"
        out: set[str] = set()
        if not d.is_dir():
            return out
        for n in os.listdir(d):
            p = d / n
            try:
                fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                # flock is per open file: even our own process's lock (another fd) blocks us.
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # held by a live process
                else:
                    p.unlink(missing_ok=True)  # its owner is gone
                    continue
                data = b""
                while chunk := os.read(fd, 1 << 16):
                    data += chunk
                out.update(line for line in data.decode().splitlines() if line)
            finally:
                os.close(fd)
        return out

    def _flush(self) -> None:
        """Make the store's data durable before it is registered (power loss, not kill -9)."""
        self._syncfs()

    def _writeback(self) -> None:
        """Write back what is staged so far, ahead of the flush that counts (see Batch)."""
        self._syncfs()

    def _syncfs(self) -> None:
        if self.durable:
            syncfs(self.real_store_dir)

    def verify(self, paths: Iterable[str] | None = None) -> dict[str, str]:
        """Re-hash paths (default: all) against their registered NAR hash and size.

        Returns ``{path: problem}`` for every path that is missing on disk, hashes
        differently, or references an invalid path; empty when all is well.
        """
        problems: dict[str, str] = {}
        for p in self.all_paths() if paths is None else list(paths):
            info = self.query(p)
            if info is None:
                problems[p] = "not valid"
                continue
            phys = self.physical(p)
            if not os.path.lexists(phys):
                problems[p] = "registered but missing on disk"
                continue
            try:
                digest, size = nar.hash_path(phys)
            except (OSError, EnvstoreError) as e:
                problems[p] = f"cannot be read: {e}"
                continue
            if (format_nar_hash(digest), size) != (info.nar_hash, info.nar_size):
                problems[p] = (
                    f"contents hash to {format_nar_hash(digest)} ({size} bytes), "
                    f"registered {info.nar_hash} ({info.nar_size} bytes)"
                )
                continue
            bad = [r for r in info.references if not self.is_valid(r)]
            if bad:
                problems[p] = f"references invalid {bad[0]}"
        return problems

    # -- removing -------------------------------------------------------------------------

    def delete(self, store_path: str) -> None:
        """Unregister and remove a path no other valid path references (used by GC)."""
        with self._path_lock(store_path):
            users = self.referrers(store_path)
            if users:
                raise EnvstoreError(
                    f"cannot delete {store_path}: still referenced by {sorted(users)[0]}"
                    + (f" and {len(users) - 1} more" if len(users) > 1 else "")
                )
            # Unregister first: a crash in between leaves an unregistered (garbage) directory,
            # never a registered path with missing contents.
            self._unregister(store_path)
            dest = self.physical(store_path)
            if os.path.lexists(dest):
                force_rmtree(dest)

    def unregistered_entries(self) -> list[Path]:
        """Directory entries in the physical store dir that are not valid paths (garbage)."""
        valid = {basename(p) for p in self.all_paths()}
        return sorted(
            self.real_store_dir / n for n in os.listdir(self.real_store_dir) if n not in valid
        )

    def stale_tmpdirs(self) -> list[Path]:
        """Scratch directories whose owning process is gone."""
        out = []
        for n in os.listdir(self.root / "tmp"):
            pid = n.split("-", 1)[0]
            if not pid.isdigit() or not _pid_alive(int(pid)):
                out.append(self.root / "tmp" / n)
        return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The local store: physical directory + SQLite metadata, a thin layer over the pure formats.

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
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loft.envstore import EnvstoreError, nar, nixbase32
from loft.envstore.canonical import canonicalise
from loft.envstore.refs import RefScanner
from loft.envstore.store_path import (
    STORE_DIR,
    basename,
    fixed_output_path,
    hash_part,
    parse,
    source_path,
    validate_name,
)

if TYPE_CHECKING:
    from loft.config import Settings

__all__ = [
    "COMMIT_CHUNK",
    "STORE_DIR",
    "WRITEBACK_BYTES",
    "Batch",
    "HashMismatch",
    "InvalidPath",
    "PathInfo",
    "Store",
    "canonicalise",
    "disk_usage",
    "force_rmtree",
    "format_nar_hash",
    "parse_nar_hash",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS paths (
    path          TEXT PRIMARY KEY,
    nar_hash      TEXT NOT NULL,
    nar_size      INTEGER NOT NULL,
    deriver       TEXT,
    ca            TEXT,
    recipe        TEXT,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    referrer  TEXT NOT NULL REFERENCES paths(path) ON DELETE CASCADE,
    reference TEXT NOT NULL REFERENCES paths(path),
    PRIMARY KEY (referrer, reference)
);
CREATE INDEX IF NOT EXISTS refs_by_reference ON refs(reference);
CREATE TABLE IF NOT EXISTS roots (
    name       TEXT PRIMARY KEY,
    path       TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class InvalidPath(EnvstoreError):
    """A store path that should be valid is not in the store."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not a valid path in the environment store",
            hint="build or pull it first (loft env build / loft env pull)",
        )
        self.path = path


class HashMismatch(EnvstoreError):
    """Content does not hash to what was expected; nothing was added."""


def format_nar_hash(digest: bytes) -> str:
    """``sha256:<nixbase32>``, the way Nix prints NAR hashes."""
    return "sha256:" + nixbase32.encode(digest)


def parse_nar_hash(s: str) -> bytes:
    """Digest bytes of ``sha256:<nixbase32>`` (or ``sha256:<hex>``)."""
    algo, _, rest = s.partition(":")
    if algo != "sha256":
        raise EnvstoreError(f"unsupported hash {s!r}", hint="only sha256 is supported")
    if len(rest) == 64:
        return bytes.fromhex(rest)
    digest = nixbase32.decode(rest)
    if len(digest) != 32:
        raise EnvstoreError(f"bad sha256 hash {s!r}")
    return digest


@dataclass(frozen=True)
class PathInfo:
    """Everything the store knows about one valid path (Nix's ValidPathInfo)."""

    path: str
    nar_hash: str  # "sha256:<nixbase32>"
    nar_size: int
    references: tuple[str, ...]  # full paths, sorted; includes ``path`` for a self-reference
    deriver: str | None = None
    ca: str | None = None
    recipe: dict[str, object] | None = None


def _libc_syncfs() -> ctypes._FuncPointer | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: ctypes._FuncPointer = libc.syncfs
        return fn
    except (OSError, AttributeError):
        return None


_SYNCFS = _libc_syncfs()


class Store:
    """A Nix-format store rooted at ``root``; safe to share between threads and processes."""

    def __init__(self, root: Path, store_dir: str = STORE_DIR, *, durable: bool = True) -> None:
        self.root = Path(root)
        self.store_dir = store_dir
        #: Flush data to disk before registering (power-loss safety). Tests may turn it off.
        self.durable = durable
        self.real_store_dir = self.root / store_dir.lstrip("/")
        self.real_store_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        (self.root / "locks").mkdir(exist_ok=True)
        self._local = threading.local()
        self._temp_lock = threading.Lock()
        self._temp_fds: dict[int, int] = {}
        # executescript manages its own transaction; CREATE ... IF NOT EXISTS is idempotent.
        self._conn().executescript(_SCHEMA)

    @classmethod
    def open(cls, settings: Settings) -> Store:
        """The node's store, under ``<data dir>/envstore``."""
        return cls(Path(settings.data_dir) / "envstore")

    # -- metadata -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "db.sqlite", timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE), committed on success."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's database connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- queries --------------------------------------------------------------------------

    def physical(self, store_path: str) -> Path:
        """Where ``store_path`` lives on this machine's filesystem."""
        parse(store_path, self.store_dir)
        return self.real_store_dir / basename(store_path)

    def is_valid(self, store_path: str) -> bool:
        """True when the path is registered (its contents and references are complete)."""
        row = self._conn().execute("SELECT 1 FROM paths WHERE path = ?", (store_path,)).fetchone()
        return row is not None

    def query(self, store_path: str) -> PathInfo | None:
        """The path's metadata, or None when it is not valid."""
        conn = self._conn()
        row = conn.execute(
            "SELECT nar_hash, nar_size, deriver, ca, recipe FROM paths WHERE path = ?",
            (store_path,),
        ).fetchone()
        if row is None:
            return None
        refs = [
            r[0]
            for r in conn.execute(
                "SELECT reference FROM refs WHERE referrer = ? ORDER BY reference", (store_path,)
            )
        ]
        return PathInfo(
            path=store_path,
            nar_hash=row[0],
            nar_size=row[1],
            references=tuple(refs),
            deriver=row[2],
            ca=row[3],
            recipe=json.loads(row[4]) if row[4] else None,
        )

    def query_by_hash_part(self, hash32: str) -> str | None:
        """The valid path whose hash part is ``hash32``, if any."""
        row = (
            self._conn()
            .execute(
                "SELECT path FROM paths WHERE path >= ? AND path < ? LIMIT 1",
                (f"{self.store_dir}/{hash32}-", f"{self.store_dir}/{hash32}."),
            )
            .fetchone()
        )
        return str(row[0]) if row else None

    def referrers(self, store_path: str) -> set[str]:
        """Valid paths that reference ``store_path`` (excluding itself)."""
        rows = self._conn().execute(
            "SELECT referrer FROM refs WHERE reference = ? AND referrer != reference",
            (store_path,),
        )
        return {r[0] for r in rows}

    def closure(self, paths: Iterable[str]) -> set[str]:
        """The paths and everything they reference, transitively; raise if one is invalid."""
        conn = self._conn()
        todo = list(dict.fromkeys(paths))
        for p in todo:
            if not self.is_valid(p):
                raise InvalidPath(p)
        seen = set(todo)
        while todo:
            batch, todo = todo[:500], todo[500:]
            marks = ",".join("?" * len(batch))
            for (ref,) in conn.execute(
                f"SELECT DISTINCT reference FROM refs WHERE referrer IN ({marks})", batch
            ):
                if ref not in seen:
                    seen.add(ref)
                    todo.append(ref)
        return seen

    def all_paths(self) -> list[str]:
        """Every valid path, sorted."""
        return [r[0] for r in self._conn().execute("SELECT path FROM paths ORDER BY path")]

    def nar_sizes(self, paths: Iterable[str]) -> int:
        """Sum of the NAR sizes of ``paths``."""
        total = 0
        for p in paths:
            info = self.query(p)
            if info is None:
                raise InvalidPath(p)
            total += info.nar_size
        return total

    # -- in-use roots ---------------------------------------------------------------------

    def add_root(self, name: str, store_path: str) -> None:
        """Mark ``store_path`` (and so its closure) in use under ``name``; GC keeps it."""
        if not self.is_valid(store_path):
            raise InvalidPath(store_path)
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO roots(name, path, created_at) VALUES (?, ?, ?)",
                (name, store_path, time.time()),
            )

    def remove_root(self, name: str) -> bool:
        """Drop the in-use root ``name``; False when there was none."""
        with self._db() as db:
            return db.execute("DELETE FROM roots WHERE name = ?", (name,)).rowcount > 0

    def roots(self) -> dict[str, str]:
        """In-use roots: name -> store path."""
        return {n: p for n, p in self._conn().execute("SELECT name, path FROM roots ORDER BY name")}

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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
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
        return _batch(self)

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
        if not self.durable:
            return
        fd = os.open(self.real_store_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _SYNCFS is not None and _SYNCFS(fd) == 0:
                return
            os.fsync(fd)
        finally:
            os.close(fd)

    def _register(self, infos: Sequence[PathInfo]) -> None:
        """Make ``infos`` valid in one transaction (references before referrers)."""
        with self._db() as db:
            now = time.time()
            for info in infos:
                db.execute(
                    "INSERT INTO paths(path, nar_hash, nar_size, deriver, ca, recipe,"
                    " registered_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        info.path,
                        info.nar_hash,
                        info.nar_size,
                        info.deriver,
                        info.ca,
                        json.dumps(info.recipe, sort_keys=True)
                        if info.recipe is not None
                        else None,
                        now,
                    ),
                )
                db.executemany(
                    "INSERT INTO refs(referrer, reference) VALUES (?, ?)",
                    [(info.path, r) for r in info.references],
                )

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
            with self._db() as db:
                db.execute("DELETE FROM roots WHERE path = ?", (store_path,))
                db.execute("DELETE FROM paths WHERE path = ?", (store_path,))
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


#: Bytes staged in a batch after which its data is written back in the background, so
#: the flush before registering finds little left to write.
WRITEBACK_BYTES = 64 << 20
#: Paths made valid per flush and transaction. A commit holds one lock file open per path
#: of a chunk (concurrent adders of a path serialise on it), so this stays well below the
#: usual limit of 1024 open files.
COMMIT_CHUNK = 500


@dataclass(frozen=True)
class _Staged:
    src: Path  # the finished, canonical contents, still in scratch space
    info: PathInfo


class Batch:
    """Paths added together (from :meth:`Store.batch`).

    ``add_tree``, ``add_fixed_file`` and ``import_nar`` do all the work that depends on
    the contents in the calling thread (canonicalise, hash, scan references, verify) and
    return the path's info; nothing is visible in the store yet. :meth:`commit` then, per
    chunk of :data:`COMMIT_CHUNK` paths: takes the GC lock shared and every path's lock
    (in sorted order, so concurrent batches cannot deadlock), renames the new paths into
    place, flushes the filesystem once, temp-roots them and registers them all in one
    transaction. A kill -9 before that transaction commits leaves only unregistered
    directories (garbage), and power loss after it cannot lose their data. While the
    batch fills, every :data:`WRITEBACK_BYTES` staged start a background syncfs, so the
    data is mostly on disk by the time the flush that guards registration runs. References
    must be valid already or added earlier in the same batch. Safe to fill from several
    threads.
    """

    def __init__(self, store: Store, scratch: Path) -> None:
        self.store = store
        self._scratch = scratch
        self._items: list[_Staged] = []
        self._lock = threading.Lock()
        self._results: dict[str, PathInfo] = {}
        self._unflushed = 0
        self._writer: threading.Thread | None = None

    def add_tree(
        self,
        src: Path,
        name: str,
        *,
        references_from: Iterable[str] = (),
        deriver: str | None = None,
        recipe: dict[str, object] | None = None,
    ) -> PathInfo:
        """Canonicalise and hash ``src`` now, add it as a ``source`` path on commit.

        ``src`` must stay where it is until the commit, which consumes it; it should sit
        in :meth:`Store.tmpdir`. See :meth:`Store.add_tree`.
        """
        validate_name(name)
        canonicalise(src)
        h = hashlib.sha256()
        size = 0
        scanner = RefScanner(references_from)
        for chunk in nar.dump(src):
            h.update(chunk)
            scanner.feed(chunk)
            size += len(chunk)
        digest = h.digest()
        refs = sorted(scanner.found)
        info = PathInfo(
            path=source_path(digest, name, refs, store_dir=self.store.store_dir),
            nar_hash=format_nar_hash(digest),
            nar_size=size,
            references=tuple(refs),
            deriver=deriver,
            ca=f"fixed:r:sha256:{nixbase32.encode(digest)}",
            recipe=recipe,
        )
        return self._stage(src, info)

    def add_fixed_file(
        self, file: Path, name: str, sha256_hex: str, *, recipe: dict[str, object] | None = None
    ) -> PathInfo:
        """Verify ``file`` now, add it as a flat fixed-output path on commit.

        See :meth:`Store.add_fixed_file`; an already valid path is returned as it is.
        """
        store = self.store
        sha256_hex = sha256_hex.lower()
        path = fixed_output_path(sha256_hex, name, store.store_dir)
        existing = store._existing(path)
        if existing is not None:
            with self._lock:
                self._results.setdefault(path, existing)
            return existing
        st = os.stat(file)
        if not stat.S_ISREG(st.st_mode):
            raise EnvstoreError(f"{file} is not a regular file")
        flat = hashlib.sha256()
        narh = hashlib.sha256()
        head = nar.encode_str(nar.MAGIC) + b"".join(
            nar.encode_str(s) for s in (b"(", b"type", b"regular", b"contents")
        )
        narh.update(head + struct.pack("<Q", st.st_size))
        n = 0
        with open(file, "rb") as f:
            while block := f.read(nar.READ_CHUNK):
                flat.update(block)
                narh.update(block)
                n += len(block)
        if flat.hexdigest() != sha256_hex:
            raise HashMismatch(
                f"{file}: sha256 is {flat.hexdigest()}, expected {sha256_hex}",
                hint="the artefact was tampered with or the lock is stale; nothing was added",
            )
        tail = b"\0" * (-n % 8) + nar.encode_str(b")")
        narh.update(tail)
        info = PathInfo(
            path=path,
            nar_hash=format_nar_hash(narh.digest()),
            nar_size=len(head) + 8 + n + len(tail),
            references=(),
            ca=f"fixed:sha256:{nixbase32.encode(bytes.fromhex(sha256_hex))}",
            recipe=recipe,
        )
        src = Path(file)
        if not _inside(src, store.root / "tmp"):
            src = self._scratch / f"file-{secrets.token_hex(8)}"
            shutil.copyfile(file, src)
        os.chmod(src, 0o444)
        os.utime(src, (1, 1))
        return self._stage(src, info)

    def import_nar(self, chunks: Iterable[bytes], info: PathInfo) -> PathInfo:
        """Restore and check a NAR now, register ``info`` on commit.

        See :meth:`Store.import_nar`; an already valid path is returned as it is.
        """
        store = self.store
        parse(info.path, store.store_dir)
        existing = store._existing(info.path)
        if existing is not None:
            with self._lock:
                self._results.setdefault(info.path, existing)
            return existing
        want = parse_nar_hash(info.nar_hash)
        h = hashlib.sha256()
        counted = 0

        def hashed() -> Iterator[bytes]:
            nonlocal counted
            for c in chunks:
                h.update(c)
                counted += len(c)
                if counted > info.nar_size:
                    # Stop a decompression bomb before it fills the disk.
                    raise HashMismatch(
                        f"NAR of {info.path} is longer than its declared {info.nar_size} bytes",
                        hint="the binary cache is corrupt or was tampered with; nothing was added",
                    )
                yield c

        tree = self._scratch / f"nar-{secrets.token_hex(8)}"
        try:
            nar.restore(hashed(), tree)
            if h.digest() != want or counted != info.nar_size:
                raise HashMismatch(
                    f"NAR of {info.path} hashes to {format_nar_hash(h.digest())} "
                    f"({counted} bytes), expected {info.nar_hash} ({info.nar_size} bytes)",
                    hint="the binary cache is corrupt or was tampered with; nothing was added",
                )
        except BaseException:
            force_rmtree(tree)
            raise
        return self._stage(tree, info)

    def _stage(self, src: Path, info: PathInfo) -> PathInfo:
        with self._lock:
            self._items.append(_Staged(src, info))
            self._unflushed += info.nar_size
            if (
                self._unflushed >= WRITEBACK_BYTES
                and self.store.durable
                and (self._writer is None or not self._writer.is_alive())
            ):
                # The staged data lives on the store's filesystem (tmp/), so syncfs now
                # does most of the writing the flush at commit time would otherwise wait
                # for; correctness still rests on that later flush alone.
                self._unflushed = 0
                self._writer = threading.Thread(target=self.store._writeback, daemon=True)
                self._writer.start()
        return info

    def result(self, store_path: str) -> PathInfo:
        """After :meth:`commit`: the path's info as the store holds it (which, for a path
        that was valid already, is the earlier registration)."""
        return self._results[store_path]

    def commit(self) -> None:
        """Make every staged path valid (see the class docstring)."""
        with self._lock:
            items, self._items = self._items, []
            writer = self._writer
        if writer is not None:
            writer.join()
        for i in range(0, len(items), COMMIT_CHUNK):
            self._commit(items[i : i + COMMIT_CHUNK])

    def _commit(self, items: Sequence[_Staged]) -> None:
        store = self.store
        with store.gc_lock(exclusive=False), contextlib.ExitStack() as locks:
            for p in sorted({it.info.path for it in items}):
                locks.enter_context(store._path_lock(p))
            chosen: dict[str, PathInfo] = {}
            new: list[_Staged] = []
            for it in items:
                path = it.info.path
                have = chosen.get(path) or self._results.get(path) or store.query(path)
                if have is not None:  # valid already, or twice in this batch
                    chosen[path] = have
                    force_rmtree(it.src)
                    continue
                for ref in it.info.references:
                    if ref != path and ref not in chosen and not store.is_valid(ref):
                        raise InvalidPath(ref)
                chosen[path] = it.info
                new.append(it)
            for it in new:
                store._move_into_place(it.src, it.info.path)
            if new:
                store._flush()
            # Temp roots first: once registered, a GC after our shared lock is released
            # must already see that this process still needs the paths.
            store.add_temp_roots(chosen)
            if new:
                store._register([it.info for it in new])
        self._results.update(chosen)


@contextlib.contextmanager
def _batch(store: Store) -> Iterator[Batch]:
    with store.tmpdir() as scratch:
        b = Batch(store, scratch)
        yield b
        b.commit()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


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

"""The store's SQLite database: which paths are valid, their references, in-use roots.

One file, ``db.sqlite`` (WAL, ``synchronous=FULL``, foreign keys on), one connection per
thread. A path is valid when it has a row in ``paths``; its references are rows in
``refs`` whose foreign keys make "a valid path's references are valid" hold inside SQLite.
:class:`~loft.envstore.store.Store` builds on this class: the files are its business, the
rows this module's. The database stays per node: which store paths exist on this disk is
node state, not the fleet's, so it is not in the catalog.

The schema is versioned in SQLite's ``PRAGMA user_version``: :data:`MIGRATIONS` holds one
function per version, each run in a ``BEGIN IMMEDIATE`` transaction that also records the
new version, so concurrent openers serialise and a failed step leaves the version before
it. A database newer than this code is refused (an older loft must not write a newer
store); there are no downgrades. Not Alembic, as the catalog has: the store speaks plain
``sqlite3``, and importing SQLAlchemy takes ~150 ms (~225 ms with Alembic), more than a
whole ``loft env`` command (~115 ms), which ``loft env run`` pays on every call; opening a
database at the newest version here costs one pragma read.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from loft.datadir import private_database_file
from loft.envstore import EnvstoreError
from loft.envstore.pathinfo import InvalidPath, PathInfo

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "StoreDB"]


#: Version 1, the schema before it was versioned; ``IF NOT EXISTS`` lets that step adopt
#: such a database (``user_version`` 0, these very tables) without touching its rows.
_V1 = (
    """CREATE TABLE IF NOT EXISTS paths (
        path          TEXT PRIMARY KEY,
        nar_hash      TEXT NOT NULL,
        nar_size      INTEGER NOT NULL,
        deriver       TEXT,
        ca            TEXT,
        recipe        TEXT,
        registered_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS refs (
        referrer  TEXT NOT NULL REFERENCES paths(path) ON DELETE CASCADE,
        reference TEXT NOT NULL REFERENCES paths(path),
        PRIMARY KEY (referrer, reference)
    )""",
    "CREATE INDEX IF NOT EXISTS refs_by_reference ON refs(reference)",
    """CREATE TABLE IF NOT EXISTS roots (
        name       TEXT PRIMARY KEY,
        path       TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
)


def _v1(conn: sqlite3.Connection) -> None:
    for statement in _V1:
        conn.execute(statement)


#: ``MIGRATIONS[n]`` takes the database from version n to n + 1 (0: empty or unversioned).
#: Append only; a step runs inside the transaction that records its version.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_v1,)
#: The version this code reads and writes.
SCHEMA_VERSION = len(MIGRATIONS)


class StoreDB:
    """The metadata of the store whose logical directory is ``store_dir``, in ``db_file``.

    Safe to share between threads (each gets its own connection) and processes (SQLite's
    locking; writers take the lock up front with ``BEGIN IMMEDIATE``).
    """

    def __init__(self, db_file: Path, store_dir: str) -> None:
        self.db_file = private_database_file(db_file)
        self.store_dir = store_dir
        self._local = threading.local()
        self._migrate()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_file, timeout=60, isolation_level=None)
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

    def _migrate(self) -> None:
        """Bring the database to the newest version, one transaction per step; refuse one
        newer than this code. At the newest version already, this reads one pragma."""
        latest = len(MIGRATIONS)
        version = self._version()
        while version != latest:
            if version > latest:
                raise EnvstoreError(
                    f"the environment store database {self.db_file} has schema version "
                    f"{version}; this loft knows versions up to {latest}",
                    hint="upgrade loft on this node: an older loft must not write a newer store",
                )
            with self._db() as conn:
                # Read again under the write lock: another process may have migrated.
                version = self._version()
                if version < latest:
                    MIGRATIONS[version](conn)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")

    def _version(self) -> int:
        row = self._conn().execute("PRAGMA user_version").fetchone()
        return int(row[0])

    # -- queries --------------------------------------------------------------------------

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

    def _unregister(self, store_path: str) -> None:
        """Make ``store_path`` invalid and drop the roots naming it, in one transaction."""
        with self._db() as db:
            db.execute("DELETE FROM roots WHERE path = ?", (store_path,))
            db.execute("DELETE FROM paths WHERE path = ?", (store_path,))

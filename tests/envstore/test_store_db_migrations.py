"""The store database's schema versions: adopting an unversioned database, refusing a newer
one, and a failed step leaving the version before it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from loft.cli.group import main
from loft.envstore import EnvstoreError, store_db
from loft.envstore.store import Store

# The schema as loft created it before the database was versioned, verbatim: such a
# database has user_version 0 and must open as version 1 with every row intact.
UNVERSIONED_SCHEMA = """
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

LIB = "/nix/store/" + "1" * 32 + "-lib"
APP = "/nix/store/" + "2" * 32 + "-app"
HASH = "sha256:" + "0" * 52


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def set_user_version(db: Path, version: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def unversioned_store(root: Path) -> Path:
    """A store database written the way loft wrote it before versions: two paths, one
    referring to the other, and an in-use root."""
    root.mkdir(parents=True)
    db = root / "db.sqlite"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(UNVERSIONED_SCHEMA)
    recipe = json.dumps({"builder": "loft-unpack/1", "from": LIB}, sort_keys=True)
    conn.execute(
        "INSERT INTO paths VALUES (?, ?, ?, NULL, ?, NULL, 1.0)", (LIB, HASH, 120, "fixed:r:x")
    )
    conn.execute("INSERT INTO paths VALUES (?, ?, ?, NULL, NULL, ?, 2.0)", (APP, HASH, 340, recipe))
    conn.execute("INSERT INTO refs VALUES (?, ?)", (APP, LIB))
    conn.execute("INSERT INTO roots VALUES ('ws-1', ?, 3.0)", (APP,))
    conn.close()
    assert user_version(db) == 0
    return db


def test_an_unversioned_database_is_adopted_as_version_1(tmp_path: Path) -> None:
    db = unversioned_store(tmp_path / "s")
    store = Store(tmp_path / "s", durable=False)
    assert user_version(db) == 1 == store_db.SCHEMA_VERSION
    assert store.all_paths() == sorted([LIB, APP])
    app = store.query(APP)
    assert app is not None and app.references == (LIB,) and app.nar_size == 340
    assert app.recipe == {"builder": "loft-unpack/1", "from": LIB}
    lib = store.query(LIB)
    assert lib is not None and lib.ca == "fixed:r:x" and lib.references == ()
    assert store.roots() == {"ws-1": APP}
    assert store.closure([APP]) == {APP, LIB} and store.referrers(LIB) == {APP}
    # Adopted means usable: the next open reads the version only, and adds still work.
    store.close()
    store = Store(tmp_path / "s", durable=False)
    with store.tmpdir() as t:
        (t / "f").write_bytes(b"new")
        new = store.add_tree(t / "f", "new").path
    assert store.all_paths() == sorted([LIB, APP, new]) and user_version(db) == 1


def test_a_new_store_starts_at_the_newest_version(tmp_path: Path) -> None:
    Store(tmp_path / "s", durable=False).close()
    assert user_version(tmp_path / "s" / "db.sqlite") == store_db.SCHEMA_VERSION


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)  # private, as loft makes it (the CLI refuses one that is not)
    Store(data / "envstore", durable=False).close()
    db = data / "envstore" / "db.sqlite"
    newer = store_db.SCHEMA_VERSION + 1
    set_user_version(db, newer)
    with pytest.raises(EnvstoreError) as e:
        Store(data / "envstore", durable=False)
    assert f"schema version {newer}" in e.value.message and "upgrade loft" in (e.value.hint or "")
    assert user_version(db) == newer  # untouched
    env = {"LOFT_DATA_DIR": str(data), "LOFT_CATALOG_URL": "", "LOFT_CHUNKS": ""}
    r = CliRunner().invoke(main, ["env", "root", "list"], env=env)
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        f"loft: error: the environment store database {db} has schema version {newer}; "
        f"this loft knows versions up to {store_db.SCHEMA_VERSION}",
        "loft: hint: upgrade loft on this node: an older loft must not write a newer store",
    ]


def test_each_step_commits_with_its_version_and_a_failed_step_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "s"
    Store(root, durable=False).close()
    db = root / "db.sqlite"

    def add_notes(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE notes (path TEXT PRIMARY KEY REFERENCES paths(path))")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("step 3 failed")

    monkeypatch.setattr(store_db, "MIGRATIONS", (*store_db.MIGRATIONS, add_notes, broken))
    with pytest.raises(sqlite3.OperationalError, match="step 3 failed"):
        Store(root, durable=False)
    assert user_version(db) == 2  # step 2 committed on its own; step 3 rolled back
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "notes" in tables and "half_done" not in tables

    monkeypatch.setattr(store_db, "MIGRATIONS", (*store_db.MIGRATIONS[:2],))
    Store(root, durable=False).close()  # at the newest version: opens as it is
    assert user_version(db) == 2

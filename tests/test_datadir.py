"""The data dir is private: refusals at start when it (or a top-level entry) is open to
others or owned by someone else, with the command that fixes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loft.datadir import DataDirError, check_private, private_data_dir

NOBODY = 65534


def loft(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOFT_DATA_DIR": str(data)}
    env.pop("LOFT_CHUNKS", None)
    env.pop("LOFT_CATALOG_URL", None)
    exe = Path(sys.executable).parent / "loft"
    return subprocess.run(
        [str(exe), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_data_dir_is_created_private(tmp_path: Path) -> None:
    data = private_data_dir(tmp_path / "a" / "data")
    assert data.stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("entry", "mode", "says"),
    [
        ("", 0o755, "chmod -R go-rwx"),
        ("", 0o701, "mode 0701"),
        ("chunks", 0o750, "chmod -R go-rwx"),
        ("volumes", 0o711, "mode 0711"),
        ("catalog.db", 0o644, "mode 0644"),
        ("envstore", 0o705, "open to other users"),
        ("workspaces", 0o755, "mode 0755"),
        ("workspaces", 0o701, "mode 0701"),
    ],
)
def test_data_dir_open_to_others_is_refused_at_start(
    tmp_path: Path, entry: str, mode: int, says: str
) -> None:
    data = tmp_path / "data"
    assert loft(data, "volume", "ls").returncode == 0  # a fresh data dir: fine
    target = data / entry if entry else data
    if not target.exists():
        target.mkdir(mode=0o700)
    os.chmod(target, mode)
    for args in (("volume", "ls"), ("env", "root", "list")):
        proc = loft(data, *args)
        assert proc.returncode == 1, proc.stderr
        assert "is open to other users" in proc.stderr and says in proc.stderr, proc.stderr


def test_data_dir_search_only_on_the_way_to_workspaces(tmp_path: Path) -> None:
    """The documented exception: the data dir and workspaces/ may be 0711 (search only)
    so that a container's init reaches a workspace's root filesystem."""
    data = tmp_path / "data"
    assert loft(data, "volume", "ls").returncode == 0
    (data / "workspaces").mkdir(mode=0o700)
    os.chmod(data / "workspaces", 0o711)
    os.chmod(data, 0o711)
    proc = loft(data, "volume", "ls")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_data_dir_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert loft(data, "volume", "ls").returncode == 0
    (data / "volumes").mkdir(mode=0o700, exist_ok=True)
    os.chown(data / "volumes", NOBODY, NOBODY)
    proc = loft(data, "volume", "ls")
    assert proc.returncode == 1 and f"owned by uid {NOBODY}" in proc.stderr
    os.chown(data / "volumes", 0, 0)
    os.chown(data, NOBODY, NOBODY)
    with pytest.raises(DataDirError, match="owned by uid"):
        check_private(data)


def test_private_database_file_never_opens_a_live_database(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops this process's POSIX locks on it, SQLite's
    included: making sure a database is private must not open an existing one."""
    import sqlite3

    db = tmp_path / "db.sqlite"
    first = sqlite3.connect(db, isolation_level=None)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")  # this process holds the write lock
    from loft.datadir import private_database_file

    private_database_file(db)
    other = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], "
         "timeout=0.2); c.execute('BEGIN IMMEDIATE')", str(db)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert other.returncode != 0 and "locked" in other.stderr  # the lock survived
    first.execute("COMMIT")
    assert (tmp_path / "fresh.db").exists() is False
    assert private_database_file(tmp_path / "fresh.db").stat().st_mode & 0o777 == 0o600

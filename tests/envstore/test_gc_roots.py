"""GC: roots and their closures survive, everything else (and leftovers) goes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loft.envstore.gc import collect
from loft.envstore.pathinfo import PathInfo
from loft.envstore.store import Store


def add(store: Store, content: bytes, name: str, refs: list[str] | None = None) -> PathInfo:
    t = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp")) / "t"
    t.mkdir()
    (t / "f").write_bytes(content + b" " + b" ".join(r.encode() for r in refs or []))
    return store.add_tree(t, name, references_from=refs or [])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "s", durable=False)


def test_gc_keeps_rooted_closures_only(store: Store) -> None:
    lib = add(store, os.urandom(10_000), "lib")
    py = add(store, b"python", "python3", [lib.path])
    env1 = add(store, b"env1", "env", [py.path])
    env2 = add(store, b"env2", "env", [py.path])
    junk_dep = add(store, b"old", "old-lib")
    junk = add(store, b"old env", "old-env", [junk_dep.path])
    store.add_root("workspace-1", env1.path)
    store.clear_temp_roots()  # this process added everything; let GC judge by real roots

    dry = collect(store, extra_roots=[env2.path], dry_run=True)
    assert sorted(dry.deleted) == sorted([junk.path, junk_dep.path])
    assert dry.freed_bytes > 0 and store.is_valid(junk.path)

    r = collect(store, extra_roots=[env2.path])
    assert r.deleted == [junk.path, junk_dep.path]  # referrers first
    assert r.live == 4 and r.freed_bytes == dry.freed_bytes
    assert sorted(store.all_paths()) == sorted([lib.path, py.path, env1.path, env2.path])
    assert not store.physical(junk.path).exists()

    # Dropping the profile root of env2: env1's in-use root still protects python and lib.
    r = collect(store)
    assert r.deleted == [env2.path]
    store.remove_root("workspace-1")
    r = collect(store)
    assert r.deleted == [env1.path, py.path, lib.path]
    assert store.all_paths() == [] and os.listdir(store.real_store_dir) == []


def test_gc_removes_leftovers_but_not_live_tmpdirs(store: Store) -> None:
    keep = add(store, b"keep", "keep")
    store.add_root("r", keep.path)
    leftover = store.real_store_dir / ("a" * 32 + "-interrupted")
    leftover.mkdir()
    (leftover / "f").write_bytes(b"x" * 5000)
    dead_tmp = store.root / "tmp" / "999999999-dead"
    dead_tmp.mkdir()
    with store.tmpdir() as mine:
        r = collect(store)
        assert mine.exists()
    assert sorted(r.garbage) == sorted([str(leftover), str(dead_tmp)])
    assert not leftover.exists() and not dead_tmp.exists()
    assert store.all_paths() == [keep.path]


def test_invalid_roots_protect_nothing_and_do_not_fail(store: Store) -> None:
    p = add(store, b"x", "x")
    store.clear_temp_roots()
    r = collect(store, extra_roots=["/nix/store/" + "b" * 32 + "-gone"])
    assert r.deleted == [p.path] and r.roots == []


CHILD = r"""
import sys
from pathlib import Path
from loft.envstore.store import Store
store = Store(Path(sys.argv[1]), durable=False)
with store.tmpdir() as t:
    (t / "x").mkdir()
    (t / "x" / "f").write_bytes(b"being built")
    print(store.add_tree(t / "x", "half-built-env").path, flush=True)
sys.stdin.read()  # the "build" is still running until the parent closes stdin
"""


@pytest.mark.timeout(60)
def test_paths_added_by_a_live_process_survive_gc(store: Store) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store.root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None and child.stdin is not None
    path = child.stdout.readline().decode().strip()
    r = collect(store)
    assert r.deleted == [] and path in r.roots and store.is_valid(path)
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    r = collect(store)
    assert r.deleted == [path]
    assert os.listdir(store.root / "temproots") == []


def test_gc_keeps_the_artefacts_live_paths_were_made_from(store: Store, tmp_path: Path) -> None:
    import hashlib

    deb = tmp_path / "pkg.deb"
    deb.write_bytes(b"debian archive")
    fixed = store.add_fixed_file(
        deb, "pkg_1.0_amd64.deb", hashlib.sha256(b"debian archive").hexdigest()
    )
    t = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp")) / "t"
    t.mkdir()
    (t / "f").write_bytes(b"unpacked")
    out = store.add_tree(t, "pkg-1.0", recipe={"builder": "unpack", "from": fixed.path})
    env = add(store, b"env", "env", [out.path])
    orphan_deb = tmp_path / "old.deb"
    orphan_deb.write_bytes(b"old")
    orphan = store.add_fixed_file(orphan_deb, "old.deb", hashlib.sha256(b"old").hexdigest())
    store.clear_temp_roots()
    r = collect(store, extra_roots=[env.path], dry_run=True)
    assert r.deleted == [orphan.path]  # the .deb behind a live output is kept
    r = collect(store, extra_roots=[env.path], dry_run=True, keep_sources=False)
    assert sorted(r.deleted) == sorted([orphan.path, fixed.path])
    r = collect(store)
    assert sorted(r.deleted) == sorted([env.path, out.path, fixed.path, orphan.path])

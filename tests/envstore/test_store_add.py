"""The Store: adding trees and fixed files, references, closures, import, delete."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import tempfile
from pathlib import Path

import pytest

from loft.envstore import nar
from loft.envstore.canonical import UnsupportedFileType, canonicalise
from loft.envstore.fs import disk_usage, force_rmtree
from loft.envstore.pathinfo import HashMismatch, InvalidPath, PathInfo
from loft.envstore.store import Store
from loft.envstore.store_path import fixed_output_path, source_path


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", durable=False)


def make_tree(store: Store, files: dict[str, bytes | str]) -> Path:
    """A tree in a fresh scratch dir (left for the store to consume)."""
    root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=store.root / "tmp")) / "t"
    root.mkdir()
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            os.symlink(content, p)
        else:
            p.write_bytes(content)
    return root


def test_add_tree_layout_and_metadata(store: Store) -> None:
    src = make_tree(store, {"bin/tool": b"#!/bin/sh\n", "share/doc": b"doc", "lnk": "bin/tool"})
    (src / "bin/tool").chmod(0o4755)  # setuid must not survive
    info = store.add_tree(src, "tool-1.0", recipe={"kind": "test"})
    assert not src.exists()
    phys = store.physical(info.path)
    assert phys == store.root / "nix/store" / info.path.rsplit("/", 1)[1]
    assert stat.S_IMODE(phys.stat().st_mode) == 0o555
    assert stat.S_IMODE((phys / "bin/tool").stat().st_mode) == 0o555
    assert stat.S_IMODE((phys / "share/doc").stat().st_mode) == 0o444
    assert all(p.lstat().st_mtime == 1 for p in [phys, *phys.rglob("*")])
    digest, size = nar.hash_path(phys)
    assert info.path == source_path(digest, "tool-1.0")
    assert store.query(info.path) == info
    assert info.nar_size == size and info.recipe == {"kind": "test"}
    assert store.is_valid(info.path) and store.all_paths() == [info.path]


def test_add_tree_is_idempotent_and_dedups(store: Store) -> None:
    a = store.add_tree(make_tree(store, {"f": b"same"}), "pkg")
    b = store.add_tree(make_tree(store, {"f": b"same"}), "pkg")
    assert a == b
    assert store.all_paths() == [a.path]


def test_references_found_by_scanning(store: Store) -> None:
    dep = store.add_tree(make_tree(store, {"lib.so": b"\x7fELF..."}), "dep")
    other = store.add_tree(make_tree(store, {"x": b"x"}), "unrelated")
    user = store.add_tree(
        make_tree(store, {"bin/run": f"...{dep.path}/lib.so\0...".encode(), "l": dep.path}),
        "user",
        references_from=[dep.path, other.path],
    )
    assert user.references == (dep.path,)
    assert store.closure([user.path]) == {user.path, dep.path}
    assert store.referrers(dep.path) == {user.path}
    # A reference changes the path even though the NAR hash is the one of the same bytes.
    assert user.path != source_path(bytes.fromhex("00" * 32), "user")


def test_reference_to_invalid_path_is_refused(store: Store) -> None:
    ghost = "/nix/store/" + "a" * 32 + "-ghost"
    with pytest.raises(InvalidPath, match="ghost"):
        store.add_tree(make_tree(store, {"f": ghost.encode()}), "x", references_from=[ghost])
    assert store.all_paths() == []


def test_add_fixed_file(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3000)
    f = tmp_path / "pkg.deb"
    f.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    info = store.add_fixed_file(f, "pkg_1.0_amd64.deb", sha)
    assert info.path == fixed_output_path(sha, "pkg_1.0_amd64.deb")
    assert f.exists(), "a file outside the store is copied, not moved"
    phys = store.physical(info.path)
    assert phys.read_bytes() == data and stat.S_IMODE(phys.stat().st_mode) == 0o444
    digest, size = nar.hash_path(phys)
    assert (info.nar_size, info.nar_hash) == (size, "sha256:" + _b32(digest))
    assert info.ca is not None and info.ca.startswith("fixed:sha256:")


def _b32(d: bytes) -> str:
    from loft.envstore import nixbase32

    return nixbase32.encode(d)


def test_add_fixed_file_mismatch_leaves_store_unchanged(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "evil.whl"
    f.write_bytes(b"tampered")
    with pytest.raises(HashMismatch, match=r"evil\.whl"):
        store.add_fixed_file(f, "good.whl", hashlib.sha256(b"original").hexdigest())
    assert store.all_paths() == []
    assert os.listdir(store.real_store_dir) == []


def test_add_fixed_file_moves_files_from_tmpdir(store: Store) -> None:
    with store.tmpdir() as t:
        f = t / "a.tar.gz"
        f.write_bytes(b"tarball")
        store.add_fixed_file(f, "a.tar.gz", hashlib.sha256(b"tarball").hexdigest())
        assert not f.exists()


def test_import_nar_verifies_hash_and_size(store: Store, tmp_path: Path) -> None:
    other = Store(tmp_path / "other", durable=False)
    src = other.add_tree(make_tree(other, {"a": b"alpha", "d/b": b"beta"}), "pkg")
    data = b"".join(nar.dump(other.physical(src.path)))
    bad = PathInfo(src.path, "sha256:" + "0" * 52, src.nar_size, ())
    with pytest.raises(HashMismatch):
        store.import_nar([data], bad)
    assert store.all_paths() == [] and os.listdir(store.real_store_dir) == []
    got = store.import_nar([data[i : i + 7] for i in range(0, len(data), 7)], src)
    assert got == src and b"".join(nar.dump(store.physical(src.path))) == data


def test_delete_refuses_referenced_paths(store: Store) -> None:
    dep = store.add_tree(make_tree(store, {"f": b"dep"}), "dep")
    user = store.add_tree(
        make_tree(store, {"f": dep.path.encode()}), "u", references_from=[dep.path]
    )
    with pytest.raises(Exception, match="still referenced"):
        store.delete(dep.path)
    store.delete(user.path)
    store.delete(dep.path)
    assert store.all_paths() == [] and os.listdir(store.real_store_dir) == []


def test_unregistered_leftover_is_replaced_on_next_add(store: Store) -> None:
    tree = make_tree(store, {"f": b"content"})
    digest, _ = nar.hash_path(tree)
    path = source_path(digest, "pkg")
    junk = store.physical(path)
    junk.mkdir()
    (junk / "half-written").write_bytes(b"junk")
    assert store.unregistered_entries() == [junk]
    info = store.add_tree(tree, "pkg")
    assert info.path == path and sorted(os.listdir(junk)) == ["f"]
    assert store.unregistered_entries() == []


def test_two_envs_sharing_a_package_store_it_once(store: Store) -> None:
    big = {f"lib/python/m{i}.py": os.urandom(20_000) for i in range(50)}
    shared = store.add_tree(make_tree(store, big), "python3")
    base = disk_usage(store.real_store_dir)
    envs = []
    for extra in ("git", "curl"):
        pkg = store.add_tree(make_tree(store, {f"bin/{extra}": extra.encode()}), extra)
        env = store.add_tree(
            make_tree(
                store,
                {
                    "bin/python3": f"{shared.path}/bin/python3",
                    f"bin/{extra}": f"{pkg.path}/bin/{extra}",
                },
            ),
            "env",
            references_from=[shared.path, pkg.path],
        )
        envs.append(env)
    assert all(shared.path in e.references for e in envs)
    grown = disk_usage(store.real_store_dir) - base
    assert grown < 0.1 * base, f"two envs added {grown} bytes on top of {base}"


def test_canonicalise_rejects_special_files_and_breaks_hard_links(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    (t / "a").write_bytes(b"x")
    os.link(t / "a", t / "b")
    canonicalise(t)
    assert (t / "a").stat().st_nlink == 1 and (t / "b").read_bytes() == b"x"
    # A link where a temporary copy could have gone is never written through.
    (tmp_path / "outside").write_bytes(b"host file")
    (t / "c").write_bytes(b"y")
    os.link(t / "c", t / "d")
    for n in ("c", "d"):
        os.symlink(tmp_path / "outside", t / f"{n}.loft-unlink")
    canonicalise(t)
    assert (tmp_path / "outside").read_bytes() == b"host file"
    assert (t / "d").read_bytes() == b"y" and (t / "c").stat().st_nlink == 1
    u = tmp_path / "u"
    u.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(u / "sock"))
        with pytest.raises(UnsupportedFileType, match="socket"):
            canonicalise(u)


def test_tmpdir_is_removed_even_when_read_only(store: Store) -> None:
    with store.tmpdir() as t:
        (t / "d").mkdir()
        (t / "d" / "f").write_bytes(b"x")
        canonicalise(t / "d")
        kept = t
    assert not kept.exists()


def test_verify_detects_modified_and_missing_paths(store: Store) -> None:
    a = store.add_tree(make_tree(store, {"f": b"a"}), "a")
    b = store.add_tree(make_tree(store, {"f": b"b"}), "b")
    c = store.add_tree(make_tree(store, {"f": b"c", "x": b"y"}), "c")
    assert store.verify() == {}
    victim = store.physical(a.path) / "f"
    victim.chmod(0o644)
    victim.write_bytes(b"A")
    force_rmtree_path = store.physical(b.path)
    os.chmod(force_rmtree_path, 0o755)
    os.chmod(force_rmtree_path / "f", 0o644)
    (force_rmtree_path / "f").unlink()
    os.rmdir(force_rmtree_path)
    (store.physical(c.path) / "x").chmod(0o555)  # the executable bit is part of the NAR
    problems = store.verify()
    assert set(problems) == {a.path, b.path, c.path}
    assert "hash to" in problems[a.path] and "missing" in problems[b.path]
    assert store.verify([c.path]) == {c.path: problems[c.path]}


def test_add_tree_from_another_filesystem(store: Store) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(store.root).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem than the store")
    src = Path(tempfile.mkdtemp(dir=shm)) / "t"
    try:
        (src / "bin").mkdir(parents=True)
        (src / "bin" / "x").write_bytes(b"#!/bin/sh\n")
        (src / "bin" / "x").chmod(0o755)
        os.symlink("bin/x", src / "x")
        digest, _ = nar.hash_path(src)
        info = store.add_tree(src, "cross-fs")
        assert info.path == source_path(digest, "cross-fs")
        assert not src.exists() and store.verify() == {}
        assert stat.S_IMODE(store.physical(info.path).stat().st_mode) == 0o555
    finally:
        force_rmtree(src.parent)

"""Real Nix (nix-bin, offline, a throwaway chroot store) agrees with loft's formats.

Every Nix command runs with ``--store local?root=<tmp>`` and private config/state dirs,
so the host's /nix is never read or written.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from nixtool import Nix

from loft.envstore import nar, nixbase32
from loft.envstore.pathinfo import format_nar_hash
from loft.envstore.store import Store
from loft.envstore.store_path import fixed_output_path, source_path, text_path


@pytest.fixture
def nix(tmp_path: Path) -> Nix:
    return Nix(tmp_path)


def make_tree(root: Path) -> Path:
    """A tree with every NAR feature: exec bits, symlinks, empty file/dir, odd names."""
    t = root / "tree"
    (t / "bin").mkdir(parents=True)
    (t / "bin/run").write_bytes(b"#!/bin/sh\necho hi\n")
    (t / "bin/run").chmod(0o755)
    (t / "empty-dir").mkdir()
    (t / "empty").write_bytes(b"")
    (t / "exactly8").write_bytes(b"12345678")
    (t / "big.bin").write_bytes(os.urandom(2 * nar.READ_CHUNK + 3))
    (t / "caf\u00e9 + name=?").write_text("unicode")
    (t / "B").write_text("upper sorts before lower")
    os.symlink("bin/run", t / "link")
    os.symlink("/absolute/dangling", t / "dangling")
    (t / "deep/a/b/c").mkdir(parents=True)
    (t / "deep/a/b/c/leaf").write_text("leaf")
    return t


def test_nixbase32_matches_nix_hash(nix: Nix) -> None:
    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(8)]
    out = nix.plain("nix-hash", "--type", "sha256", "--to-base32", *digests).split()
    assert out == [nixbase32.encode(bytes.fromhex(d)) for d in digests]
    sha1 = hashlib.sha1(b"x").hexdigest()  # 20 bytes: the size of a store path hash
    assert nix.plain("nix-hash", "--type", "sha1", "--to-base32", sha1) == nixbase32.encode(
        bytes.fromhex(sha1)
    )


@pytest.mark.parametrize("name", ["f.txt", "python3_3.11.2-1+b1_amd64.deb", "x?y=z", "a" * 100])
def test_fixed_output_paths_match_add_fixed(nix: Nix, tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_bytes(os.urandom(1000) + name.encode())
    got = nix.run("nix-store", "--add-fixed", "sha256", str(f)).decode().strip()
    assert got == fixed_output_path(hashlib.sha256(f.read_bytes()).hexdigest(), name)


def test_nar_dump_and_tree_paths_match_nix(nix: Nix, tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    assert b"".join(nar.dump(t)) == nix.run("nix-store", "--dump", str(t))
    digest, size = nar.hash_path(t)
    nix_path = nix.run("nix-store", "--add", str(t)).decode().strip()
    assert nix_path == source_path(digest, "tree")
    assert nix.run("nix-store", "-q", "--hash", nix_path).decode().strip() == format_nar_hash(
        digest
    )
    assert nix.run("nix-store", "-q", "--size", nix_path).decode().strip() == str(size)
    recursive = nix.run("nix-store", "--add-fixed", "--recursive", "sha256", str(t))
    assert recursive.decode().strip() == nix_path


def test_restore_of_nix_dump_round_trips(nix: Nix, tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    data = nix.run("nix-store", "--dump", str(t))
    nar.restore([data[i : i + 4096] for i in range(0, len(data), 4096)], tmp_path / "copy")
    assert b"".join(nar.dump(tmp_path / "copy")) == data
    # And Nix restores what loft dumps to the same tree.
    nix.run("nix-store", "--restore", str(tmp_path / "by-nix"), stdin=b"".join(nar.dump(t)))
    assert nix.run("nix-store", "--dump", str(tmp_path / "by-nix")) == data


def test_store_add_tree_equals_nix_add(nix: Nix, tmp_path: Path) -> None:
    store = Store(tmp_path / "loft", durable=False)
    t = make_tree(tmp_path)
    nix_path = nix.run("nix-store", "--add", str(t)).decode().strip()
    with store.tmpdir() as scratch:
        (scratch / "x").mkdir()
        nix.run("nix-store", "--restore", str(scratch / "x" / "tree"), stdin=b"".join(nar.dump(t)))
        info = store.add_tree(scratch / "x" / "tree", "tree")
    assert info.path == nix_path
    assert info.nar_hash == nix.run("nix-store", "-q", "--hash", nix_path).decode().strip()
    assert nix.run("nix-store", "--dump", str(nix.root) + nix_path) == b"".join(
        nar.dump(store.physical(info.path))
    )


def test_text_path_matches_builtins_to_file(nix: Nix) -> None:
    out = nix.run(
        "nix", "eval", "--raw", "--expr", 'builtins.toFile "greeting.txt" "hello, nix\\n"'
    ).decode()
    assert out == text_path(hashlib.sha256(b"hello, nix\n").digest(), "greeting.txt")

"""Beneath: writes and reads under one directory that never follow a symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loft.envstore.bounded import TooLarge
from loft.envstore.confined import Beneath, ConfinementError, UnsafePath, check_relative


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): root holds links out, to a directory and to a file."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "file").write_text("host file")
    os.symlink(outside, root / "out")
    os.symlink(outside / "file", root / "outfile")
    os.symlink("../outside", root / "rel")  # relative, the same place
    (root / "plain").write_text("x")
    return root, outside


WRITES = [
    ("write_file", "out/new"), ("write_file", "rel/new"), ("write_file", "outfile"),
    ("write_file", "out/deep/new"), ("write_file", "plain/new"), ("mkdir", "out/d"),
    ("mkdir", "out"), ("mkdir", "rel/a/b"), ("symlink", "out/l"), ("symlink", "outfile"),
]  # fmt: skip


@pytest.mark.parametrize(("op", "rel"), WRITES)
def test_beneath_never_writes_through_a_symlink(tree: tuple[Path, Path], op: str, rel: str) -> None:
    root, outside = tree
    with Beneath(root) as b, pytest.raises(ConfinementError, match=f"refusing {rel!r}"):
        if op == "write_file":
            b.write_file(rel, b"data")
        elif op == "mkdir":
            b.mkdir(rel)
        else:
            b.symlink(rel, "/target")
    assert os.listdir(outside) == ["file"] and (outside / "file").read_text() == "host file"


@pytest.mark.parametrize("rel", ["out/file", "outfile", "rel/file"])
def test_beneath_never_reads_through_a_symlink(tree: tuple[Path, Path], rel: str) -> None:
    with Beneath(tree[0]) as b, pytest.raises(ConfinementError, match="symlink"):
        b.read_bytes(rel)


UNSAFE = [
    "", "/etc/passwd", "../x", "a/../../x", "a/..", "./a", "a/./b", "a//b", "a/", "a\0b",
    "x" * 256, "a/" * 2100 + "a",
]  # fmt: skip


@pytest.mark.parametrize("rel", UNSAFE)
def test_beneath_refuses_paths_that_are_not_normal_and_relative(
    tree: tuple[Path, Path], rel: str
) -> None:
    root, _ = tree
    with pytest.raises(UnsafePath):
        check_relative(rel)
    with Beneath(root) as b:
        for op in (b.mkdir, lambda r: b.write_file(r, b""), lambda r: b.symlink(r, "t")):
            with pytest.raises(UnsafePath):
                op(rel)
    assert sorted(os.listdir(root)) == ["out", "outfile", "plain", "rel"]


def test_beneath_creates_and_reads_a_tree(tmp_path: Path) -> None:
    with Beneath(tmp_path) as b:
        b.write_file("a/b/c", b"abc", 0o755)
        b.symlink("a/link", "/anywhere/at/all")  # link content is never followed
        b.mkdir("a/b")  # already a directory: fine
        b.write_file("z/y", b"zy")  # the cached directories of a/b are left behind
        b.write_file("a/b/d", b"abd")  # and walked again
        assert b.read_bytes("a/b/c") == b"abc" and b.read_bytes("z/y") == b"zy"
        assert b.is_dir("a/b") and not b.is_dir("a/link") and not b.is_dir("nope")
        assert sorted(b.files("a")) == ["b/c", "b/d"]  # regular files only
        with pytest.raises(ConfinementError, match="a file is already there"):
            b.write_file("a/b/c", b"again")
        with pytest.raises(TooLarge, match="more than the 2 bytes"):
            b.read_bytes("a/b/c", limit=2)
        with pytest.raises(FileNotFoundError):
            b.read_bytes("a/missing")
    assert os.readlink(tmp_path / "a/link") == "/anywhere/at/all"
    assert (tmp_path / "a/b/c").stat().st_mode & 0o100


def test_beneath_does_not_list_or_enter_linked_dirs(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "d").mkdir()
    os.symlink("../out", root / "d/sub")
    (root / "d/f").write_text("f")
    with Beneath(root) as b:
        assert list(b.files("d")) == ["f"]
        with pytest.raises(ConfinementError):
            list(b.files("out"))


def test_beneath_root_must_be_a_real_directory(tree: tuple[Path, Path]) -> None:
    with pytest.raises(ConfinementError):
        Beneath(tree[0] / "out")

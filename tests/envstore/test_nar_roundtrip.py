"""NAR dump/restore: round trips over generated trees, chunking, and strict rejection."""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loft.envstore import nar
from loft.envstore.nar import NarError, encode_str

names = st.text(alphabet="abcXYZ019._-+ =\u00e9", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
leaf = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=300), st.booleans()),
    st.tuples(st.just("link"), st.text(alphabet="ab/._", min_size=1, max_size=20)),
)
trees = st.recursive(
    leaf, lambda children: st.dictionaries(names, children, max_size=5), max_leaves=20
)


def build(path: Path, node: Any) -> None:
    if isinstance(node, dict):
        path.mkdir()
        for name, child in node.items():
            build(path / name, child)
    elif node[0] == "file":
        path.write_bytes(node[1])
        path.chmod(0o755 if node[2] else 0o644)
    else:
        os.symlink(node[1], path)


def nar_bytes(path: Path) -> bytes:
    return b"".join(nar.dump(path))


def one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def _entries(root: Path) -> list[Path]:
    """``root`` and everything below it, never through a symlink: a tree may hold one
    to ``/`` (``rglob`` followed it, into a live ``/proc``)."""
    found = [root]
    if root.is_symlink():
        return found
    for parent, dirs, files in os.walk(root):
        found += [Path(parent) / n for n in (*dirs, *files)]
    return found


@settings(max_examples=40)
@given(trees)
def test_dump_restore_dump_is_identity(tree: Any) -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "src"
        build(src, tree)
        data = nar_bytes(src)
        digest, size = nar.hash_path(src)
        assert (digest, size) == (hashlib.sha256(data).digest(), len(data))
        dst = Path(d) / "dst"
        nar.restore(one_byte_at_a_time(data) if len(data) < 4000 else [data], dst)
        assert nar_bytes(dst) == data
        for p in _entries(dst):
            st_ = p.lstat()
            if not p.is_symlink():
                assert st_.st_mtime == 1
                assert oct(st_.st_mode & 0o7777) in ("0o444", "0o555")


def test_regular_file_layout() -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "f"
        f.write_bytes(b"hi")
        f.chmod(0o755)
        expected = (
            b"".join(
                encode_str(s)
                for s in [
                    b"nix-archive-1",
                    b"(",
                    b"type",
                    b"regular",
                    b"executable",
                    b"",
                    b"contents",
                ]
            )
            + struct.pack("<Q", 2)
            + b"hi"
            + b"\0" * 6
            + encode_str(b")")
        )
        assert nar_bytes(f) == expected


def test_large_file_streams_in_chunks() -> None:
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "big"
        f.write_bytes(os.urandom(3 * nar.READ_CHUNK + 5))
        chunks = list(nar.dump(f))
        assert max(len(c) for c in chunks) <= nar.READ_CHUNK
        dst = Path(d) / "copy"
        nar.restore(iter(chunks), dst)
        assert dst.read_bytes() == f.read_bytes()


def test_directory_entries_sorted_by_bytes() -> None:
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t"
        src.mkdir()
        for n in ["b", "B", "a", "\u00e9", "_"]:
            (src / n).write_text(n)
        data = nar_bytes(src)
        positions = [data.index(encode_str(n.encode())) for n in sorted(["b", "B", "a", "_"])]
        assert positions == sorted(positions)
        assert data.index(encode_str("\u00e9".encode())) > positions[-1]


def test_dump_refuses_fifo() -> None:
    with tempfile.TemporaryDirectory() as d:
        os.mkfifo(Path(d) / "p")
        with pytest.raises(NarError, match="not a regular file"):
            nar_bytes(Path(d))


# --- hand-made malformed NARs ------------------------------------------------------------


def s(*parts: bytes) -> bytes:
    return b"".join(encode_str(p) for p in parts)


def file_node(contents: bytes = b"x") -> bytes:
    return s(b"(", b"type", b"regular", b"contents") + encode_str(contents) + s(b")")


def dir_nar(*entries: tuple[bytes, bytes]) -> bytes:
    body = b"".join(s(b"entry", b"(", b"name", n, b"node") + node + s(b")") for n, node in entries)
    return s(b"nix-archive-1", b"(", b"type", b"directory") + body + s(b")")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (dir_nar((b"..", file_node())), "forbidden entry name"),
        (dir_nar((b".", file_node())), "forbidden entry name"),
        (dir_nar((b"a/b", file_node())), "forbidden entry name"),
        (dir_nar((b"a\0b", file_node())), "forbidden entry name"),
        (dir_nar((b"", file_node())), "forbidden entry name"),
        (dir_nar((b"b", file_node()), (b"a", file_node())), "not sorted"),
        (dir_nar((b"a", file_node()), (b"a", file_node())), "duplicated"),
        (s(b"nix-archive-2"), "expected 'nix-archive-1'"),
        (s(b"nix-archive-1", b"(", b"type", b"socket"), "unknown node type"),
        (dir_nar((b"a", file_node()))[:-5], "prematurely"),
        (dir_nar((b"a", file_node())) + b"\0" * 8, "trailing data"),
        (s(b"nix-archive-1", b"(", b"type", b"symlink", b"target", b"a\0b", b")"), "NUL"),
        (
            s(b"nix-archive-1", b"(", b"type", b"regular", b"contents")
            + struct.pack("<Q", 1)
            + b"x\1\0\0\0\0\0\0"
            + s(b")"),
            "padding",
        ),
        (
            s(b"nix-archive-1", b"(", b"type", b"directory")
            + s(b"entry", b"(", b"name")
            + struct.pack("<Q", 1 << 40),
            "exceeds the limit",
        ),
    ],
)
def test_restore_rejects_malformed(data: bytes, why: str, tmp_path: Path) -> None:
    with pytest.raises(NarError, match=why):
        nar.restore([data], tmp_path / "out")


def test_restore_refuses_existing_destination(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        nar.restore([dir_nar((b"a", file_node()))], tmp_path / "out")


def test_restore_bounds_nesting_depth(tmp_path: Path) -> None:
    node = file_node()
    for _ in range(nar.MAX_DEPTH + 2):
        node = s(b"(", b"type", b"directory", b"entry", b"(", b"name", b"d", b"node") + node
        node += s(b")", b")")
    with pytest.raises(NarError, match="deeper"):
        nar.restore([s(b"nix-archive-1") + node], tmp_path / "out")

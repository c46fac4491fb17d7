"""Reference scanning: hash parts in contents, targets and names, across chunk splits."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from loft.envstore.nixbase32 import ALPHABET
from loft.envstore.refs import RefScanner, scan_references

H1 = "0123456789abcdfghijklmnpqrsvwxyz"
H2 = "zyxwvsrqpnmlkjihgfdcba9876543210"
P1 = f"/nix/store/{H1}-python3"
P2 = f"/nix/store/{H2}-libc"
P3 = f"/nix/store/{'a' * 32}-absent"


def test_finds_hashes_in_contents_symlinks_and_names(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    (t / "script").write_bytes(b"#!" + P1.encode() + b"/bin/python3\n")
    os.symlink(f"{P2}/lib/libc.so.6", t / "libc")
    (t / "clean").write_bytes(b"nothing here " * 100)
    assert scan_references(t, [P1, P2, P3]) == {P1, P2}
    (t / "script").unlink()
    os.symlink("x", t / f"named-{H1}")
    assert scan_references(t, [P1, P2, P3]) == {P1, P2}


def test_hash_inside_longer_base32_run(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"\x00" + b"abc" * 20 + H1.encode() + b"zzz" * 20 + b"\x00")
    assert scan_references(f, [P1, P2]) == {P1}


def naive(data: bytes, hashes: list[str]) -> set[str]:
    return {h for h in hashes if h.encode() in data}


@given(
    prefix=st.binary(max_size=200),
    middle=st.text(alphabet=ALPHABET + "-/.", max_size=100),
    which=st.sampled_from([H1, H2]),
    suffix=st.binary(max_size=200),
    splits=st.lists(st.integers(0, 600), max_size=6),
)
def test_matches_naive_search_for_any_chunking(
    prefix: bytes, middle: str, which: str, suffix: bytes, splits: list[int]
) -> None:
    data = prefix + middle.encode() + which.encode() + middle.encode() + suffix
    cuts = sorted({min(s, len(data)) for s in splits})
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    s = RefScanner([P1, P2, P3])
    for c in chunks:
        s.feed(c)
    expect = {f"/nix/store/{h}-{n}" for h, n in [(H1, "python3"), (H2, "libc")]}
    assert s.found == {p for p in expect if p.split("/")[3][:32] in naive(data, [H1, H2])}


def test_every_split_offset_of_a_hash(tmp_path: Path) -> None:
    data = b"xx/" + P1.encode() + b"/bin"
    for cut in range(len(data) + 1):
        s = RefScanner([P1])
        s.feed(data[:cut])
        s.feed(data[cut:])
        assert s.found == {P1}, cut


def test_no_candidates_is_free() -> None:
    s = RefScanner([])
    s.feed(H1.encode())
    assert s.found == set()

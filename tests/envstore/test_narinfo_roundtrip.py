"""narinfo: render/parse round trips, Nix's defaults, and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loft.envstore.narinfo import NarInfo, NarInfoError, fingerprint, parse_narinfo, render_narinfo

P = "/nix/store/" + "a" * 32 + "-pkg-1.0"
Q = "/nix/store/" + "b" * 32 + "-dep"
H = "sha256:" + "1" * 52


def test_render_is_nix_layout() -> None:
    ni = NarInfo(
        store_path=P,
        url="nar/xyz.nar.zst",
        compression="zstd",
        file_hash=H,
        file_size=10,
        nar_hash=H,
        nar_size=20,
        references=(Q, P),
        deriver="/nix/store/" + "c" * 32 + "-pkg.drv",
        sigs=("k:AAAA",),
    )
    assert render_narinfo(ni) == (
        f"StorePath: {P}\nURL: nar/xyz.nar.zst\nCompression: zstd\nFileHash: {H}\n"
        f"FileSize: 10\nNarHash: {H}\nNarSize: 20\n"
        f"References: {'a' * 32}-pkg-1.0 {'b' * 32}-dep\nDeriver: {'c' * 32}-pkg.drv\n"
        "Sig: k:AAAA\n"
    )
    assert parse_narinfo(render_narinfo(ni)) == ni


def test_fingerprint_uses_full_sorted_paths() -> None:
    assert fingerprint(P, H, 20, [Q, P]) == f"1;{P};{H};20;{P},{Q}"
    assert fingerprint(P, H, 20, []) == f"1;{P};{H};20;"
    with pytest.raises(NarInfoError):
        fingerprint(P, "sha256:abcd", 1, [])


def test_parse_defaults_and_unknown_fields() -> None:
    text = f"StorePath: {P}\nURL: nar/x.nar\nNarHash: {H}\nNarSize: 5\nFuture: yes\n"
    ni = parse_narinfo(text)
    assert ni.compression == "bzip2"  # Nix's default when absent
    assert ni.references == () and ni.sigs == () and ni.file_size is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"StorePath: {P}\nURL: u\nNarHash: {H}\n", "NarSize"),
        (f"StorePath: {P}\nURL: u\nNarHash: {H}\nNarSize: x\n", "not a number"),
        (f"StorePath: {P}\nURL: u\nNarHash: {H}\nNarSize: -1\n", "negative"),
        ("StorePath /nix/store/x\n", "Key: value"),
        (f"StorePath: /tmp/x\nURL: u\nNarHash: {H}\nNarSize: 1\n", "not in the store"),
        (f"StorePath: {P}\nURL: u\nNarHash: {H}\nNarSize: 1\nReferences: bad\n", "store path"),
    ],
)
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(Exception, match=why):
        parse_narinfo(text)


hashes = st.text(alphabet="0123456789abcdfghijklmnpqrsvwxyz", min_size=32, max_size=32)


@given(
    name=st.from_regex(r"[a-z0-9][a-z0-9+._-]{0,20}", fullmatch=True),
    refs=st.lists(hashes, max_size=4, unique=True),
    size=st.integers(0, 2**40),
    sigs=st.lists(st.from_regex(r"[a-z]{1,5}:[A-Za-z0-9+/]{4}", fullmatch=True), max_size=3),
)
def test_round_trip(name: str, refs: list[str], size: int, sigs: list[str]) -> None:
    ni = NarInfo(
        store_path=f"/nix/store/{'d' * 32}-{name}",
        url="nar/a.nar.zst",
        compression="zstd",
        nar_hash=H,
        nar_size=size,
        references=tuple(sorted(f"/nix/store/{h}-r" for h in refs)),
        sigs=tuple(sigs),
    )
    assert parse_narinfo(render_narinfo(ni)) == ni

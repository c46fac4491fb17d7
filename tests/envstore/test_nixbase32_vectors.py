"""nixbase32: fixed vectors (as printed by Nix), round trips and rejected input."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loft.envstore import EnvstoreError, nixbase32

# Hashes as Nix prints them (nix-hash --to-base32); the interop tests re-derive them with
# the real tool.
VECTORS = [
    (hashlib.sha256(b"").digest(), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
    (b"", ""),
    (b"\x00", "00"),
    (b"\x01", "01"),
    (b"\xff", "7z"),
    (b"\x1f", "0z"),
    (b"\x20", "10"),
]


@pytest.mark.parametrize(("raw", "text"), VECTORS)
def test_vectors(raw: bytes, text: str) -> None:
    assert nixbase32.encode(raw) == text
    assert nixbase32.decode(text) == raw


def test_lengths_match_nix() -> None:
    assert nixbase32.encoded_len(20) == 32
    assert nixbase32.encoded_len(32) == 52
    assert nixbase32.encoded_len(64) == 103


def test_last_character_holds_lowest_bits_of_first_byte() -> None:
    # Nix reads the bytes little-endian: flipping byte 0 changes the *last* character.
    a = nixbase32.encode(bytes(20))
    b = nixbase32.encode(b"\x01" + bytes(19))
    assert a[:-1] == b[:-1] and a[-1] != b[-1]


@given(st.binary(max_size=80))
def test_round_trip(raw: bytes) -> None:
    text = nixbase32.encode(raw)
    assert len(text) == nixbase32.encoded_len(len(raw))
    assert set(text) <= set(nixbase32.ALPHABET)
    assert nixbase32.decode(text) == raw


@pytest.mark.parametrize(
    "bad", ["e" * 32, "0" * 31 + "u", "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7"]
)
def test_rejects_bad_characters_and_lengths(bad: str) -> None:
    with pytest.raises(EnvstoreError):
        nixbase32.decode(bad)


def test_rejects_nonzero_padding_bits() -> None:
    # 2 chars = 10 bits for 1 byte: the top 2 bits must be zero ("7z" is the largest).
    with pytest.raises(EnvstoreError, match="padding"):
        nixbase32.decode("8z")

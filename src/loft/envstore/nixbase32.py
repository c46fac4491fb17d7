"""Nix's base-32 encoding of hashes (not RFC 4648).

The alphabet omits ``e``, ``o``, ``u`` and ``t`` so encoded hashes never spell words. The
input is read as one little-endian integer and 5-bit groups are emitted from the most
significant end first, so the *last* character carries the lowest bits of byte 0.
"""

from __future__ import annotations

from loft.envstore import EnvstoreError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}

__all__ = ["ALPHABET", "decode", "decoded_len", "encode", "encoded_len"]


def encoded_len(nbytes: int) -> int:
    """Length of the encoding of ``nbytes`` bytes (20 -> 32, 32 -> 52)."""
    return (nbytes * 8 - 1) // 5 + 1 if nbytes else 0


def decoded_len(nchars: int) -> int:
    """Number of bytes an encoding of ``nchars`` characters stands for."""
    return nchars * 5 // 8


def encode(b: bytes) -> str:
    """Encode bytes the way Nix prints hashes (``nix hash to-base32``)."""
    n = int.from_bytes(b, "little")
    out = []
    for k in range(encoded_len(len(b)) - 1, -1, -1):
        out.append(ALPHABET[(n >> (k * 5)) & 0x1F])
    return "".join(out)


def decode(s: str) -> bytes:
    """Decode a Nix base-32 string; raise :class:`EnvstoreError` on a bad character or length."""
    size = decoded_len(len(s))
    if encoded_len(size) != len(s):
        raise EnvstoreError(f"invalid nix base32 length {len(s)} for {s!r}")
    n = 0
    for c in s:
        d = _INDEX.get(c)
        if d is None:
            raise EnvstoreError(f"invalid character {c!r} in nix base32 string {s!r}")
        n = (n << 5) | d
    if n >> (size * 8):
        # Bits above the byte length must be zero, or two strings would decode alike.
        raise EnvstoreError(f"nix base32 string {s!r} has non-zero padding bits")
    return n.to_bytes(size, "little")

"""Chunk values and keys: round trips, corruption detection, keyed hashing."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loft.blockstore.chunks import (
    CODEC_RAW,
    CODEC_ZSTD,
    FORMAT_VERSION,
    ChunkCodec,
    chunk_key,
    digest_of_key,
)
from loft.blockstore.errors import VolumeIOError

SECRET = bytes(range(32))


@pytest.fixture
def codec() -> ChunkCodec:
    return ChunkCodec(SECRET)


@settings(max_examples=60)
@given(data=st.binary(max_size=5000), repeat=st.integers(1, 40))
def test_round_trip(data: bytes, repeat: int) -> None:
    codec = ChunkCodec(SECRET)
    raw = data * repeat
    value = codec.encode(raw)
    assert codec.decode(value) == raw
    assert codec.decode(value, expect=codec.hash(raw)) == raw


def test_header_names_format_and_codec(codec: ChunkCodec) -> None:
    compressible = b"a" * 65536
    value = codec.encode(compressible)
    magic, version, kind, _, length = struct.unpack_from(">4sBBHI", value)
    assert (magic, version, kind, length) == (b"LFTC", FORMAT_VERSION, CODEC_ZSTD, 65536)
    assert len(value) < 1000
    noise = random.Random(1).randbytes(65536)
    value = codec.encode(noise)
    assert value[5] == CODEC_RAW  # compression did not pay
    assert codec.decode(value) == noise


def test_corrupt_chunks_are_detected(codec: ChunkCodec) -> None:
    data = random.Random(2).randbytes(4096) * 8
    digest = codec.hash(data)
    value = bytearray(codec.encode(data))
    for pos in (20, len(value) // 2, len(value) - 1):
        bad = bytearray(value)
        bad[pos] ^= 0x01
        with pytest.raises(VolumeIOError):
            codec.decode(bytes(bad), expect=digest)
    with pytest.raises(VolumeIOError):
        codec.decode(bytes(value[:10]))  # shorter than the header
    with pytest.raises(VolumeIOError):
        codec.decode(b"NOPE" + bytes(value[4:]))
    bad = bytearray(value)
    bad[5] = 9  # unknown codec
    with pytest.raises(VolumeIOError, match="codec"):
        codec.decode(bytes(bad))
    # A valid chunk under the wrong key (swapped objects in the bucket).
    other = codec.encode(b"other" * 100)
    with pytest.raises(VolumeIOError, match="does not match"):
        codec.decode(other, expect=digest)
    # A raw chunk with a flipped payload byte decodes, but not under its key.
    noise = random.Random(3).randbytes(4096)
    raw = bytearray(codec.encode(noise))
    raw[-1] ^= 0xFF
    with pytest.raises(VolumeIOError, match="does not match"):
        codec.decode(bytes(raw), expect=codec.hash(noise))


def test_keyed_hash_depends_on_the_secret(codec: ChunkCodec) -> None:
    data = b"known content" * 1000
    other = ChunkCodec(bytes(32))
    assert codec.hash(data) != other.hash(data)
    assert codec.hash(data) == ChunkCodec(SECRET).hash(data)
    import blake3

    assert codec.hash(data) != blake3.blake3(data).digest()  # unkeyed: confirmable
    with pytest.raises(ValueError):
        ChunkCodec(b"short")


def test_chunk_keys(codec: ChunkCodec) -> None:
    digest = codec.hash(b"x")
    key = chunk_key(digest)
    assert key == f"chunks/{digest.hex()[:2]}/{digest.hex()}"
    assert digest_of_key(key) == digest
    for bad in ("heads/abc", "chunks/ab/zz", "chunks/ab/abcd"):
        with pytest.raises(ValueError):
            digest_of_key(bad)


def _noise_with_zeros(fraction: float, n: int) -> bytes:
    """Random bytes with the first ``fraction`` of every 4 KiB zeroed: zstd saves about
    that fraction of them."""
    data = bytearray(random.Random(4).randbytes(n))
    run = int(4096 * fraction)
    for pos in range(0, n, 4096):
        data[pos : pos + run] = bytes(run)
    return bytes(data)


@pytest.mark.parametrize("n", [65536, 1 << 20])  # whole, and past the sampling threshold
def test_compression_kept_only_when_it_saves_an_eighth(codec: ChunkCodec, n: int) -> None:
    barely = _noise_with_zeros(0.05, n)
    value = codec.encode(barely)
    assert value[5] == CODEC_RAW  # 5% saved is not worth zstd's CPU, nor decompressing
    assert codec.decode(value) == barely
    worth = _noise_with_zeros(0.3, n)
    value = codec.encode(worth)
    assert value[5] == CODEC_ZSTD
    assert len(value) <= 0.875 * n
    assert codec.decode(value) == worth

"""Content addressing: chunk keys (keyed BLAKE3) and chunk values (header + zstd).

A chunk value is ``LFTC | format | codec | reserved | raw length`` followed by the payload,
so stores written today stay readable when codecs (or, later, ciphers) are added. Keys are
BLAKE3 keyed with a per-deployment secret kept in the catalog: a reader of the bucket
cannot confirm that it holds some known content by hashing it.
"""

from __future__ import annotations

import secrets
import struct
import threading

import blake3
import zstandard
from sqlalchemy import Connection, select

from loft.blockstore.errors import VolumeIOError
from loft.catalog import schema

HASH_SIZE = 32
#: The hash that stands for an all-zero extent (never stored).
ZERO_HASH = bytes(HASH_SIZE)
CHUNK_PREFIX = "chunks/"
FORMAT_VERSION = 1
CODEC_RAW = 0
CODEC_ZSTD = 1
_HEADER = struct.Struct(">4sBBHI")
_MAGIC = b"LFTC"
_SECRET_SETTING = "chunk_key_secret"


def chunk_key(digest: bytes) -> str:
    """The object key of a chunk: ``chunks/ab/ab12...`` (fans out file-store directories)."""
    h = digest.hex()
    return f"{CHUNK_PREFIX}{h[:2]}/{h}"


def digest_of_key(key: str) -> bytes:
    """Inverse of :func:`chunk_key`; ValueError if ``key`` is not a chunk key."""
    if not key.startswith(CHUNK_PREFIX):
        raise ValueError(key)
    digest = bytes.fromhex(key.rsplit("/", 1)[-1])
    if len(digest) != HASH_SIZE:
        raise ValueError(key)
    return digest


def deployment_secret(conn: Connection) -> bytes:
    """The per-deployment hashing key, created on first use (call in a write transaction)."""
    row = conn.execute(
        select(schema.settings.c.value).where(schema.settings.c.key == _SECRET_SETTING)
    ).first()
    if row is not None:
        return bytes.fromhex(row[0])
    secret = secrets.token_bytes(32)
    conn.execute(schema.settings.insert().values(key=_SECRET_SETTING, value=secret.hex()))
    return secret


class ChunkCodec:
    """Hashes, compresses and verifies chunk values. Thread-safe."""

    def __init__(self, secret: bytes, *, level: int = 1) -> None:
        if len(secret) != 32:
            raise ValueError("the chunk secret must be 32 bytes")
        self._secret = secret
        self._level = level
        self._local = threading.local()

    def hash(self, data: bytes | memoryview) -> bytes:
        """The keyed BLAKE3 digest of ``data``."""
        return blake3.blake3(data, key=self._secret, max_threads=blake3.blake3.AUTO).digest()

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.zstd = pair
        return pair

    def encode(self, data: bytes | memoryview) -> bytes:
        """A chunk value for ``data`` (zstd unless compression does not pay)."""
        payload = self._zstd()[0].compress(data)
        codec = CODEC_ZSTD
        if len(payload) >= len(data):
            payload, codec = bytes(data), CODEC_RAW
        return _HEADER.pack(_MAGIC, FORMAT_VERSION, codec, 0, len(data)) + payload

    def decode(self, value: bytes, expect: bytes | None = None) -> bytes:
        """The raw bytes of a chunk value; verifies the digest when ``expect`` is given."""
        if len(value) < _HEADER.size:
            raise VolumeIOError("corrupt chunk: shorter than its header")
        magic, version, codec, _, raw_len = _HEADER.unpack_from(value)
        if magic != _MAGIC or version != FORMAT_VERSION:
            raise VolumeIOError(f"corrupt chunk: bad magic or format {version}")
        body = memoryview(value)[_HEADER.size :]
        if codec == CODEC_ZSTD:
            try:
                data = self._zstd()[1].decompress(body, max_output_size=raw_len)
            except zstandard.ZstdError as e:
                raise VolumeIOError(f"corrupt chunk: {e}") from e
        elif codec == CODEC_RAW:
            data = bytes(body)
        else:
            raise VolumeIOError(f"chunk uses unknown codec {codec}")
        if len(data) != raw_len:
            raise VolumeIOError("corrupt chunk: length mismatch")
        if expect is not None and self.hash(data) != expect:
            raise VolumeIOError(f"corrupt chunk {expect.hex()}: content does not match its key")
        return data

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
#: Bytes of a chunk value's header: a framed buffer (:func:`framed`) keeps this much room
#: in front of the data, so a value stored raw is that buffer, never a copy of it.
HEADER_SIZE = _HEADER.size
_MAGIC = b"LFTC"
#: Extents larger than this are compressed only when a sample of them compresses: zstd
#: level 1 spends ~2.5 ms per 4 MiB of incompressible data (1.6 GB/s on the 2-vCPU test
#: machine) only to store it raw, while compressing the sample, 8 pieces of 8 KiB spread
#: over the extent, costs ~50 µs.
_SAMPLE_ABOVE = 256 << 10
_SAMPLE_PIECES = 8
_SAMPLE_PIECE = 8 << 10
#: A chunk is stored compressed only when zstd shrinks it (or, for a large extent, its
#: sample) to at most this fraction. Barely compressible data is the costly kind: fio's
#: write buffers compress to 0.95 and zstd level 1 spends 6.4 ms per 4 MiB on them
#: (~1,600 us of CPU per MiB, eight times keyed BLAKE3's 0.7 ms) to save 5%; in sustained
#: 1 MiB writes with commits running that was 30% of the disk service's CPU (perf
#: record, bench/nbd_vs_nbdkit.py --sustained). Text (0.33) and binaries (0.55) stay
#: compressed, and a raw chunk is read back as a view, with no decompression.
_COMPRESSED_AT_MOST = 0.875
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


def framed(data: bytes | bytearray | memoryview) -> bytearray:
    """``data`` copied into a new framed buffer: :data:`HEADER_SIZE` bytes of room, then
    the data (what :meth:`ChunkCodec.frame` takes)."""
    buf = bytearray(HEADER_SIZE + len(data))
    buf[HEADER_SIZE:] = data
    return buf


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
        self._zero_digests: dict[int, bytes] = {}

    def hash(self, data: bytes | bytearray | memoryview) -> bytes:
        """The keyed BLAKE3 digest of ``data``, on the calling thread. BLAKE3's own
        thread pool is not used: its threads keep the priority of the thread that first
        needed them, and when that was a commit's (niceness 19) every client's fetch was
        verified at that priority. The callers that hash a lot run in parallel already
        (a commit's pool, fetches ahead). One thread hashes 4 MiB in ~1.1 ms here."""
        return blake3.blake3(data, key=self._secret).digest()

    def zero_digest(self, n: int) -> bytes:
        """The digest of ``n`` zero bytes (computed once per length)."""
        digest = self._zero_digests.get(n)
        if digest is None:
            digest = self._zero_digests[n] = self.hash(bytes(n))
        return digest

    def _zstd(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair = getattr(self._local, "zstd", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self._level), zstandard.ZstdDecompressor())
            self._local.zstd = pair
        return pair

    def encode(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        """A chunk value for ``data`` (zstd unless compression does not pay)."""
        return self.frame(framed(data))

    def frame(self, buf: bytearray) -> bytes | bytearray:
        """The chunk value of the data in a framed buffer (``buf[HEADER_SIZE:]``): zstd
        unless compression does not pay, else ``buf`` itself with the header written into
        its room (no copy of the data)."""
        data = memoryview(buf)[HEADER_SIZE:]
        n = len(data)
        if self._worth_compressing(data):
            payload = self._zstd()[0].compress(data)
            if len(payload) <= _COMPRESSED_AT_MOST * n:
                return _HEADER.pack(_MAGIC, FORMAT_VERSION, CODEC_ZSTD, 0, n) + payload
        _HEADER.pack_into(buf, 0, _MAGIC, FORMAT_VERSION, CODEC_RAW, 0, n)
        return buf

    def _worth_compressing(self, data: memoryview) -> bool:
        n = len(data)
        if n <= _SAMPLE_ABOVE:
            return True
        step = (n - _SAMPLE_PIECE) // (_SAMPLE_PIECES - 1)
        sample = b"".join(data[i * step : i * step + _SAMPLE_PIECE] for i in range(_SAMPLE_PIECES))
        return len(self._zstd()[0].compress(sample)) <= _COMPRESSED_AT_MOST * len(sample)

    def decode(self, value: bytes, expect: bytes | None = None) -> bytes:
        """The raw bytes of a chunk value; verifies the digest when ``expect`` is given."""
        data = self.decode_view(value, expect)
        return data if isinstance(data, bytes) else bytes(data)

    def decode_view(self, value: bytes, expect: bytes | None = None) -> bytes | memoryview:
        """:meth:`decode` without copying a raw payload: a view into ``value``."""
        if len(value) < _HEADER.size:
            raise VolumeIOError("corrupt chunk: shorter than its header")
        magic, version, codec, _, raw_len = _HEADER.unpack_from(value)
        if magic != _MAGIC or version != FORMAT_VERSION:
            raise VolumeIOError(f"corrupt chunk: bad magic or format {version}")
        body = memoryview(value)[_HEADER.size :]
        data: bytes | memoryview
        if codec == CODEC_ZSTD:
            try:
                data = self._zstd()[1].decompress(body, max_output_size=raw_len)
            except zstandard.ZstdError as e:
                raise VolumeIOError(f"corrupt chunk: {e}") from e
        elif codec == CODEC_RAW:
            data = body
        else:
            raise VolumeIOError(f"chunk uses unknown codec {codec}")
        if len(data) != raw_len:
            raise VolumeIOError("corrupt chunk: length mismatch")
        if expect is not None and self.hash(data) != expect:
            raise VolumeIOError(f"corrupt chunk {expect.hex()}: content does not match its key")
        return data

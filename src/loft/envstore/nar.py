"""NAR, the Nix ARchive: a canonical serialisation of a file, symlink or directory tree.

Every string is a little-endian u64 length, the bytes, and zero padding to 8 bytes::

    "nix-archive-1" node
    node := "(" "type" ( "regular" ["executable" ""] "contents" <bytes>
                       | "symlink" "target" <string>
                       | "directory" { "entry" "(" "name" <n> "node" node ")" }* ) ")"

Only file contents, the owner-executable bit and symlink targets are recorded, so the
NAR hash of a tree does not depend on who made it or when. :func:`dump` streams without
holding a whole file in memory; :func:`restore` is a strict parser that refuses anything
real Nix would not write (unsorted or duplicate names, ``..``, slashes, NULs, bad padding).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from loft.envstore import EnvstoreError

MAGIC = b"nix-archive-1"
#: Bytes read from a regular file per chunk while dumping.
READ_CHUNK = 1 << 20
#: Small NAR pieces are coalesced until this many bytes before being yielded.
FLUSH_AT = 64 << 10
#: Longest file name accepted in a NAR (Linux's NAME_MAX).
MAX_NAME = 255
#: Longest symlink target accepted (Linux's PATH_MAX).
MAX_TARGET = 4096
#: Deepest directory nesting accepted when restoring (keeps the recursion bounded).
MAX_DEPTH = 256

__all__ = ["MAGIC", "NarError", "dump", "encode_str", "hash_path", "restore"]


class NarError(EnvstoreError):
    """A NAR stream is malformed, or a tree cannot be archived."""


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 8)


def encode_str(b: bytes) -> bytes:
    """One NAR string: u64 LE length, bytes, zero padding."""
    return struct.pack("<Q", len(b)) + b + _pad(len(b))


_OPEN = encode_str(b"(")
_CLOSE = encode_str(b")")
_TYPE = encode_str(b"type")
_REGULAR = encode_str(b"regular")
_EXECUTABLE = encode_str(b"executable") + encode_str(b"")
_CONTENTS = encode_str(b"contents")
_SYMLINK = encode_str(b"symlink")
_TARGET = encode_str(b"target")
_DIRECTORY = encode_str(b"directory")
_ENTRY = encode_str(b"entry")
_NAME = encode_str(b"name")
_NODE = encode_str(b"node")


def dump(path: Path) -> Iterator[bytes]:
    """Stream the NAR serialisation of ``path`` (file, symlink or directory) in chunks."""
    buf = bytearray(encode_str(MAGIC))
    yield from _dump_node(os.fsencode(path), buf)
    if buf:
        yield bytes(buf)


def _dump_node(p: bytes, buf: bytearray) -> Iterator[bytes]:
    st = os.lstat(p)
    if stat.S_ISREG(st.st_mode):
        buf += _OPEN + _TYPE + _REGULAR
        if st.st_mode & stat.S_IXUSR:
            buf += _EXECUTABLE
        buf += _CONTENTS + struct.pack("<Q", st.st_size)
        yield from _dump_contents(p, st.st_size, buf)
        buf += _pad(st.st_size) + _CLOSE
    elif stat.S_ISLNK(st.st_mode):
        buf += _OPEN + _TYPE + _SYMLINK + _TARGET + encode_str(os.readlink(p)) + _CLOSE
    elif stat.S_ISDIR(st.st_mode):
        buf += _OPEN + _TYPE + _DIRECTORY
        # Nix sorts entries by their bytes; os.listdir(bytes) gives raw names.
        for name in sorted(os.listdir(p)):
            buf += _ENTRY + _OPEN + _NAME + encode_str(name) + _NODE
            yield from _dump_node(p + b"/" + name, buf)
            buf += _CLOSE
        buf += _CLOSE
    else:
        raise NarError(
            f"cannot archive {os.fsdecode(p)!r}: not a regular file, symlink or directory"
        )
    if len(buf) >= FLUSH_AT:
        yield bytes(buf)
        buf.clear()


def _dump_contents(p: bytes, size: int, buf: bytearray) -> Iterator[bytes]:
    left = size
    with open(p, "rb", buffering=0) as f:
        if size < FLUSH_AT:
            data = f.read(size + 1)
            if len(data) != size:
                raise NarError(f"{os.fsdecode(p)!r} changed size while being archived")
            buf += data
            return
        if buf:
            yield bytes(buf)
            buf.clear()
        while left:
            data = f.read(min(READ_CHUNK, left))
            if not data:
                break
            left -= len(data)
            yield data
        if left or f.read(1):
            raise NarError(f"{os.fsdecode(p)!r} changed size while being archived")


def hash_path(path: Path) -> tuple[bytes, int]:
    """(SHA-256 digest of the NAR of ``path``, NAR size in bytes)."""
    h = hashlib.sha256()
    size = 0
    for chunk in dump(path):
        h.update(chunk)
        size += len(chunk)
    return h.digest(), size


class _Reader:
    """Pulls exact byte counts out of an iterable of chunks of any size."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        for chunk in self._it:
            if chunk:
                self._buf = self._buf[self._pos :] + bytes(chunk)
                self._pos = 0
                return True
        return False

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            if not self._fill():
                raise NarError("NAR stream ends prematurely")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def stream(self, n: int) -> Iterator[bytes]:
        """Yield exactly ``n`` bytes in pieces, without buffering them all."""
        while n:
            if self._pos >= len(self._buf) and not self._fill():
                raise NarError("NAR stream ends prematurely")
            piece = self._buf[self._pos : self._pos + n]
            self._pos += len(piece)
            n -= len(piece)
            yield piece

    def at_eof(self) -> bool:
        return self._pos >= len(self._buf) and not self._fill()

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.read(8))[0])

    def padding(self, n: int) -> None:
        if self.read(-n % 8).strip(b"\0"):
            raise NarError("non-zero padding in NAR")

    def string(self, limit: int) -> bytes:
        n = self.u64()
        if n > limit:
            raise NarError(f"NAR string of {n} bytes exceeds the limit of {limit}")
        s = self.read(n)
        self.padding(n)
        return s

    def expect(self, tag: bytes) -> None:
        got = self.string(max(len(tag), 16))
        if got != tag:
            raise NarError(f"bad NAR: expected {tag.decode()!r}, got {got[:16]!r}")


def restore(chunks: Iterable[bytes], dest: Path) -> None:
    """Unpack a NAR stream at ``dest`` (which must not exist) as a canonical tree.

    Files get mode 0444 (0555 if executable), directories 0555, everything mtime 1. Raises
    :class:`NarError` on any malformation; the partial tree is left for the caller (which
    restores into a scratch directory) to remove.
    """
    r = _Reader(chunks)
    r.expect(MAGIC)
    _restore_node(r, os.fsencode(dest), 0)
    if not r.at_eof():
        raise NarError("trailing data after the end of the NAR")


def _restore_node(r: _Reader, dest: bytes, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise NarError(f"NAR nests directories deeper than {MAX_DEPTH}")
    r.expect(b"(")
    r.expect(b"type")
    kind = r.string(16)
    if kind == b"regular":
        tag = r.string(16)
        executable = tag == b"executable"
        if executable:
            if r.string(0) != b"":
                raise NarError("bad NAR: executable marker is not empty")
            tag = r.string(16)
        if tag != b"contents":
            raise NarError(f"bad NAR: expected 'contents', got {tag!r}")
        size = r.u64()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            for piece in r.stream(size):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o555 if executable else 0o444)
            os.utime(fd, (1, 1))
        finally:
            os.close(fd)
        r.padding(size)
    elif kind == b"symlink":
        r.expect(b"target")
        target = r.string(MAX_TARGET)
        if not target or b"\0" in target:
            raise NarError("bad NAR: empty symlink target or one containing NUL")
        os.symlink(target, dest)
        os.utime(dest, (1, 1), follow_symlinks=False)
    elif kind == b"directory":
        os.mkdir(dest, 0o755)
        prev: bytes | None = None
        while True:
            tag = r.string(16)
            if tag == b")":
                break
            if tag != b"entry":
                raise NarError(f"bad NAR: expected 'entry', got {tag!r}")
            r.expect(b"(")
            r.expect(b"name")
            name = r.string(MAX_NAME)
            if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
                raise NarError(f"bad NAR: forbidden entry name {name!r}")
            if prev is not None and name <= prev:
                raise NarError(f"bad NAR: entry {name!r} is duplicated or not sorted")
            prev = name
            r.expect(b"node")
            _restore_node(r, dest + b"/" + name, depth + 1)
            r.expect(b")")
        os.chmod(dest, 0o555)
        os.utime(dest, (1, 1))
        return  # the directory's ")" was consumed by the loop
    else:
        raise NarError(f"bad NAR: unknown node type {kind!r}")
    r.expect(b")")

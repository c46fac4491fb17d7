"""A volume's working copy on the node: a sparse data file plus per-extent state.

``data`` has the volume's size; an extent that is not present locally is a hole there.
``state`` is a versioned header followed by one byte per extent (ABSENT, CLEAN, DIRTY).
A DIRTY byte is written before the data it covers, so after a crash every extent holding
writes is marked dirty; CLEAN bytes are trusted only after a clean shutdown (a clean extent
may hold writes that were never flushed, so after a crash it is discarded and re-fetched).

Even then a clean extent's bytes are not trusted as they are: the disk may have rotted or
been changed while nobody served the volume. :meth:`WorkingCopy.hold_unverified` sets such
extents aside as *unverified* -- ABSENT in ``states``, so nothing serves or builds on their
bytes, yet CLEAN in the state file -- until the volume checks them against their chunk.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from loft import libc

ABSENT = 0
CLEAN = 1
DIRTY = 2

FORMAT_VERSION = 1
HEADER_SIZE = 4096
_MAGIC = b"LFTW"
_HEADER = struct.Struct(">4sHH32sQQ32sQI")
_CRC = struct.Struct(">I")
FLAG_CLEAN_SHUTDOWN = 1
#: ``bytes.translate`` tables: a byte that is no state made ABSENT; CLEAN kept and the
#: rest made 0; CLEAN made ABSENT.
_KNOWN_ONLY = bytes(b if b in (ABSENT, CLEAN, DIRTY) else ABSENT for b in range(256))
_ONLY_CLEAN = bytes(CLEAN if b == CLEAN else 0 for b in range(256))
_CLEAN_TO_ABSENT = bytes(ABSENT if b == CLEAN else b for b in range(256))


def pread_full(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` from ``fd`` at ``offset`` (no copy through a temporary); what lies
    past the end of the file reads as zeros."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            view[done:] = bytes(len(view) - done)
            return
        done += n


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range of a file so it reads as zeros (and costs no disk)."""
    if length <= 0:
        return
    libc.fallocate(fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset, length)


@dataclass(frozen=True, slots=True)
class Header:
    """What the working copy is a copy of."""

    uid: str
    epoch: int
    base_version: int
    base_root: bytes
    size: int
    extent_size: int
    clean_shutdown: bool

    def pack(self) -> bytes:
        flags = FLAG_CLEAN_SHUTDOWN if self.clean_shutdown else 0
        body = _HEADER.pack(
            _MAGIC,
            FORMAT_VERSION,
            flags,
            self.uid.encode().ljust(32, b"\0"),
            self.epoch,
            self.base_version,
            self.base_root,
            self.size,
            self.extent_size,
        )
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def unpack(cls, raw: bytes) -> Header | None:
        """The header, or None when it is missing, from another format or corrupt."""
        size = _HEADER.size
        if len(raw) < size + _CRC.size:
            return None
        body = raw[:size]
        if _CRC.unpack_from(raw, size)[0] != zlib.crc32(body):
            return None
        magic, version, flags, uid, epoch, bver, broot, vsize, esize = _HEADER.unpack(body)
        if magic != _MAGIC or version != FORMAT_VERSION:
            return None
        return cls(
            uid.rstrip(b"\0").decode(),
            epoch,
            bver,
            broot,
            vsize,
            esize,
            bool(flags & FLAG_CLEAN_SHUTDOWN),
        )


class WorkingCopy:
    """The files of one working copy. Not thread-safe: the Volume serialises access."""

    def __init__(self, directory: Path, header: Header, states: bytearray) -> None:
        self.directory = directory
        self.header = header
        self.states = states
        #: CLEAN where the state file says CLEAN but the bytes are not checked yet (their
        #: ``states`` byte is ABSENT meanwhile), 0 elsewhere; see hold_unverified()
        self.unverified = bytearray(len(states))
        self.n_extents = len(states)
        self.data_fd = os.open(directory / "data", os.O_RDWR)
        self.state_fd = os.open(directory / "state", os.O_RDWR)

    @classmethod
    def create(cls, directory: Path, header: Header) -> WorkingCopy:
        """A fresh working copy with every extent absent."""
        if directory.exists():
            shutil.rmtree(directory)
        # Not mkdir(parents=True) alone: it makes missing parents with the default mode.
        directory.parent.mkdir(mode=0o700, exist_ok=True)
        directory.mkdir(mode=0o700)
        n = -(-header.size // header.extent_size)
        with _private_file(directory / "data") as f:
            f.truncate(header.size)
        with _private_file(directory / "state") as f:
            f.write(header.pack().ljust(HEADER_SIZE, b"\0"))
            f.truncate(HEADER_SIZE + n)
            os.fsync(f.fileno())
        _fsync_dir(directory)
        _fsync_dir(directory.parent)
        return cls(directory, header, bytearray(n))

    @classmethod
    def load(cls, directory: Path) -> WorkingCopy | None:
        """The working copy in ``directory``; None if there is none (or it is unreadable)."""
        try:
            raw = (directory / "state").read_bytes()
        except FileNotFoundError:
            return None
        header = Header.unpack(raw[:HEADER_SIZE])
        if header is None or not (directory / "data").exists():
            return None
        n = -(-header.size // header.extent_size)
        # A state byte that is no state (the file rotted) is read as ABSENT: the volume
        # then fetches the extent rather than trust or commit bytes nobody vouches for.
        states = bytearray(raw[HEADER_SIZE : HEADER_SIZE + n].ljust(n, b"\0"))
        return cls(directory, header, states.translate(_KNOWN_ONLY))

    def hold_unverified(self) -> None:
        """Set every CLEAN extent aside as unverified: ABSENT in ``states`` (in place),
        CLEAN in ``unverified`` and, until it is settled, in the state file."""
        self.unverified[:] = self.states.translate(_ONLY_CLEAN)
        self.states[:] = self.states.translate(_CLEAN_TO_ABSENT)

    def set_state(self, extent: int, state: int) -> None:
        """Change one extent's state in memory and in the state file (not synced)."""
        self.states[extent] = state
        self.unverified[extent] = 0
        os.pwrite(self.state_fd, bytes((state,)), HEADER_SIZE + extent)

    def write_all(self, header: Header) -> None:
        """Rewrite the header and every state byte (after a commit, at shutdown); an
        unverified extent stays CLEAN in the file, to be checked again on the next start."""
        self.header = header
        states: bytes | bytearray = self.states
        if CLEAN in self.unverified:
            # An unverified extent's ``states`` byte is ABSENT (0), so OR-ing in its CLEAN
            # flag is the byte the file keeps; as big integers it is one C loop, not n.
            n = self.n_extents
            merged = int.from_bytes(states, "big") | int.from_bytes(self.unverified, "big")
            states = merged.to_bytes(n, "big")
        os.pwrite(self.state_fd, header.pack(), 0)
        os.pwrite(self.state_fd, states, HEADER_SIZE)

    def set_header(self, **changes: object) -> None:
        self.write_all(replace(self.header, **changes))  # type: ignore[arg-type]

    def sync(self) -> None:
        """Make data and state durable (the heart of FLUSH)."""
        os.fdatasync(self.data_fd)
        os.fdatasync(self.state_fd)

    def dirty_extents(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s == DIRTY]

    def close(self) -> None:
        for fd in (self.data_fd, self.state_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.data_fd = self.state_fd = -1

    def destroy(self) -> None:
        """Close and delete the working copy."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _private_file(path: Path) -> BinaryIO:
    """A new file only its owner may read: a tenant's disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

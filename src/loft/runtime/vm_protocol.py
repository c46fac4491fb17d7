"""The guest agent's wire protocol, pure: frames to bytes and bytes to frames, no I/O.

The agent (``guest/agent.c``, PID 1 of a loft VM) and the host speak it over one
virtio-serial port. Every message is a frame::

    magic u16 = 0x4c46 ("LF") | type u8 | flags u8 (0) | channel u32 | length u32 | payload

big-endian. A channel is one conversation (a command, a file, a freeze) so many run at
once over the one port; the host picks the numbers.

- host → guest: ``PING``, ``EXEC``, ``EXEC_TTY`` (a window size, then an ``EXEC``
  payload), ``STDIN`` (empty: end of input), ``SIGNAL``, ``RESIZE``, ``READ_FILE``,
  ``WRITE_FILE``, ``FSFREEZE``, ``FSTHAW``, ``SET_CLOCK``, ``RESEED``, ``CONNECT`` (a
  u16 port: a connection to the guest's ``127.0.0.1:PORT``, its bytes as
  ``STDIN``/``STDOUT``), ``SET_MAC`` (6 bytes: a live fork's new MAC on ``eth0``),
  ``EXEC_KEPT`` (an ``EXEC`` whose output the agent keeps, its newest :data:`CREDIT`
  bytes, while no host reads it: the workspace's ``[run] command`` across a suspend),
  ``ATTACH`` (this channel takes over the kept command: what it kept, then its output
  and ``EXIT``);
- guest → host: ``PONG``, ``STARTED`` (the command's pid), ``STDOUT``/``STDERR`` data,
  and to end every channel one ``EXIT`` (the exit code, or 128 + N when killed by
  signal N) or one ``ERROR`` (an errno and a message);
- a ``PING`` starts a host connection: every channel open before goes stale, matched
  by number never again (the new connection numbers its own from 1) and silent (its
  output dropped, or kept for the kept command);
- both ways: ``WINDOW`` (u32), credit per channel and direction. A channel's output
  starts with :data:`CREDIT` bytes and the host grants more as it delivers them
  (:data:`UNLIMITED` for a channel nobody reads: its output is dropped); the host
  sends at most :data:`CREDIT` input bytes ahead and the agent grants more as its
  command takes them.

Why C in the guest: the agent starts with the kernel's first process, before anything is
mounted; a static binary needs no interpreter and no environment closure, so it is ready
milliseconds after the kernel (docs/vm.md has the numbers).

The guest is untrusted: :class:`Decoder` refuses a frame longer than
:data:`MAX_REPLY` before buffering it, and a bad magic, so a tenant's kernel cannot make
the host buffer without bound. After a restore the host cannot know where in a frame
the stream stands, so :meth:`Decoder.resync` skips everything up to the exact bytes of
the ``PONG`` it waits for.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "CREDIT",
    "HEADER",
    "MAGIC",
    "MAX_REPLY",
    "MAX_REQUEST",
    "UNLIMITED",
    "Decoder",
    "Frame",
    "ProtocolError",
    "Type",
    "encode",
    "exec_payload",
    "parse_error",
    "parse_u32",
    "window_payload",
    "write_file_payload",
]

MAGIC = 0x4C46
_HEADER = struct.Struct(">HBBII")
HEADER = _HEADER.size
#: The agent's own buffer for one host frame (guest/agent.c ``MAX_REQUEST``): a file is
#: written in one frame, so this also bounds a file written (:func:`write_file_payload`).
MAX_REQUEST = 1 << 20
#: The largest frame the host accepts from the guest: the agent sends data in 32 KiB
#: pieces and its errors in under 256 bytes; twice that leaves room, no more.
MAX_REPLY = 64 << 10
#: Output bytes a channel may send before the host grants more (guest/agent.c
#: ``CREDIT``): a reader that falls behind stalls its own command only, and the host
#: buffers at most this much per channel.
CREDIT = 256 << 10
#: A ``WINDOW`` grant that lifts the limit, for a channel whose reader is gone.
UNLIMITED = 0xFFFFFFFF
#: Argument and environment counts travel as u16.
_MAX_STRINGS = 0xFFFF


class Type(enum.IntEnum):
    """Frame types (guest/agent.c has the same table)."""

    PING = 1
    PONG = 2
    EXEC = 3
    STDIN = 4
    SIGNAL = 5
    READ_FILE = 6
    WRITE_FILE = 7
    FSFREEZE = 8
    FSTHAW = 9
    SET_CLOCK = 10
    RESEED = 11
    EXEC_TTY = 12
    RESIZE = 13
    CONNECT = 14
    WINDOW = 15
    SET_MAC = 16
    EXEC_KEPT = 17
    ATTACH = 18
    STARTED = 20
    STDOUT = 21
    STDERR = 22
    EXIT = 23
    ERROR = 24


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame (the guest's fault)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One message on ``channel``."""

    type: Type
    channel: int
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.channel < 2**32:
            raise ValueError(f"bad channel {self.channel}")


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame`` (ValueError when its payload exceeds :data:`MAX_REQUEST`)."""
    if len(frame.payload) > MAX_REQUEST:
        raise ValueError(f"frame of {len(frame.payload)} bytes exceeds {MAX_REQUEST}")
    return _HEADER.pack(MAGIC, frame.type, 0, frame.channel, len(frame.payload)) + frame.payload


def _strings(values: Sequence[str]) -> bytes:
    out = []
    for v in values:
        b = v.encode()
        if b"\0" in b:
            raise ValueError(f"NUL in {v!r}")
        out.append(b + b"\0")
    return b"".join(out)


def exec_payload(argv: Sequence[str], env: Mapping[str, str] | Sequence[str], cwd: str,
                 uid: int, gid: int) -> bytes:  # fmt: skip
    """An ``EXEC`` frame's payload: run ``argv`` as ``uid``/``gid`` in ``cwd`` with exactly ``env``
    (a mapping, or ``KEY=VALUE`` strings)."""
    pairs = [f"{k}={v}" for k, v in env.items()] if isinstance(env, Mapping) else list(env)
    if not argv or len(argv) > _MAX_STRINGS or len(pairs) > _MAX_STRINGS:
        raise ValueError("argv must hold 1 to 65535 strings, env at most 65535")
    head = struct.pack(">IIHH", uid, gid, len(argv), len(pairs))
    return head + _strings([cwd, *argv, *pairs])


def window_payload(rows: int, cols: int) -> bytes:
    """A window size, as ``RESIZE`` carries it and ``EXEC_TTY`` starts with it."""
    return struct.pack(">HH", rows, cols)


def write_file_payload(path: str, data: bytes, mode: int = 0o644) -> bytes:
    """A ``WRITE_FILE`` frame's payload: replace ``path`` (in the workspace) with ``data``."""
    return struct.pack(">I", mode) + _strings([path]) + data


def parse_u32(frame: Frame) -> int:
    """The number a ``STARTED`` or ``EXIT`` frame carries."""
    if len(frame.payload) != 4:
        raise ProtocolError(f"{frame.type.name} frame of {len(frame.payload)} bytes, not 4")
    return int.from_bytes(frame.payload, "big")


def parse_error(frame: Frame) -> tuple[int, str]:
    """The errno and message of an ``ERROR`` frame."""
    if len(frame.payload) < 4:
        raise ProtocolError("ERROR frame without an errno")
    return int.from_bytes(frame.payload[:4], "big"), frame.payload[4:].decode(errors="replace")


class Decoder:
    """Frames out of a byte stream from the guest: :meth:`feed` bytes, then take
    :meth:`frames`; ProtocolError on a bad magic, an unknown type or a frame longer than
    ``limit``, before its payload is buffered."""

    def __init__(self, limit: int = MAX_REPLY) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._sync: bytes | None = None

    def resync(self, marker: bytes) -> None:
        """Drop everything received up to and including ``marker`` (the encoded frame the
        host waits for), however much comes before it."""
        self._sync = marker
        self._buf.clear()

    @property
    def synced(self) -> bool:
        """Whether the marker of :meth:`resync` was seen (or none is awaited)."""
        return self._sync is None

    def feed(self, data: bytes) -> None:
        """Add bytes received from the guest."""
        self._buf += data
        if self._sync is not None:
            at = self._buf.find(self._sync)
            if at < 0:  # keep only what could be the marker's beginning
                del self._buf[: max(0, len(self._buf) - len(self._sync) + 1)]
                return
            del self._buf[: at + len(self._sync)]
            self._sync = None

    def frames(self) -> list[Frame]:
        """Every whole frame received so far, in order."""
        out = []
        while self._sync is None and len(self._buf) >= HEADER:
            magic, kind, _flags, channel, length = _HEADER.unpack_from(self._buf)
            if magic != MAGIC:
                raise ProtocolError(f"bad frame magic {magic:#06x}")
            if length > self.limit:
                raise ProtocolError(f"frame of {length} bytes exceeds {self.limit}")
            try:
                ftype = Type(kind)
            except ValueError:
                raise ProtocolError(f"unknown frame type {kind}") from None
            if len(self._buf) < HEADER + length:
                break
            out.append(Frame(ftype, channel, bytes(self._buf[HEADER : HEADER + length])))
            del self._buf[: HEADER + length]
        return out

"""The frames of an exec, shell or forward session: a small protocol, sans I/O.

After the node API answers ``101 Switching Protocols`` (an HTTP/1.1 ``Upgrade:
loft-stream/1``), both sides speak frames on the same connection. A frame is a channel
and a payload::

    +---------+------------------+-------------------+
    | channel | length (4 bytes, | payload           |
    | (1 byte)| big-endian)      | (length bytes)    |
    +---------+------------------+-------------------+

The channel byte plus the payload is also exactly one WebSocket binary message
(:func:`encode_message`, :func:`decode_message`; the message is the length), which is
how the control plane's browser terminal will carry the same frames, as Kubernetes'
``channel.k8s.io`` does.

============  ====  ===================  ===============================================
channel       byte  sent by              payload
============  ====  ===================  ===============================================
``STDIN``     0     client               bytes for the process's standard input
``STDOUT``    1     server               bytes it wrote (the terminal, for a shell)
``STDERR``    2     server               bytes it wrote to standard error
``RESIZE``    3     client               JSON ``{"rows": R, "cols": C}``
``EOF``       4     client               one byte: the channel that ended (``STDIN``)
``EXIT``      5     server               JSON ``{"status": N}``; the last frame
``ERROR``     6     server               JSON ``{"error": "...", "hint": "..."}``; last
``READY``     7     server               JSON: what the session set up (a forward's
                                         listening address)
============  ====  ===================  ===============================================

Nothing here reads or writes a socket (h11's rule): bytes go in through
:meth:`Decoder.receive_data`, :meth:`Decoder.next_frame` hands frames back or
:data:`NEED_DATA`, and :func:`encode` returns bytes. Only the standard library, so the
CLI stays quick to start. Errors say whose fault they are: :class:`RemoteProtocolError`
(the peer sent something malformed), :class:`LocalProtocolError` (this side misused the
API).
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "HEADER",
    "MAX_PAYLOAD",
    "NEED_DATA",
    "UPGRADE",
    "Channel",
    "Decoder",
    "Frame",
    "LocalProtocolError",
    "RemoteProtocolError",
    "decode_message",
    "encode",
    "encode_message",
    "eof",
    "error",
    "exit_status",
    "json_of",
    "ready",
    "resize",
]

#: The ``Upgrade`` token of the node API's stream operations.
UPGRADE: Final = "loft-stream/1"
#: A frame's header: channel and payload length.
HEADER: Final = struct.Struct(">BI")
#: The largest payload: senders cut data into pieces this size; a peer announcing more is
#: refused before anything is buffered (a shell's output comes in pipe-sized pieces).
MAX_PAYLOAD: Final = 1 << 20


class Channel(enum.IntEnum):
    """What a frame carries (see the module docstring's table)."""

    STDIN = 0
    STDOUT = 1
    STDERR = 2
    RESIZE = 3
    EOF = 4
    EXIT = 5
    ERROR = 6
    READY = 7


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: What :meth:`Decoder.next_frame` returns until a whole frame has arrived.
NEED_DATA: Final = _NeedData()


class RemoteProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


class LocalProtocolError(Exception):
    """This side asked for a frame that cannot be sent."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its channel and payload."""

    channel: Channel
    payload: bytes = b""

    def __post_init__(self) -> None:
        if len(self.payload) > MAX_PAYLOAD:
            raise LocalProtocolError(f"payload of {len(self.payload)} bytes over {MAX_PAYLOAD}")


def encode(frame: Frame) -> bytes:
    """The bytes of ``frame`` on a stream."""
    return HEADER.pack(frame.channel, len(frame.payload)) + frame.payload


def encode_message(frame: Frame) -> bytes:
    """``frame`` as one message of a message-framed transport (a WebSocket)."""
    return bytes([frame.channel]) + frame.payload


def decode_message(message: bytes) -> Frame:
    """The frame one message carries."""
    if not message:
        raise RemoteProtocolError("empty message")
    return Frame(_channel(message[0]), bytes(message[1:]))


def _channel(value: int) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        raise RemoteProtocolError(f"unknown channel {value}") from None


def _json_frame(channel: Channel, obj: dict[str, Any]) -> Frame:
    return Frame(channel, json.dumps(obj, separators=(",", ":")).encode())


def resize(rows: int, cols: int) -> Frame:
    """A RESIZE frame."""
    return _json_frame(Channel.RESIZE, {"rows": rows, "cols": cols})


def exit_status(status: int) -> Frame:
    """An EXIT frame."""
    return _json_frame(Channel.EXIT, {"status": status})


def error(message: str, hint: str | None = None) -> Frame:
    """An ERROR frame."""
    return _json_frame(Channel.ERROR, {"error": message, "hint": hint})


def ready(**info: Any) -> Frame:
    """A READY frame."""
    return _json_frame(Channel.READY, info)


def eof(channel: Channel = Channel.STDIN) -> Frame:
    """An EOF frame: ``channel`` has ended."""
    return Frame(Channel.EOF, bytes([channel]))


def json_of(frame: Frame) -> dict[str, Any]:
    """The JSON object a RESIZE, EXIT, ERROR or READY frame carries."""
    try:
        obj = json.loads(frame.payload)
    except ValueError as e:
        raise RemoteProtocolError(f"{frame.channel.name} frame: bad JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(f"{frame.channel.name} frame: not a JSON object")
    return obj


class Decoder:
    """Frames from a byte stream, fed as it arrives."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._closed = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer; ``b""`` means it closed the stream."""
        if self._closed and data:
            raise LocalProtocolError("data after the end of the stream")
        if not data:
            self._closed = True
        self._buffer += data

    def next_frame(self) -> Frame | _NeedData | None:
        """The next whole frame; :data:`NEED_DATA` until one has arrived; None once the
        peer closed the stream between frames (RemoteProtocolError inside one)."""
        if len(self._buffer) >= HEADER.size:
            channel, length = HEADER.unpack_from(self._buffer)
            kind = _channel(channel)
            if length > MAX_PAYLOAD:
                raise RemoteProtocolError(f"frame of {length} bytes over {MAX_PAYLOAD}")
            end = HEADER.size + length
            if len(self._buffer) >= end:
                payload = bytes(self._buffer[HEADER.size : end])
                del self._buffer[:end]
                return Frame(kind, payload)
        if self._closed:
            if self._buffer:
                raise RemoteProtocolError("stream closed inside a frame")
            return None
        return NEED_DATA

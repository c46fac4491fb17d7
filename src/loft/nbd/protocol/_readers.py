"""Parsers, one per (role, state), in h11's manner: each takes the receive buffer's
unread part (``buf[start:end]``) and returns what it parsed, or raises
:class:`RemoteProtocolError`. A reader changes nothing; the connection applies the
result.

A reader returns ``(event, consumed)`` when a whole message is there, or an ``int`` when
it needs more bytes: the message's total length counted from ``start`` when the header
says it (a hint to grow the buffer), else 0. A large WRITE is returned as a
:class:`WriteHeader` (consumed: the request header) as soon as its header is complete,
so the connection can receive the payload straight into a buffer of its own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from loft.nbd.protocol import _events as ev
from loft.nbd.protocol import _state as st
from loft.nbd.protocol._constants import (
    CLIENT_FLAGS_KNOWN,
    IHAVEOPT,
    MAX_NAME_LENGTH,
    MAX_OPTION_LENGTH,
    MAX_PAYLOAD,
    MAX_QUERIES,
    NBDMAGIC,
    OPTION_HEADER,
    OPTION_REPLY_HEADER,
    OPTION_REPLY_MAGIC,
    REQUEST_HEADER,
    REQUEST_MAGIC,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_HEADER,
    STRUCTURED_REPLY_MAGIC,
    ClientFlag,
    Command,
    HandshakeFlag,
    InfoType,
    Option,
    OptionReplyType,
    ReplyFlag,
    ReplyType,
)
from loft.nbd.protocol._errors import RemoteProtocolError

__all__ = [
    "DIRECT_PAYLOAD_MIN",
    "READERS",
    "ReadContext",
    "Reader",
    "WriteHeader",
    "read_client_flags",
    "read_export_name_reply",
    "read_greeting",
    "read_option",
    "read_option_reply",
    "read_plain_reads",
    "read_reply",
    "read_request",
]


class ReadContext(Protocol):
    """What readers may ask of the connection (they never change it)."""

    @property
    def current_option(self) -> int | None:
        """The option a reply is expected for (client side)."""
        ...

    @property
    def no_zeroes(self) -> bool:
        """The 124 zero bytes after an EXPORT_NAME reply are left out."""
        ...

    def reply_length(self, handle: int) -> int | None:
        """The READ length of the request ``handle`` (0: not a READ), or None when no
        request with that handle awaits its reply (client side)."""
        ...


#: A whole message and how many bytes it took, or the bytes still needed (see above).
Parsed = tuple[object, int] | int
Reader = Callable[[bytearray, int, int, ReadContext], Parsed]


@dataclass(frozen=True, slots=True)
class WriteHeader:
    """A WRITE request whose payload has not all arrived yet (server side)."""

    command: int
    handle: int
    offset: int
    length: int
    flags: int


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_GREETING = struct.Struct(">QQH")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_from_wire = ev.Request.from_wire
_WRITE = int(Command.WRITE)
#: After a WRITE at least this large, the next request is read header first (see
#: Connection.get_buffer).
DIRECT_PAYLOAD_MIN = 64 * 1024
_REQUEST = REQUEST_HEADER.size
_READ = int(Command.READ)
#: read_plain_reads() looks at most this many headers per call: it copies them out of
#: the buffer first, and a burst of reads among other requests must not make each call
#: copy the whole buffer again.
PLAIN_READS_MAX = 64


# --- server side: what a client sends -------------------------------------------------


def read_client_flags(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    if end - start < 4:
        return 0
    (flags,) = _U32.unpack_from(buf, start)
    if flags & ~CLIENT_FLAGS_KNOWN:
        raise RemoteProtocolError(f"unknown client flags 0x{flags:x}")
    event = ev.ClientFlags(
        fixed_newstyle=bool(flags & ClientFlag.FIXED_NEWSTYLE),
        no_zeroes=bool(flags & ClientFlag.NO_ZEROES),
    )
    return event, 4


class _Invalid(Exception):
    """Malformed option data (answered with NBD_REP_ERR_INVALID, not a disconnect)."""


class _Cursor:
    """Bounds-checked reads over one option's data."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Invalid("option data is shorter than its fields say")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])

    def string(self, n: int, what: str) -> str:
        if n > MAX_NAME_LENGTH:
            raise _Invalid(f"{what} longer than {MAX_NAME_LENGTH} bytes")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(f"{what} is not valid UTF-8") from None

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _Invalid("option data has trailing bytes")


def _parse_option(option: int, data: bytes) -> object:
    cur = _Cursor(data)
    if option == Option.EXPORT_NAME:
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("export name is not valid UTF-8") from None
        if len(data) > MAX_NAME_LENGTH:
            raise RemoteProtocolError("export name too long")
        return ev.ExportNameOption(name)
    if option in (Option.INFO, Option.GO):
        name = cur.string(cur.u32(), "export name")
        infos = tuple(cur.u16() for _ in range(cur.u16()))
        cur.end()
        cls = ev.InfoOption if option == Option.INFO else ev.GoOption
        return cls(name, infos)
    if option in (Option.LIST_META_CONTEXT, Option.SET_META_CONTEXT):
        name = cur.string(cur.u32(), "export name")
        count = cur.u32()
        if count > MAX_QUERIES:
            raise _Invalid(f"more than {MAX_QUERIES} meta context queries")
        queries = tuple(cur.string(cur.u32(), "query") for _ in range(count))
        cur.end()
        mcls = (
            ev.ListMetaContextOption
            if option == Option.LIST_META_CONTEXT
            else ev.SetMetaContextOption
        )
        return mcls(name, queries)
    if option == Option.ABORT:
        return ev.AbortOption()
    simple: dict[int, type] = {
        Option.LIST: ev.ListOption,
        Option.STARTTLS: ev.StartTLSOption,
        Option.STRUCTURED_REPLY: ev.StructuredReplyOption,
    }
    if option in simple:
        cur.end()
        return simple[option]()
    return ev.UnknownOption(option, data)


def read_option(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    if end - start < OPTION_HEADER.size:
        return 0
    magic, option, length = OPTION_HEADER.unpack_from(buf, start)
    if magic != IHAVEOPT:
        raise RemoteProtocolError("bad option magic")
    if length > MAX_OPTION_LENGTH:
        raise RemoteProtocolError(f"option data of {length} bytes exceeds {MAX_OPTION_LENGTH}")
    total: int = OPTION_HEADER.size + length
    if end - start < total:
        return total
    data = bytes(buf[start + OPTION_HEADER.size : start + total])
    try:
        return _parse_option(option, data), total
    except _Invalid as e:
        return ev.InvalidOption(option, str(e)), total


def read_request(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    if end - start < _REQUEST:
        return 0
    magic, flags, command, handle, offset, length = REQUEST_HEADER.unpack_from(buf, start)
    if magic != REQUEST_MAGIC:
        raise RemoteProtocolError("bad request magic")
    if command != _WRITE:
        return _from_wire(command, handle, offset, length, flags, None), _REQUEST
    if length > MAX_PAYLOAD:
        # The payload cannot be skipped safely without reading it all; the spec lets a
        # server drop a client that exceeds the advertised maximum.
        raise RemoteProtocolError(f"WRITE of {length} bytes exceeds {MAX_PAYLOAD}")
    data = start + _REQUEST
    if end - data >= length:
        request = _from_wire(command, handle, offset, length, flags, buf[data : data + length])
        return request, _REQUEST + length
    return WriteHeader(command, handle, offset, length, flags), _REQUEST


def read_plain_reads(
    buf: bytearray, start: int, end: int, below: int, limit: int
) -> list[tuple[int, int, int]]:
    """``(handle, offset, length)`` of the plain READs at ``buf[start:end]``: READs with
    no flags, ``0 < length < below`` and ``offset + length <= limit``, in order, up to
    the first request that is anything else (a bad magic included) or incomplete, and
    at most PLAIN_READS_MAX. Each is exactly what :func:`read_request` would return as a
    Request; the caller consumes ``len(result) * REQUEST_HEADER.size`` bytes."""
    n = min((end - start) // _REQUEST, PLAIN_READS_MAX)
    out: list[tuple[int, int, int]] = []
    if n:
        # A copy of the headers, not a view: a view would pin the buffer, which the
        # connection resizes, for as long as the iterator lives.
        headers = REQUEST_HEADER.iter_unpack(buf[start : start + n * _REQUEST])
        for magic, flags, command, handle, offset, length in headers:
            if (
                magic != REQUEST_MAGIC
                or flags
                or command != _READ
                or not 0 < length < below
                or offset + length > limit
            ):
                break
            out.append((handle, offset, length))
    return out


# --- client side: what a server sends -------------------------------------------------


def read_greeting(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    if end - start < _GREETING.size:
        return 0
    magic, opt, flags = _GREETING.unpack_from(buf, start)
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RemoteProtocolError("not a fixed newstyle NBD server")
    if not flags & HandshakeFlag.FIXED_NEWSTYLE:
        raise RemoteProtocolError("server does not speak fixed newstyle")
    return ev.Greeting(no_zeroes=bool(flags & HandshakeFlag.NO_ZEROES)), _GREETING.size


def read_export_name_reply(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    need = _EXPORT_NAME_REPLY.size + (0 if conn.no_zeroes else 124)
    if end - start < need:
        return 0
    size, flags = _EXPORT_NAME_REPLY.unpack_from(buf, start)
    return ev.ExportNameReply(size, flags), need


def _string(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("server sent invalid UTF-8") from None


def _parse_option_reply(option: int, rtype: int, data: bytes) -> object:
    if rtype == OptionReplyType.ACK:
        return ev.OptionAck(option)
    if rtype == OptionReplyType.SERVER:
        if len(data) < 4:
            raise RemoteProtocolError("short NBD_REP_SERVER")
        (n,) = _U32.unpack_from(data)
        if 4 + n > len(data):
            raise RemoteProtocolError("NBD_REP_SERVER name overruns")
        return ev.OptionServer(option, _string(data[4 : 4 + n]), _string(data[4 + n :]))
    if rtype == OptionReplyType.INFO:
        if len(data) < 2:
            raise RemoteProtocolError("short NBD_REP_INFO")
        (itype,) = _U16.unpack_from(data)
        body = data[2:]
        if itype == InfoType.EXPORT and len(body) == 10:
            size, flags = struct.unpack(">QH", body)
            return ev.OptionInfoExport(option, size, flags)
        if itype == InfoType.NAME:
            return ev.OptionInfoName(option, _string(body))
        if itype == InfoType.DESCRIPTION:
            return ev.OptionInfoDescription(option, _string(body))
        if itype == InfoType.BLOCK_SIZE and len(body) == 12:
            return ev.OptionInfoBlockSize(option, *struct.unpack(">III", body))
        raise RemoteProtocolError(f"unexpected NBD_REP_INFO type {itype}")
    if rtype == OptionReplyType.META_CONTEXT:
        if len(data) < 4:
            raise RemoteProtocolError("short NBD_REP_META_CONTEXT")
        (cid,) = _U32.unpack_from(data)
        return ev.OptionMetaContext(option, cid, _string(data[4:]))
    try:
        err = OptionReplyType(rtype)
    except ValueError:
        raise RemoteProtocolError(f"unknown option reply type 0x{rtype:x}") from None
    if not err.is_error:
        raise RemoteProtocolError(f"unexpected option reply {err.name}")
    return ev.OptionError(option, err, _string(data))


def read_option_reply(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    hdr = OPTION_REPLY_HEADER
    if end - start < hdr.size:
        return 0
    magic, option, rtype, length = hdr.unpack_from(buf, start)
    if magic != OPTION_REPLY_MAGIC:
        raise RemoteProtocolError("bad option reply magic")
    if length > MAX_OPTION_LENGTH:
        raise RemoteProtocolError("option reply too long")
    total: int = hdr.size + length
    if end - start < total:
        return total
    data = bytes(buf[start + hdr.size : start + total])
    if option != conn.current_option:
        raise RemoteProtocolError(f"reply to option {option}, expected {conn.current_option}")
    return _parse_option_reply(option, rtype, data), total


def _parse_chunk(handle: int, flags: int, rtype: int, data: bytes) -> object:
    done = bool(flags & ReplyFlag.DONE)
    if rtype == ReplyType.NONE:
        if data or not done:
            raise RemoteProtocolError("NONE chunk must be empty and final")
        return ev.NoneChunk(handle)
    if rtype == ReplyType.OFFSET_DATA:
        if len(data) < 9:
            raise RemoteProtocolError("short OFFSET_DATA chunk")
        (offset,) = _U64.unpack_from(data)
        return ev.OffsetDataChunk(handle, offset, data[8:], done)
    if rtype == ReplyType.OFFSET_HOLE:
        if len(data) != 12:
            raise RemoteProtocolError("OFFSET_HOLE chunk must be 12 bytes")
        offset, length = struct.unpack(">QI", data)
        if length == 0:
            raise RemoteProtocolError("empty hole")
        return ev.OffsetHoleChunk(handle, offset, length, done)
    if rtype == ReplyType.BLOCK_STATUS:
        if len(data) < 12 or (len(data) - 4) % 8:
            raise RemoteProtocolError("malformed BLOCK_STATUS chunk")
        (cid,) = _U32.unpack_from(data)
        n = (len(data) - 4) // 8
        vals = struct.unpack_from(f">{2 * n}I", data, 4)
        extents = tuple(zip(vals[0::2], vals[1::2], strict=True))
        if any(length == 0 for length, _ in extents):
            raise RemoteProtocolError("zero-length extent")
        return ev.BlockStatusChunk(handle, cid, extents, done)
    if rtype in (ReplyType.ERROR, ReplyType.ERROR_OFFSET):
        if len(data) < 6:
            raise RemoteProtocolError("short error chunk")
        err, mlen = struct.unpack_from(">IH", data)
        rest = data[6 + mlen :]
        message = _string(data[6 : 6 + mlen])
        err_offset: int | None = None
        if rtype == ReplyType.ERROR_OFFSET:
            if len(rest) != 8:
                raise RemoteProtocolError("ERROR_OFFSET chunk without offset")
            (err_offset,) = _U64.unpack(rest)
        elif rest:
            raise RemoteProtocolError("trailing bytes in error chunk")
        return ev.ErrorChunk(handle, err, message, err_offset, done)
    raise RemoteProtocolError(f"unknown structured reply type {rtype}")


def read_reply(buf: bytearray, start: int, end: int, conn: ReadContext) -> Parsed:
    """A simple reply or one structured chunk. The connection forgets the handle once its
    reply is over (a simple reply, or a chunk with DONE)."""
    avail = end - start
    if avail < 4:
        return 0
    (magic,) = _U32.unpack_from(buf, start)
    if magic == SIMPLE_REPLY_MAGIC:
        if avail < SIMPLE_REPLY.size:
            return 0
        _, error, handle = SIMPLE_REPLY.unpack_from(buf, start)
        length = conn.reply_length(handle)
        if length is None:
            raise RemoteProtocolError(f"reply for unknown handle {handle}")
        if error:
            return ev.SimpleReply(handle, error), SIMPLE_REPLY.size
        total: int = SIMPLE_REPLY.size + length
        if avail < total:
            return total
        data = bytes(buf[start + SIMPLE_REPLY.size : start + total]) if length else None
        return ev.SimpleReply(handle, 0, data), total
    if magic == STRUCTURED_REPLY_MAGIC:
        if avail < STRUCTURED_HEADER.size:
            return 0
        _, flags, rtype, handle, length = STRUCTURED_HEADER.unpack_from(buf, start)
        if length > MAX_PAYLOAD + 8:
            raise RemoteProtocolError("structured chunk too long")
        total = STRUCTURED_HEADER.size + length
        if avail < total:
            return total
        data = bytes(buf[start + STRUCTURED_HEADER.size : start + total])
        if conn.reply_length(handle) is None:
            raise RemoteProtocolError(f"reply for unknown handle {handle}")
        return _parse_chunk(handle, flags, rtype, data), total
    raise RemoteProtocolError("bad reply magic")


READERS: dict[tuple[st.Sentinel, st.Sentinel], Reader] = {
    (st.SERVER, st.AWAIT_CLIENT_FLAGS): read_client_flags,
    (st.SERVER, st.OPTIONS): read_option,
    (st.SERVER, st.TRANSMISSION): read_request,
    (st.CLIENT, st.START): read_greeting,
    (st.CLIENT, st.OPTION_REPLY): read_option_reply,
    (st.CLIENT, st.EXPORT_NAME_REPLY): read_export_name_reply,
    (st.CLIENT, st.TRANSMISSION): read_reply,
    # After NBD_CMD_DISC the replies to requests still in flight arrive.
    (st.CLIENT, st.CLOSED): read_reply,
}

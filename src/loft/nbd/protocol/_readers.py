"""Parsers, one per (role, state): each returns an event, None when it needs more
bytes, or raises :class:`RemoteProtocolError`.

Readers look at ``conn.buf[conn.start:conn.end]`` and advance ``conn.start`` only when
they return an event, so a partial message is simply left in place.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from loft.nbd.protocol._connection import Connection

__all__ = ["READERS"]

Event = object
Reader = Callable[["Connection"], Event | None]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_GREETING = struct.Struct(">QQH")
_EXPORT_NAME_REPLY = struct.Struct(">QH")
_from_wire = ev.Request.from_wire
#: After a WRITE at least this large, the next request is read header first (see
#: Connection.header_only).
DIRECT_PAYLOAD_MIN = 64 * 1024


# --- server side: what a client sends -------------------------------------------------


def read_client_flags(conn: Connection) -> Event | None:
    if conn.end - conn.start < 4:
        return None
    (flags,) = _U32.unpack_from(conn.buf, conn.start)
    conn.start += 4
    if flags & ~CLIENT_FLAGS_KNOWN:
        raise RemoteProtocolError(f"unknown client flags 0x{flags:x}")
    return ev.ClientFlags(
        fixed_newstyle=bool(flags & ClientFlag.FIXED_NEWSTYLE),
        no_zeroes=bool(flags & ClientFlag.NO_ZEROES),
    )


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


def _parse_option(option: int, data: bytes) -> Event:
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


def read_option(conn: Connection) -> Event | None:
    if conn.end - conn.start < OPTION_HEADER.size:
        return None
    magic, option, length = OPTION_HEADER.unpack_from(conn.buf, conn.start)
    if magic != IHAVEOPT:
        raise RemoteProtocolError("bad option magic")
    if length > MAX_OPTION_LENGTH:
        raise RemoteProtocolError(f"option data of {length} bytes exceeds {MAX_OPTION_LENGTH}")
    total = OPTION_HEADER.size + length
    if conn.end - conn.start < total:
        conn.need = total
        return None
    data = bytes(conn.buf[conn.start + OPTION_HEADER.size : conn.start + total])
    conn.start += total
    try:
        return _parse_option(option, data)
    except _Invalid as e:
        return ev.InvalidOption(option, str(e))


def read_request(conn: Connection) -> ev.Request | None:
    start = conn.start
    avail = conn.end - start
    if avail < 28:
        return None
    magic, flags, command, handle, offset, length = REQUEST_HEADER.unpack_from(conn.buf, start)
    if magic != REQUEST_MAGIC:
        raise RemoteProtocolError("bad request magic")
    if command != Command.WRITE:
        conn.start = start + 28
        conn.header_only = False
        return _from_wire(command, handle, offset, length, flags, None)
    if length > MAX_PAYLOAD:
        # The payload cannot be skipped safely without reading it all; the spec lets a
        # server drop a client that exceeds the advertised maximum.
        raise RemoteProtocolError(f"WRITE of {length} bytes exceeds {MAX_PAYLOAD}")
    start += 28
    have = conn.end - start
    conn.header_only = length >= DIRECT_PAYLOAD_MIN
    if have >= length:
        conn.start = start + length
        return _from_wire(command, handle, offset, length, flags, conn.buf[start : start + length])
    # Receive the rest of the payload straight into its own buffer (see get_buffer).
    payload = conn.new_payload(length)
    payload[:have] = memoryview(conn.buf)[start : conn.end]
    conn.start = conn.end
    conn.begin_payload((command, handle, offset, length, flags), payload, have)
    return None


# --- client side: what a server sends -------------------------------------------------


def read_greeting(conn: Connection) -> Event | None:
    if conn.end - conn.start < _GREETING.size:
        return None
    magic, opt, flags = _GREETING.unpack_from(conn.buf, conn.start)
    conn.start += _GREETING.size
    if magic != NBDMAGIC or opt != IHAVEOPT:
        raise RemoteProtocolError("not a fixed newstyle NBD server")
    if not flags & HandshakeFlag.FIXED_NEWSTYLE:
        raise RemoteProtocolError("server does not speak fixed newstyle")
    return ev.Greeting(no_zeroes=bool(flags & HandshakeFlag.NO_ZEROES))


def read_export_name_reply(conn: Connection) -> Event | None:
    need = _EXPORT_NAME_REPLY.size + (0 if conn.no_zeroes else 124)
    if conn.end - conn.start < need:
        return None
    size, flags = _EXPORT_NAME_REPLY.unpack_from(conn.buf, conn.start)
    conn.start += need
    return ev.ExportNameReply(size, flags)


def _string(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("server sent invalid UTF-8") from None


def _parse_option_reply(option: int, rtype: int, data: bytes) -> Event:
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


def read_option_reply(conn: Connection) -> Event | None:
    hdr = OPTION_REPLY_HEADER
    if conn.end - conn.start < hdr.size:
        return None
    magic, option, rtype, length = hdr.unpack_from(conn.buf, conn.start)
    if magic != OPTION_REPLY_MAGIC:
        raise RemoteProtocolError("bad option reply magic")
    if length > MAX_OPTION_LENGTH:
        raise RemoteProtocolError("option reply too long")
    total = hdr.size + length
    if conn.end - conn.start < total:
        conn.need = total
        return None
    data = bytes(conn.buf[conn.start + hdr.size : conn.start + total])
    conn.start += total
    if option != conn.current_option:
        raise RemoteProtocolError(f"reply to option {option}, expected {conn.current_option}")
    return _parse_option_reply(option, rtype, data)


def _parse_chunk(handle: int, flags: int, rtype: int, data: bytes) -> Event:
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


def read_reply(conn: Connection) -> Event | None:
    start = conn.start
    avail = conn.end - start
    if avail < 4:
        return None
    (magic,) = _U32.unpack_from(conn.buf, start)
    if magic == SIMPLE_REPLY_MAGIC:
        if avail < SIMPLE_REPLY.size:
            return None
        _, error, handle = SIMPLE_REPLY.unpack_from(conn.buf, start)
        length = conn.pending_reads.get(handle)
        if length is None:
            raise RemoteProtocolError(f"reply for unknown handle {handle}")
        if error:
            conn.start = start + SIMPLE_REPLY.size
            conn.pending_reads.pop(handle)
            return ev.SimpleReply(handle, error)
        total = SIMPLE_REPLY.size + length
        if avail < total:
            conn.need = total
            return None
        conn.start = start + total
        conn.pending_reads.pop(handle)
        data = bytes(conn.buf[start + SIMPLE_REPLY.size : start + total]) if length else None
        return ev.SimpleReply(handle, 0, data)
    if magic == STRUCTURED_REPLY_MAGIC:
        if avail < STRUCTURED_HEADER.size:
            return None
        _, flags, rtype, handle, length = STRUCTURED_HEADER.unpack_from(conn.buf, start)
        if length > MAX_PAYLOAD + 8:
            raise RemoteProtocolError("structured chunk too long")
        total = STRUCTURED_HEADER.size + length
        if avail < total:
            conn.need = total
            return None
        data = bytes(conn.buf[start + STRUCTURED_HEADER.size : start + total])
        conn.start = start + total
        if handle not in conn.pending_reads:
            raise RemoteProtocolError(f"reply for unknown handle {handle}")
        chunk = _parse_chunk(handle, flags, rtype, data)
        if flags & ReplyFlag.DONE:
            conn.pending_reads.pop(handle)
        return chunk
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

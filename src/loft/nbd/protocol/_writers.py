"""Serializers, one per event type. Each returns a list of buffers so that large data
(READ replies, WRITE payloads) is passed through without being copied.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from loft.nbd.protocol import _events as ev
from loft.nbd.protocol._constants import (
    IHAVEOPT,
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
    HandshakeFlag,
    InfoType,
    Option,
    OptionReplyType,
    ReplyFlag,
    ReplyType,
)

__all__ = [
    "WRITERS",
    "Buffers",
    "w_block_status",
    "w_client_flags",
    "w_error_chunk",
    "w_export_name",
    "w_export_name_reply",
    "w_greeting",
    "w_none_chunk",
    "w_offset_data",
    "w_offset_hole",
    "w_option_reply",
    "w_request",
    "w_simple_reply",
]

Buffer = bytes | bytearray | memoryview
Buffers = list[Buffer]

_ZEROES_124 = bytes(124)


def _opt_reply(option: int, rtype: int, data: bytes = b"") -> Buffers:
    return [OPTION_REPLY_HEADER.pack(OPTION_REPLY_MAGIC, option, rtype, len(data)) + data]


def _opt(option: int, data: bytes = b"") -> Buffers:
    return [OPTION_HEADER.pack(IHAVEOPT, option, len(data)) + data]


def _str32(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def _chunk(handle: int, rtype: int, done: bool, payload: bytes) -> Buffers:
    flags = ReplyFlag.DONE if done else 0
    hdr = STRUCTURED_HEADER.pack(STRUCTURED_REPLY_MAGIC, flags, rtype, handle, len(payload))
    return [hdr + payload]


def w_greeting(e: ev.Greeting, no_zeroes: bool) -> Buffers:
    flags = HandshakeFlag.FIXED_NEWSTYLE | (HandshakeFlag.NO_ZEROES if e.no_zeroes else 0)
    return [struct.pack(">QQH", NBDMAGIC, IHAVEOPT, flags)]


def w_client_flags(e: ev.ClientFlags, no_zeroes: bool) -> Buffers:
    flags = (ClientFlag.FIXED_NEWSTYLE if e.fixed_newstyle else 0) | (
        ClientFlag.NO_ZEROES if e.no_zeroes else 0
    )
    return [struct.pack(">I", flags)]


def w_export_name(e: ev.ExportNameOption, no_zeroes: bool) -> Buffers:
    return _opt(Option.EXPORT_NAME, e.name.encode())


def _w_info_go(option: int, e: ev.InfoOption | ev.GoOption) -> Buffers:
    data = _str32(e.name) + struct.pack(
        f">H{len(e.info_requests)}H", len(e.info_requests), *e.info_requests
    )
    return _opt(option, data)


def _w_meta(option: int, e: ev.ListMetaContextOption | ev.SetMetaContextOption) -> Buffers:
    data = _str32(e.export_name) + struct.pack(">I", len(e.queries))
    data += b"".join(_str32(q) for q in e.queries)
    return _opt(option, data)


def w_export_name_reply(e: ev.ExportNameReply, no_zeroes: bool) -> Buffers:
    out = struct.pack(">QH", e.size, e.flags)
    return [out if no_zeroes else out + _ZEROES_124]


def w_request(e: ev.Request, no_zeroes: bool) -> Buffers:
    hdr = REQUEST_HEADER.pack(REQUEST_MAGIC, e.flags, e.command, e.handle, e.offset, e.length)
    return [hdr] if e.payload is None else [hdr, e.payload]


def w_simple_reply(e: ev.SimpleReply, no_zeroes: bool) -> Buffers:
    hdr = SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, e.error, e.handle)
    return [hdr] if e.data is None else [hdr, e.data]


def w_offset_data(e: ev.OffsetDataChunk, no_zeroes: bool) -> Buffers:
    flags = ReplyFlag.DONE if e.done else 0
    hdr = STRUCTURED_HEADER.pack(
        STRUCTURED_REPLY_MAGIC, flags, ReplyType.OFFSET_DATA, e.handle, 8 + len(e.data)
    )
    return [hdr + struct.pack(">Q", e.offset), e.data]


def w_offset_hole(e: ev.OffsetHoleChunk, no_zeroes: bool) -> Buffers:
    return _chunk(e.handle, ReplyType.OFFSET_HOLE, e.done, struct.pack(">QI", e.offset, e.length))


def w_block_status(e: ev.BlockStatusChunk, no_zeroes: bool) -> Buffers:
    flat = [v for ext in e.extents for v in ext]
    payload = struct.pack(f">I{len(flat)}I", e.context_id, *flat)
    return _chunk(e.handle, ReplyType.BLOCK_STATUS, e.done, payload)


def w_error_chunk(e: ev.ErrorChunk, no_zeroes: bool) -> Buffers:
    msg = e.message.encode()
    payload = struct.pack(">IH", e.error, len(msg)) + msg
    rtype = ReplyType.ERROR
    if e.offset is not None:
        payload += struct.pack(">Q", e.offset)
        rtype = ReplyType.ERROR_OFFSET
    return _chunk(e.handle, rtype, e.done, payload)


def w_none_chunk(e: ev.NoneChunk, no_zeroes: bool) -> Buffers:
    return _chunk(e.handle, ReplyType.NONE, True, b"")


def _info(itype: int, body: bytes) -> bytes:
    return struct.pack(">H", itype) + body


def w_option_reply(e: Any, no_zeroes: bool) -> Buffers:
    if isinstance(e, ev.OptionAck):
        return _opt_reply(e.option, OptionReplyType.ACK)
    if isinstance(e, ev.OptionServer):
        return _opt_reply(e.option, OptionReplyType.SERVER, _str32(e.name) + e.description.encode())
    if isinstance(e, ev.OptionInfoExport):
        body = _info(InfoType.EXPORT, struct.pack(">QH", e.size, e.flags))
        return _opt_reply(e.option, OptionReplyType.INFO, body)
    if isinstance(e, ev.OptionInfoName):
        return _opt_reply(e.option, OptionReplyType.INFO, _info(InfoType.NAME, e.name.encode()))
    if isinstance(e, ev.OptionInfoDescription):
        body = _info(InfoType.DESCRIPTION, e.description.encode())
        return _opt_reply(e.option, OptionReplyType.INFO, body)
    if isinstance(e, ev.OptionInfoBlockSize):
        body = _info(InfoType.BLOCK_SIZE, struct.pack(">III", e.minimum, e.preferred, e.maximum))
        return _opt_reply(e.option, OptionReplyType.INFO, body)
    if isinstance(e, ev.OptionMetaContext):
        body = struct.pack(">I", e.context_id) + e.name.encode()
        return _opt_reply(e.option, OptionReplyType.META_CONTEXT, body)
    assert isinstance(e, ev.OptionError)
    return _opt_reply(e.option, e.error, e.message.encode())


Writer = Callable[[Any, bool], Buffers]

WRITERS: dict[type, Writer] = {
    ev.Greeting: w_greeting,
    ev.ClientFlags: w_client_flags,
    ev.ExportNameOption: w_export_name,
    ev.InfoOption: lambda e, nz: _w_info_go(Option.INFO, e),
    ev.GoOption: lambda e, nz: _w_info_go(Option.GO, e),
    ev.ListOption: lambda e, nz: _opt(Option.LIST),
    ev.AbortOption: lambda e, nz: _opt(Option.ABORT),
    ev.StartTLSOption: lambda e, nz: _opt(Option.STARTTLS),
    ev.StructuredReplyOption: lambda e, nz: _opt(Option.STRUCTURED_REPLY),
    ev.ListMetaContextOption: lambda e, nz: _w_meta(Option.LIST_META_CONTEXT, e),
    ev.SetMetaContextOption: lambda e, nz: _w_meta(Option.SET_META_CONTEXT, e),
    ev.UnknownOption: lambda e, nz: _opt(e.option, e.data),
    ev.ExportNameReply: w_export_name_reply,
    ev.OptionAck: w_option_reply,
    ev.OptionServer: w_option_reply,
    ev.OptionInfoExport: w_option_reply,
    ev.OptionInfoName: w_option_reply,
    ev.OptionInfoDescription: w_option_reply,
    ev.OptionInfoBlockSize: w_option_reply,
    ev.OptionMetaContext: w_option_reply,
    ev.OptionError: w_option_reply,
    ev.Request: w_request,
    ev.SimpleReply: w_simple_reply,
    ev.OffsetDataChunk: w_offset_data,
    ev.OffsetHoleChunk: w_offset_hole,
    ev.BlockStatusChunk: w_block_status,
    ev.ErrorChunk: w_error_chunk,
    ev.NoneChunk: w_none_chunk,
}

"""Wire values of the NBD protocol, written once.

Every number here comes from the NBD protocol specification (``doc/proto.md``). All
integers on the wire are big-endian. Limits that are loft's own choice are named
``MAX_*``/``DEFAULT_*`` and say why they have the value they have.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "CLIENT_FLAGS_KNOWN",
    "CMD_FLAGS_KNOWN",
    "DEFAULT_PREFERRED_BLOCK_SIZE",
    "IHAVEOPT",
    "MAX_NAME_LENGTH",
    "MAX_OPTION_LENGTH",
    "MAX_PAYLOAD",
    "MAX_QUERIES",
    "NBDMAGIC",
    "OPTION_REPLY_MAGIC",
    "REQUEST_MAGIC",
    "SIMPLE_REPLY_MAGIC",
    "STRUCTURED_REPLY_MAGIC",
    "ClientFlag",
    "CmdFlag",
    "Command",
    "Errno",
    "HandshakeFlag",
    "InfoType",
    "Option",
    "OptionReplyType",
    "ReplyFlag",
    "ReplyType",
    "StateFlag",
    "TransmissionFlag",
]

#: "NBDMAGIC": first 8 bytes the server sends.
NBDMAGIC = 0x4E42444D41474943
#: "IHAVEOPT": newstyle magic, and the prefix of every client option.
IHAVEOPT = 0x49484156454F5054
#: Magic of every option reply.
OPTION_REPLY_MAGIC = 0x0003E889045565A9
#: Magic of every transmission request.
REQUEST_MAGIC = 0x25609513
#: Magic of a simple reply.
SIMPLE_REPLY_MAGIC = 0x67446698
#: Magic of a structured reply chunk.
STRUCTURED_REPLY_MAGIC = 0x668E33EF

#: Largest READ/WRITE payload loft accepts (and advertises in NBD_INFO_BLOCK_SIZE):
#: 32 MiB is what QEMU, the kernel and libnbd clamp to, and bounds per-request memory.
MAX_PAYLOAD = 32 * 1024 * 1024
#: Largest option data accepted during the handshake. The longest legitimate option is a
#: meta-context query list; 64 KiB holds hundreds of them and bounds handshake memory.
MAX_OPTION_LENGTH = 64 * 1024
#: The spec caps export names and other strings at 4096 bytes.
MAX_NAME_LENGTH = 4096
#: Most meta-context queries accepted in one option (bounds the reply count).
MAX_QUERIES = 128
#: Preferred block size advertised when a backend has no better idea (the page size).
DEFAULT_PREFERRED_BLOCK_SIZE = 4096

# Pre-compiled structs for the hot paths (all big-endian).
REQUEST_HEADER = struct.Struct(">IHHQQI")  # magic, flags, type, handle, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, handle
STRUCTURED_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, handle, length
OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY_HEADER = struct.Struct(">QIII")  # magic, option, reply type, length


class HandshakeFlag(enum.IntFlag):
    """Flags the server sends in its greeting (16 bits)."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


class ClientFlag(enum.IntFlag):
    """Flags the client answers the greeting with (32 bits)."""

    FIXED_NEWSTYLE = 1 << 0
    NO_ZEROES = 1 << 1


CLIENT_FLAGS_KNOWN = int(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES)


class Option(enum.IntEnum):
    """Option numbers of the fixed newstyle negotiation."""

    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


_ERR = 1 << 31


class OptionReplyType(enum.IntEnum):
    """Option reply types; the error ones have bit 31 set."""

    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = _ERR + 1
    ERR_POLICY = _ERR + 2
    ERR_INVALID = _ERR + 3
    ERR_PLATFORM = _ERR + 4
    ERR_TLS_REQD = _ERR + 5
    ERR_UNKNOWN = _ERR + 6
    ERR_SHUTDOWN = _ERR + 7
    ERR_BLOCK_SIZE_REQD = _ERR + 8
    ERR_TOO_BIG = _ERR + 9
    ERR_EXT_HEADER_REQD = _ERR + 10

    @property
    def is_error(self) -> bool:
        """True for the error reply types (bit 31 set)."""
        return bool(self.value & _ERR)


class InfoType(enum.IntEnum):
    """Information items of NBD_OPT_INFO / NBD_OPT_GO (NBD_REP_INFO payload type)."""

    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(enum.IntFlag):
    """Per-export transmission flags (16 bits)."""

    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11
    BLOCK_STAT_PAYLOAD = 1 << 12


class Command(enum.IntEnum):
    """Transmission request types."""

    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


class CmdFlag(enum.IntFlag):
    """Command flags (16 bits)."""

    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4
    PAYLOAD_LEN = 1 << 5


#: Command flags loft understands; any other bit makes a request invalid (EINVAL).
CMD_FLAGS_KNOWN = int(
    CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.DF | CmdFlag.REQ_ONE | CmdFlag.FAST_ZERO
)


class ReplyFlag(enum.IntFlag):
    """Structured reply chunk flags."""

    DONE = 1 << 0


class ReplyType(enum.IntEnum):
    """Structured reply chunk types; error chunks have bit 15 set."""

    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = (1 << 15) + 1
    ERROR_OFFSET = (1 << 15) + 2


class StateFlag(enum.IntFlag):
    """``base:allocation`` status flags."""

    HOLE = 1 << 0
    ZERO = 1 << 1


class Errno(enum.IntEnum):
    """The only error numbers the spec allows on the wire."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108

"""Events: everything either side of an NBD connection can say, as frozen dataclasses.

Each event checks its fields when it is built, so an event that could not be encoded
cannot exist. Events that a server receives come from :meth:`Connection.next_event`;
events it sends go to :meth:`Connection.send` (and symmetrically for a client).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loft.nbd.protocol._constants import (
    MAX_NAME_LENGTH,
    CmdFlag,
    Command,
    Errno,
    OptionReplyType,
)
from loft.nbd.protocol._errors import LocalProtocolError

__all__ = [
    "AbortOption",
    "BlockStatusChunk",
    "ClientFlags",
    "ConnectionClosed",
    "ErrorChunk",
    "ExportNameOption",
    "ExportNameReply",
    "GoOption",
    "Greeting",
    "InfoOption",
    "InvalidOption",
    "ListMetaContextOption",
    "ListOption",
    "NoneChunk",
    "OffsetDataChunk",
    "OffsetHoleChunk",
    "OptionAck",
    "OptionError",
    "OptionInfoBlockSize",
    "OptionInfoDescription",
    "OptionInfoExport",
    "OptionInfoName",
    "OptionMetaContext",
    "OptionServer",
    "Request",
    "SetMetaContextOption",
    "SimpleReply",
    "StartTLSOption",
    "StructuredReplyOption",
    "UnknownOption",
]

_new = object.__new__

U16 = 1 << 16
U32 = 1 << 32
U64 = 1 << 64


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise LocalProtocolError(f"invalid event field: {what}")


def _check_name(name: str, what: str) -> None:
    _check(len(name.encode()) <= MAX_NAME_LENGTH, f"{what} longer than {MAX_NAME_LENGTH} bytes")


# --- handshake ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's first message: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES."""

    no_zeroes: bool = True


@dataclass(frozen=True, slots=True)
class ClientFlags:
    """The client's answer to the greeting."""

    fixed_newstyle: bool = True
    no_zeroes: bool = True


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side at a message boundary."""


# --- options (client -> server) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportNameOption:
    """NBD_OPT_EXPORT_NAME: select an export and go straight to transmission."""

    name: str

    def __post_init__(self) -> None:
        _check_name(self.name, "export name")


def _check_infos(infos: tuple[int, ...]) -> None:
    _check(len(infos) < U16 and all(0 <= i < U16 for i in infos), "info requests")


@dataclass(frozen=True, slots=True)
class InfoOption:
    """NBD_OPT_INFO: describe an export without selecting it."""

    name: str
    info_requests: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.name, "export name")
        _check_infos(self.info_requests)


@dataclass(frozen=True, slots=True)
class GoOption:
    """NBD_OPT_GO: describe an export, select it, and enter transmission."""

    name: str
    info_requests: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.name, "export name")
        _check_infos(self.info_requests)


@dataclass(frozen=True, slots=True)
class ListOption:
    """NBD_OPT_LIST: list the exports this client may open."""


@dataclass(frozen=True, slots=True)
class AbortOption:
    """NBD_OPT_ABORT: the client gives up; the server acks and closes."""


@dataclass(frozen=True, slots=True)
class StartTLSOption:
    """NBD_OPT_STARTTLS: upgrade the connection to TLS."""


@dataclass(frozen=True, slots=True)
class StructuredReplyOption:
    """NBD_OPT_STRUCTURED_REPLY: use structured replies in transmission."""


def _check_queries(queries: tuple[str, ...]) -> None:
    _check(len(queries) < U32, "query count")
    for q in queries:
        _check_name(q, "meta context query")


@dataclass(frozen=True, slots=True)
class ListMetaContextOption:
    """NBD_OPT_LIST_META_CONTEXT: which metadata contexts match these queries?"""

    export_name: str
    queries: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.export_name, "export name")
        _check_queries(self.queries)


@dataclass(frozen=True, slots=True)
class SetMetaContextOption:
    """NBD_OPT_SET_META_CONTEXT: select the contexts BLOCK_STATUS reports."""

    export_name: str
    queries: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name(self.export_name, "export name")
        _check_queries(self.queries)


@dataclass(frozen=True, slots=True)
class UnknownOption:
    """An option this library does not know; the server answers NBD_REP_ERR_UNSUP."""

    option: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check(0 <= self.option < U32, "option number")


@dataclass(frozen=True, slots=True)
class InvalidOption:
    """A known option whose data is malformed; the server answers NBD_REP_ERR_INVALID.

    Only produced when receiving (the option's data was consumed whole, so the
    conversation can go on).
    """

    option: int
    reason: str


# --- option replies (server -> client) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionAck:
    """NBD_REP_ACK."""

    option: int


@dataclass(frozen=True, slots=True)
class OptionServer:
    """NBD_REP_SERVER: one export in a LIST answer."""

    option: int
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "export name")
        _check_name(self.description, "export description")


@dataclass(frozen=True, slots=True)
class OptionInfoExport:
    """NBD_REP_INFO / NBD_INFO_EXPORT: size and transmission flags."""

    option: int
    size: int
    flags: int

    def __post_init__(self) -> None:
        _check(0 <= self.size < U64, "export size")
        _check(0 <= self.flags < U16, "transmission flags")


@dataclass(frozen=True, slots=True)
class OptionInfoName:
    """NBD_REP_INFO / NBD_INFO_NAME: the export's canonical name."""

    option: int
    name: str

    def __post_init__(self) -> None:
        _check_name(self.name, "export name")


@dataclass(frozen=True, slots=True)
class OptionInfoDescription:
    """NBD_REP_INFO / NBD_INFO_DESCRIPTION: a human-readable description."""

    option: int
    description: str

    def __post_init__(self) -> None:
        _check_name(self.description, "export description")


@dataclass(frozen=True, slots=True)
class OptionInfoBlockSize:
    """NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum block size."""

    option: int
    minimum: int
    preferred: int
    maximum: int

    def __post_init__(self) -> None:
        m, p, x = self.minimum, self.preferred, self.maximum
        _check(0 < m <= 65536 and (m & (m - 1)) == 0, "minimum block size")
        _check(p >= max(m, 512) and (p & (p - 1)) == 0, "preferred block size")
        _check(x < U32 and x >= p, "maximum block size")


@dataclass(frozen=True, slots=True)
class OptionMetaContext:
    """NBD_REP_META_CONTEXT: one metadata context and its id."""

    option: int
    context_id: int
    name: str

    def __post_init__(self) -> None:
        _check(0 <= self.context_id < U32, "context id")
        _check_name(self.name, "context name")


@dataclass(frozen=True, slots=True)
class OptionError:
    """An error reply to an option (``error`` has bit 31 set)."""

    option: int
    error: OptionReplyType
    message: str = ""

    def __post_init__(self) -> None:
        _check(OptionReplyType(self.error).is_error, "option error type")
        _check_name(self.message, "option error message")


@dataclass(frozen=True, slots=True)
class ExportNameReply:
    """The answer to NBD_OPT_EXPORT_NAME: size and transmission flags (no reply header)."""

    size: int
    flags: int

    def __post_init__(self) -> None:
        _check(0 <= self.size < U64, "export size")
        _check(0 <= self.flags < U16, "transmission flags")


# --- transmission ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One transmission request. ``payload`` is the data of a WRITE, else None.

    A received WRITE payload is a buffer owned by this event alone (never reused by
    the connection), so it may be handed to another thread without copying.
    """

    command: int
    handle: int
    offset: int = 0
    length: int = 0
    flags: int = 0
    payload: bytes | bytearray | memoryview | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check(0 <= self.command < U16, "command")
        _check(0 <= self.flags < U16, "command flags")
        _check(0 <= self.handle < U64, "handle")
        _check(0 <= self.offset < U64, "offset")
        _check(0 <= self.length < U32, "length")
        if self.command == Command.WRITE:
            _check(
                self.payload is not None and len(self.payload) == self.length,
                "WRITE payload length must equal the request length",
            )
        else:
            _check(self.payload is None, "only WRITE carries a payload")

    @property
    def fua(self) -> bool:
        """True when the client asked for forced unit access."""
        return bool(self.flags & CmdFlag.FUA)

    @classmethod
    def from_wire(
        cls,
        command: int,
        handle: int,
        offset: int,
        length: int,
        flags: int,
        payload: bytes | bytearray | memoryview | None,
    ) -> Request:
        """Build a request decoded from the wire, skipping the range checks (the fields
        come from fixed-width integers and cannot be out of range): this is the
        per-request hot path of a server."""
        r = _new(cls)
        _set_command(r, command)
        _set_handle(r, handle)
        _set_offset(r, offset)
        _set_length(r, length)
        _set_flags(r, flags)
        _set_payload(r, payload)
        return r

    def payload_bytes(self) -> bytes:
        """The WRITE payload as bytes (a copy; for tests and comparisons)."""
        return bytes(self.payload) if self.payload is not None else b""


# Each field's slot setter, bound once: Request.from_wire fills a frozen request through
# them, without the lookup by name that object.__setattr__ makes for every field (a third
# of what building a request cost).
_set_command, _set_handle, _set_offset, _set_length, _set_flags, _set_payload = (
    Request.__dict__[name].__set__
    for name in ("command", "handle", "offset", "length", "flags", "payload")
)


@dataclass(frozen=True, slots=True)
class SimpleReply:
    """A simple reply; ``data`` follows only for a successful READ."""

    handle: int
    error: int = 0
    data: bytes | bytearray | memoryview | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64, "handle")
        _check(self.error == 0 or self.error in Errno._value2member_map_, "errno")
        _check(self.error == 0 or self.data is None, "an error reply carries no data")


@dataclass(frozen=True, slots=True)
class OffsetDataChunk:
    """NBD_REPLY_TYPE_OFFSET_DATA: ``data`` read at ``offset``."""

    handle: int
    offset: int
    data: bytes | bytearray | memoryview = field(compare=False)
    done: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64 and 0 <= self.offset < U64, "handle/offset")
        _check(0 < len(self.data) < U32 - 8, "data chunk length")


@dataclass(frozen=True, slots=True)
class OffsetHoleChunk:
    """NBD_REPLY_TYPE_OFFSET_HOLE: ``length`` bytes at ``offset`` read as zeroes."""

    handle: int
    offset: int
    length: int
    done: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64 and 0 <= self.offset < U64, "handle/offset")
        _check(0 < self.length < U32, "hole length")


@dataclass(frozen=True, slots=True)
class BlockStatusChunk:
    """NBD_REPLY_TYPE_BLOCK_STATUS: extents ``(length, flags)`` for one context."""

    handle: int
    context_id: int
    extents: tuple[tuple[int, int], ...]
    done: bool = False

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64 and 0 <= self.context_id < U32, "handle/context")
        _check(len(self.extents) > 0, "at least one extent")
        for length, flags in self.extents:
            _check(0 < length < U32 and 0 <= flags < U32, "extent")


@dataclass(frozen=True, slots=True)
class ErrorChunk:
    """NBD_REPLY_TYPE_ERROR, or NBD_REPLY_TYPE_ERROR_OFFSET when ``offset`` is set."""

    handle: int
    error: int
    message: str = ""
    offset: int | None = None
    done: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64, "handle")
        _check(self.error in Errno._value2member_map_, "errno")
        _check(len(self.message.encode()) < U16, "error message")
        _check(self.offset is None or 0 <= self.offset < U64, "offset")


@dataclass(frozen=True, slots=True)
class NoneChunk:
    """NBD_REPLY_TYPE_NONE with DONE: the request is over."""

    handle: int

    def __post_init__(self) -> None:
        _check(0 <= self.handle < U64, "handle")

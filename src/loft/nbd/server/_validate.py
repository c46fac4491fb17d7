"""Request validation, done once where a request arrives (the nbdkit habit): after
this, backends only see in-range, permitted, well-flagged requests."""

from __future__ import annotations

from dataclasses import dataclass

from loft.nbd.protocol import (
    CMD_FLAGS_KNOWN,
    MAX_PAYLOAD,
    CmdFlag,
    Command,
    Errno,
    TransmissionFlag,
)

__all__ = ["ExportView", "validate_request"]

_WRITE, _READ, _TRIM, _ZERO = (
    int(c) for c in (Command.WRITE, Command.READ, Command.TRIM, Command.WRITE_ZEROES)
)
_CACHE, _FLUSH, _BS = (int(c) for c in (Command.CACHE, Command.FLUSH, Command.BLOCK_STATUS))
_MODIFYING = frozenset((_WRITE, _TRIM, _ZERO))
_RANGED = frozenset((_READ, _WRITE, _TRIM, _ZERO, _CACHE, _BS))
#: Which commands each flag is valid for (FUA is accepted on every command, as the
#: spec asks once SEND_FUA is advertised; it is ignored where nothing is written).
_FLAG_COMMANDS: dict[int, frozenset[int]] = {
    int(CmdFlag.NO_HOLE): frozenset((_ZERO,)),
    int(CmdFlag.FAST_ZERO): frozenset((_ZERO,)),
    int(CmdFlag.DF): frozenset((_READ,)),
    int(CmdFlag.REQ_ONE): frozenset((_BS,)),
}
# Plain ints: IntFlag arithmetic costs microseconds on the per-request path.
_FUA = int(CmdFlag.FUA)
_DF = int(CmdFlag.DF)
_FAST_ZERO = int(CmdFlag.FAST_ZERO)
_KNOWN = int(CMD_FLAGS_KNOWN)
_RO = int(TransmissionFlag.READ_ONLY)
_SEND_FAST_ZERO = int(TransmissionFlag.SEND_FAST_ZERO)
_SEND_TRIM = int(TransmissionFlag.SEND_TRIM)
_EINVAL, _EPERM, _ENOSPC = int(Errno.EINVAL), int(Errno.EPERM), int(Errno.ENOSPC)


@dataclass(frozen=True, slots=True)
class ExportView:
    """What validation needs to know about the export as this connection sees it."""

    size: int
    flags: int
    structured_replies: bool
    has_contexts: bool

    @property
    def readonly(self) -> bool:
        """The export was advertised READ_ONLY."""
        return bool(self.flags & _RO)


def validate_request(command: int, flags: int, offset: int, length: int, view: ExportView) -> int:
    """Return 0 when the request may be served, else the errno to answer it with."""
    if command not in _RANGED and command != _FLUSH:
        return _EINVAL
    if flags & ~_KNOWN:
        return _EINVAL
    if flags & ~_FUA:
        for bit, allowed in _FLAG_COMMANDS.items():
            if flags & bit and command not in allowed:
                return _EINVAL
        if flags & _DF and not view.structured_replies:
            return _EINVAL
        if flags & _FAST_ZERO and not view.flags & _SEND_FAST_ZERO:
            return _EINVAL
    if command in _MODIFYING and view.flags & _RO:
        return _EPERM
    if command == _FLUSH:
        return 0
    if length == 0:
        return _EINVAL
    if offset + length > view.size:
        return _ENOSPC if command in (_WRITE, _ZERO) else _EINVAL
    if command == _READ and length > MAX_PAYLOAD:
        return _EINVAL
    if command == _TRIM and not view.flags & _SEND_TRIM:
        return _EINVAL
    if command == _BS and not (view.structured_replies and view.has_contexts):
        return _EINVAL
    return 0

"""Running one validated request against a backend (nbdkit's ``protocol.c`` + the calls
into ``backend.c``): plain functions of a backend and a request, with no socket, task or
connection, so each can be tested on its own.

The result of :func:`execute` is what the reply carries: bytes for a plain READ, a list
of ``(offset, length, data or None)`` pieces for a sparse READ (None is a hole), a list
of ``(context id, extents)`` for BLOCK_STATUS, None for everything else. A failure is an
exception, which the connection turns into an error reply (:func:`errno_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from loft.nbd import protocol as p
from loft.nbd.backends.base import Backend

__all__ = [
    "ALLOCATION_DEPTH",
    "BASE_ALLOCATION",
    "SPARSE_READ_MIN",
    "WouldBlock",
    "block_status",
    "execute",
    "sparse_read",
]

#: READs at least this long are answered sparsely (OFFSET_HOLE for zero extents) when
#: structured replies are on; shorter ones are not worth a block-status lookup.
SPARSE_READ_MIN = 64 * 1024

#: Metadata contexts loft serves.
BASE_ALLOCATION = "base:allocation"
ALLOCATION_DEPTH = "qemu:allocation-depth"

# Plain ints: enum comparisons cost more than the rest of a request's bookkeeping.
_READ, _WRITE, _FLUSH = int(p.Command.READ), int(p.Command.WRITE), int(p.Command.FLUSH)
_TRIM, _ZERO, _CACHE = int(p.Command.TRIM), int(p.Command.WRITE_ZEROES), int(p.Command.CACHE)
_BS = int(p.Command.BLOCK_STATUS)
_FUA, _NO_HOLE, _DF = int(p.CmdFlag.FUA), int(p.CmdFlag.NO_HOLE), int(p.CmdFlag.DF)
_FAST_ZERO, _REQ_ONE = int(p.CmdFlag.FAST_ZERO), int(p.CmdFlag.REQ_ONE)
_ZERO_FLAG = int(p.StateFlag.ZERO)

ReadPieces = list[tuple[int, int, Any]]  # (offset, length, data or None for a hole)


class WouldBlock(Exception):
    """An inline read found its data not in memory; retry it on a worker thread."""


def _nowait_reader(backend: Backend) -> Callable[[int, int], Any]:
    def read(offset: int, length: int) -> Any:
        data = backend.pread_nowait(offset, length)
        if data is None:
            raise WouldBlock
        return data

    return read


def execute(
    backend: Backend,
    req: p.Request,
    structured: bool,
    contexts: Mapping[int, str],
    inline: bool,
) -> Any:
    """Run one validated request against ``backend`` (any thread; no transport).

    ``structured``: structured replies were negotiated; ``contexts``: the selected meta
    contexts by id. ``inline`` (on the event loop): reads use ``pread_nowait`` and raise
    :class:`WouldBlock` instead of waiting for the disk."""
    command = req.command
    if command == _READ:
        if (
            structured
            and req.length >= SPARSE_READ_MIN
            and not req.flags & _DF
            and backend.can_extents()
        ):
            read = _nowait_reader(backend) if inline else backend.pread
            return sparse_read(backend, read, req.offset, req.length)
        if not inline:
            return backend.pread(req.offset, req.length)
        data = backend.pread_nowait(req.offset, req.length)
        if data is None:
            raise WouldBlock
        return data
    if command == _WRITE:
        assert req.payload is not None
        backend.pwrite(req.offset, req.payload, bool(req.flags & _FUA))
    elif command == _FLUSH:
        backend.flush()
    elif command == _ZERO:
        backend.zero(
            req.offset,
            req.length,
            fua=bool(req.flags & _FUA),
            may_trim=not req.flags & _NO_HOLE,
            fast_only=bool(req.flags & _FAST_ZERO),
        )
    elif command == _TRIM:
        backend.trim(req.offset, req.length, bool(req.flags & _FUA))
    elif command == _CACHE:
        backend.cache(req.offset, req.length)
    elif command == _BS:
        return block_status(backend, req, contexts)
    return None


def sparse_read(
    backend: Backend, read: Callable[[int, int], Any], offset: int, length: int
) -> ReadPieces:
    """The range as data pieces and holes, per the backend's extents: zero runs become
    holes (no bytes read or sent), data runs are read with ``read``."""
    end = offset + length
    pieces: ReadPieces = []
    pos = offset
    data_start = -1
    while pos < end:
        extents = backend.extents(pos, end - pos)
        if not extents:
            break
        for n, flags in extents:
            n = min(n, end - pos)
            if n <= 0:
                continue
            if flags & _ZERO_FLAG:
                if data_start >= 0:
                    pieces.append((data_start, pos - data_start, None))
                    data_start = -1
                pieces.append((pos, n, False))
            elif data_start < 0:
                data_start = pos
            pos += n
            if pos >= end:
                break
    if pos < end and data_start < 0:
        data_start = pos
    if data_start >= 0:
        pieces.append((data_start, end - data_start, None))
    out: ReadPieces = []
    for off, n, kind in pieces:
        out.append((off, n, read(off, n) if kind is None else None))
    return out


def block_status(
    backend: Backend, req: p.Request, contexts: Mapping[int, str]
) -> list[tuple[int, list[Any]]]:
    """``(context id, [(length, flags), ...])`` for each selected context, merged runs
    clipped to the request (one run with REQ_ONE)."""
    out = []
    for cid, name in contexts.items():
        if name == BASE_ALLOCATION:
            raw = backend.extents(req.offset, req.length)
        else:
            raw = backend.allocation_depth(req.offset, req.length)
        extents: list[tuple[int, int]] = []
        left = req.length
        for n, flags in raw:
            n = min(n, left)
            if n <= 0:
                continue
            if extents and extents[-1][1] == flags:
                extents[-1] = (extents[-1][0] + n, flags)
            else:
                extents.append((n, flags))
            left -= n
            if left == 0:
                break
        if not extents:
            raise OSError(5, "backend reported no extents")
        if req.flags & _REQ_ONE:
            extents = extents[:1]
        out.append((cid, extents))
    return out

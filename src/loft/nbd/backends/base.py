"""The backend interface: what the NBD server core needs from an export.

The server validates every request before it reaches a backend (range, read-only,
flags), so a backend method may assume its arguments are in range. A backend reports
failure by raising an ``OSError`` whose errno says how (:class:`BackendError`, or the
OSError a system call raised); a backend over some storage translates that storage's
exceptions itself. The core turns the errno into an NBD errno in one place
(:func:`loft.nbd.server.errno_for`) and keeps serving.

Lifecycle (per server, not per connection -- one backend object is shared by every
connection to its export, which is what makes CAN_MULTI_CONN honest)::

    create --> [is_resident?] --> pread / pwrite / zero / trim / cache / extents ...
                                  flush (any time) --> close (when the server stops)

Calls may come from the event loop thread (when :meth:`is_resident` says the range is
served without waiting on anything slow) or from the server's worker threads, so
implementations must be thread-safe.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from loft.nbd.protocol import DEFAULT_PREFERRED_BLOCK_SIZE, MAX_PAYLOAD, Errno

__all__ = ["Backend", "BackendError", "BlockSizes"]

#: Size of the zero buffer used by the default (emulated) :meth:`Backend.zero`.
_ZERO_CHUNK = 1 << 20
_ZEROES = bytes(_ZERO_CHUNK)

Buffer = bytes | bytearray | memoryview


class BackendError(OSError):
    """A backend failure with the errno it should produce on the wire (NBD's errno
    values are Linux's, so an :class:`~loft.nbd.protocol.Errno` is an errno)."""

    def __init__(self, message: str, errno: int = Errno.EIO) -> None:
        super().__init__(int(errno), message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class BlockSizes:
    """NBD_INFO_BLOCK_SIZE: minimum, preferred and maximum request sizes."""

    minimum: int = 1
    preferred: int = DEFAULT_PREFERRED_BLOCK_SIZE
    maximum: int = MAX_PAYLOAD


class Backend(abc.ABC):
    """One export's data. Subclasses implement :meth:`pread` and the abilities they
    have; each optional ability defaults to "absent" and the core adapts (the nbdkit
    habit: a missing ``can_*`` has a computed default)."""

    #: export size in bytes
    size: int
    #: True when the export must refuse writes (snapshots, read-only files)
    readonly: bool = False
    #: human-readable description for NBD_OPT_LIST / NBD_INFO_DESCRIPTION
    description: str = ""
    #: True when :meth:`pwrite` has copied the data once it returns (it keeps no
    #: reference), so the server may reuse the buffer for a later request
    copies_writes: bool = False
    #: Optional: ``(offset, length) -> bytes or None``, the range's bytes when they are
    #: at hand and None otherwise, for any range, never waiting or fetching. When set,
    #: the server answers a small READ with this one call on the event loop instead of
    #: :meth:`is_resident` then :meth:`pread_nowait` (each a chain of calls through a
    #: layered backend); on None or an error it reads on a worker thread as usual.
    read_resident: Callable[[int, int], Buffer | None] | None = None

    # --- capabilities -----------------------------------------------------------------

    def can_write(self) -> bool:
        """Writes are allowed (else the export is advertised READ_ONLY)."""
        return not self.readonly

    def can_flush(self) -> bool:
        """FLUSH and FUA mean something for this backend."""
        return self.can_write()

    def can_trim(self) -> bool:
        """TRIM frees space (without it TRIM is advertised off)."""
        return False

    def can_zero(self) -> bool:
        """WRITE_ZEROES is efficient; the default :meth:`zero` writes zero buffers."""
        return self.can_write()

    def can_fast_zero(self) -> bool:
        """WRITE_ZEROES with FAST_ZERO can ever succeed."""
        return False

    def can_cache(self) -> bool:
        """CACHE prefetches something (the default is a successful no-op)."""
        return False

    def can_multi_conn(self) -> bool:
        """A FLUSH on any connection makes writes from every connection durable."""
        return False

    def can_extents(self) -> bool:
        """:meth:`extents` reports real holes/zeroes (enables sparse READ replies)."""
        return False

    def can_allocation_depth(self) -> bool:
        """:meth:`allocation_depth` has something to say (``qemu:allocation-depth``)."""
        return False

    def block_sizes(self) -> BlockSizes:
        """Block size constraints advertised to clients."""
        return BlockSizes()

    def is_resident(self, offset: int, length: int) -> bool:
        """True when serving this range needs no slow fetch, so the call may run on the
        event loop thread. False sends the call to a worker thread."""
        return True

    # --- data ---------------------------------------------------------------------

    @abc.abstractmethod
    def pread(self, offset: int, length: int) -> Buffer:
        """Return exactly ``length`` bytes at ``offset``."""

    def pread_nowait(self, offset: int, length: int) -> Buffer | None:
        """Like :meth:`pread` but return None instead of waiting for slow storage (the
        server then repeats the read on a worker thread). Called on the event loop for
        ranges :meth:`is_resident` accepted; the default trusts that answer."""
        return self.pread(offset, length)

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua`` it is durable before returning."""
        raise BackendError("export is read-only", Errno.EPERM)

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        """Make the range read as zeroes. ``fast_only``: fail with ENOTSUP instead of
        doing anything slow. The default writes zero buffers (bounded memory)."""
        if fast_only:
            raise BackendError("zeroing is not fast on this export", Errno.ENOTSUP)
        end = offset + length
        while offset < end:
            n = min(_ZERO_CHUNK, end - offset)
            self.pwrite(offset, memoryview(_ZEROES)[:n])
            offset += n
        if fua:
            self.flush()

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        """Hint that the range is unused (reads after it may return anything)."""
        return None

    def flush(self) -> None:
        """Make every completed write durable."""
        return None

    def flush_on_close(self) -> None:
        """The flush a clean disconnect makes (many clients never send FLUSH): durable
        as :meth:`flush`, but the server's doing, not a client's. A backend that learns
        from its client's flushes (a volume's write-behind) does not count this one."""
        self.flush()

    def cache(self, offset: int, length: int) -> None:
        """Prefetch the range (a hint)."""
        return None

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``base:allocation`` as (length, flags) pairs from ``offset``, covering at
        least one byte; flags are HOLE=1, ZERO=2. The default says "all data"."""
        return [(length, 0)]

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, depth) pairs: 0 unallocated, 1 this volume, 2+ inherited."""
        return [(length, 1)]

    def close(self) -> None:
        """Release resources (called once when the server stops)."""
        return None

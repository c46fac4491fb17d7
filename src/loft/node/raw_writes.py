"""Which writes of a served volume are raw, and the rule that keeps them off mounts.

The host mounts a volume's filesystem (a workspace's root) only when loft formatted it
and the tenant wrote it through that filesystem; bytes written any other way may be a
filesystem forged to attack the host kernel's parser. So the disk service tells the two
kinds of writer apart by the listener they came through, the way it tells trusted from
untrusted clients:

- the **attachment socket** (``attach.sock``, root-only, beside ``nbd.sock``) is where
  the runtime's attach code connects the block device it mounts; writes through it are
  the mounted filesystem's own;
- every other listener (``nbd.sock``, TCP) writes **raw**: its first WRITE, WRITE_ZEROES
  or TRIM of a volume sets the catalog flag ``raw_written`` before it is applied.

One volume is never both at once (:class:`WriteOrigin`): while an attachment holds a
volume, raw writes to it are refused (EPERM); once it was written raw, the attachment
socket refuses it. The first of the two wins, until the service releases the volume.
Raw reads stay allowed: they change nothing the host parses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loft.blockstore.errors import ReadOnlyVolume, VolumeBusy
from loft.node.served import ServedVolume

__all__ = ["RawWrites", "WriteOrigin"]


class WriteOrigin:
    """Whether one served volume is held by an attachment or was written raw.

    ``raw_written``: the catalog's flag when the export was built. ``mark`` sets the
    flag in the catalog (called once, before the first raw write is applied)."""

    def __init__(self, name: str, raw_written: bool, mark: Callable[[], None]) -> None:
        self.name = name
        self._raw = raw_written
        self._attached = False
        self._mark = mark
        self._lock = threading.Lock()

    @property
    def raw_ok(self) -> bool:
        """True once raw writes are recorded (they need no catalog write any more)."""
        return self._raw

    def attach(self) -> None:
        """Hand the volume to an attachment; VolumeBusy when it was written raw."""
        with self._lock:
            if self._raw:
                raise VolumeBusy(
                    f"volume {self.name!r} was written raw; the host never mounts it",
                    hint="use it as a VM disk, or give the workspace a volume forked "
                    "from a template",
                )
            self._attached = True

    def raw_write(self) -> None:
        """Record a raw write before it is applied; ReadOnlyVolume (EPERM) while an
        attachment holds the volume."""
        if self._raw:
            return
        with self._lock:
            if self._attached:
                raise ReadOnlyVolume(
                    f"volume {self.name!r} is attached as a workspace's filesystem: "
                    "raw writes are refused",
                    hint=f"stop the workspace, then `loft disk release {self.name}`",
                )
            if not self._raw:
                self._mark()
                self._raw = True


class RawWrites:
    """A served volume as a raw writer sees it (nbdkit's filter habit: every call goes
    to the volume; mutations first through :meth:`WriteOrigin.raw_write`)."""

    readonly = False

    def __init__(self, served: ServedVolume, origin: WriteOrigin) -> None:
        self.served = served
        self.origin = origin
        self.name = served.name
        self.size = served.size
        self.extent_size = served.extent_size
        self.read = served.read
        self.read_nowait = served.read_nowait
        self.flush = served.flush
        self.cache = served.cache
        self.block_status = served.block_status
        self.allocation_depth = served.allocation_depth

    def is_resident(self, offset: int, length: int) -> bool:
        # Until the flag is recorded, every request goes to a worker thread: the first
        # raw write writes the catalog, which must not stall the event loop.
        return self.origin.raw_ok and self.served.is_resident(offset, length)

    def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        self.origin.raw_write()
        self.served.write(offset, data, fua)

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        self.origin.raw_write()
        self.served.zero(offset, length, fua=fua, may_trim=may_trim, fast_only=fast_only)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self.origin.raw_write()
        self.served.trim(offset, length, fua)

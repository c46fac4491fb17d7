"""A volume as the disk service serves it: opened (lease taken) on first use.

NBD's LIST and INFO look exports up without using them, so a volume is opened only when
a request first needs its data; until then :meth:`is_resident` is False, which sends that
first request to a worker thread, where opening (catalog + recovery) may block.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loft.blockstore import Volume, VolumeIOError


class ServedVolume:
    """A lazily opened read-write volume with the Volume data-path interface."""

    readonly = False

    def __init__(
        self,
        name: str,
        uid: str,
        size: int,
        extent_size: int,
        opener: Callable[[str], Volume],
    ) -> None:
        self.name = name
        self.uid = uid
        self.size = size
        self.extent_size = extent_size
        self._opener = opener
        self._vol: Volume | None = None
        self._lock = threading.Lock()

    @property
    def volume(self) -> Volume | None:
        """The open volume, or None while nobody has used it."""
        return self._vol

    def get(self) -> Volume:
        """The open volume, opening it (taking its lease) on first use. Refused when the
        name now belongs to another volume than the one this export was made for (a
        client must never see another volume's data under an old size)."""
        vol = self._vol
        if vol is None:
            with self._lock:
                if self._vol is None:
                    opened = self._opener(self.name)
                    if opened.record.uid != self.uid:
                        opened.close()
                        raise VolumeIOError(
                            f"volume {self.name!r} was removed and created again",
                            hint="connect again to use the new volume",
                        )
                    self._vol = opened
                vol = self._vol
        return vol

    def is_resident(self, offset: int, length: int) -> bool:
        vol = self._vol
        return vol is not None and vol.is_resident(offset, length)

    def read(self, offset: int, length: int) -> bytes:
        return self.get().read(offset, length)

    def read_nowait(self, offset: int, length: int) -> bytes | bytearray | memoryview | None:
        # None until opened: opening may block, which the event loop must not.
        vol = self._vol
        return None if vol is None else vol.read_nowait(offset, length)

    def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None:
        self.get().write(offset, data, fua)

    def zero(
        self,
        offset: int,
        length: int,
        *,
        fua: bool = False,
        may_trim: bool = True,
        fast_only: bool = False,
    ) -> None:
        self.get().zero(offset, length, fua=fua, may_trim=may_trim, fast_only=fast_only)

    def trim(self, offset: int, length: int, fua: bool = False) -> None:
        self.get().trim(offset, length, fua)

    def flush(self, *, closing: bool = False) -> None:
        if self._vol is not None:  # nothing was written if it was never opened
            self._vol.flush(closing=closing)

    def cache(self, offset: int, length: int) -> None:
        self.get().cache(offset, length)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        return self.get().block_status(offset, length)

    def allocation_depth(self, offset: int, length: int) -> list[tuple[int, int]]:
        return self.get().allocation_depth(offset, length)

    def close(self) -> None:
        """Commit, release the lease and close (if it was ever opened)."""
        with self._lock:
            vol, self._vol = self._vol, None
        if vol is not None:
            vol.close()

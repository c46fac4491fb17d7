"""The root of loft's exception hierarchy.

Every error a user can cause derives from :class:`LoftError` and carries a one-line
message plus an optional operator hint; the CLI prints ``message`` (and ``hint``) on
stderr and exits non-zero. Each package defines its own subclasses::

    LoftError
     +-- CatalogError            (loft.catalog)
     +-- BlockstoreError         (loft.blockstore)
     |    +-- ChunkStoreError, ChunkNotFound, VolumeNotFound, LeaseError, ...
     +-- EnvstoreError           (loft.envstore)
     +-- IsolationError          (loft.isolation)
     +-- NBDError                (loft.nbd)
"""

from __future__ import annotations


class LoftError(Exception):
    """An error with a message meant for people, and an optional hint on what to do."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

"""Validation of volume and snapshot names, sizes and ``NAME@SNAP`` references."""

from __future__ import annotations

import re

from loft.blockstore.errors import InvalidArgument

#: Names people choose are at most 128 characters; names loft derives from them (the
#: orphan ``NAME.orphan-<epoch>``) may be longer and must stay reachable.
MAX_NEW_NAME = 128
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,191}$")
MIN_EXTENT_SIZE = 64 << 10
MAX_EXTENT_SIZE = 64 << 20
#: Volumes are a whole number of 4 KiB blocks (what NBD clients and filesystems expect).
SIZE_ALIGNMENT = 4096
#: Names loft gives its own volumes (workspace templates) start with this; people's
#: volumes may not, so no one can stand in for one of loft's.
RESERVED_PREFIX = "loft-"


def check_name(name: str, what: str = "volume", *, new: bool = False) -> str:
    """Return ``name`` if it is a valid volume or snapshot name, else raise. ``new``: a
    name being created, held to :data:`MAX_NEW_NAME` characters."""
    if not _NAME.match(name) or (new and len(name) > MAX_NEW_NAME):
        raise InvalidArgument(
            f"bad {what} name {name!r}",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_not_reserved(name: str) -> str:
    """Return ``name`` unless it is one loft keeps for its own volumes."""
    if name.startswith(RESERVED_PREFIX):
        raise InvalidArgument(
            f"volume names starting with {RESERVED_PREFIX!r} are reserved for loft's own",
            hint="pick another name",
        )
    return name


def split_ref(ref: str) -> tuple[str, str | None]:
    """Split ``NAME`` or ``NAME@SNAP`` into its parts, validating both."""
    name, sep, snap = ref.partition("@")
    check_name(name)
    if sep:
        check_name(snap, "snapshot")
        return name, snap
    return name, None


def check_geometry(size: int, extent_size: int) -> None:
    """Raise unless the size and extent size make a valid volume."""
    if extent_size < MIN_EXTENT_SIZE or extent_size > MAX_EXTENT_SIZE:
        raise InvalidArgument(f"extent size {extent_size} must be between 64K and 64M")
    if extent_size & (extent_size - 1):
        raise InvalidArgument(f"extent size {extent_size} must be a power of two")
    if size <= 0 or size % SIZE_ALIGNMENT:
        raise InvalidArgument(f"volume size {size} must be a positive multiple of 4096")

"""Validation of volume and snapshot names, sizes and ``NAME@SNAP`` references."""

from __future__ import annotations

import re

from loft.blockstore.errors import InvalidArgument

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MIN_EXTENT_SIZE = 64 << 10
MAX_EXTENT_SIZE = 64 << 20
#: Volumes are a whole number of 4 KiB blocks (what NBD clients and filesystems expect).
SIZE_ALIGNMENT = 4096


def check_name(name: str, what: str = "volume") -> str:
    """Return ``name`` if it is a valid volume or snapshot name, else raise."""
    if not _NAME.match(name):
        raise InvalidArgument(
            f"bad {what} name {name!r}",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
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

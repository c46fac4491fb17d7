"""Sizes as people write them (16G, 4M, 512K, 1T, 4096) and back."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``16G``/``4MiB``/``4096`` into bytes (binary units); ValueError if malformed."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"bad size {text!r}: expected a number with an optional K/M/G/T suffix")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def format_size(n: int) -> str:
    """Render bytes compactly with binary units (``1.5G``, ``4M``, ``512``)."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _UNITS[unit]
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(n)

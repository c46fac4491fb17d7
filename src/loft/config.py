"""Settings read from the environment, with the embedded defaults `make run` relies on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loft.errors import LoftError

DEFAULT_DATA_DIR = Path("/var/lib/loft")
#: Clean working-copy extents kept on a node before the least recently used are evicted.
DEFAULT_CACHE_BYTES = 8 << 30
#: Compressed chunks kept in the node's shared chunk cache.
DEFAULT_CHUNK_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class Settings:
    """Where loft keeps its state; every field has an environment variable."""

    data_dir: Path
    chunks_url: str
    catalog_url: str
    cache_bytes: int
    chunk_cache_bytes: int
    #: free space the data disk keeps: a size, ``N%`` of the disk, or "" for the default
    #: (5 %, at most 2 GiB); see :mod:`loft.blockstore.reserve`
    disk_reserve: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``LOFT_DATA_DIR``, ``LOFT_CHUNKS``, ``LOFT_CATALOG_URL``,
        ``LOFT_CACHE_BYTES``, ``LOFT_CHUNK_CACHE_BYTES`` and ``LOFT_DISK_RESERVE``."""
        e = os.environ if env is None else env
        data_dir = Path(e.get("LOFT_DATA_DIR") or DEFAULT_DATA_DIR)
        chunks = e.get("LOFT_CHUNKS") or f"file://{data_dir / 'chunks'}"
        catalog = e.get("LOFT_CATALOG_URL") or f"sqlite:///{data_dir / 'catalog.db'}"
        return cls(
            data_dir=data_dir,
            chunks_url=chunks,
            catalog_url=catalog,
            cache_bytes=_int(e, "LOFT_CACHE_BYTES", DEFAULT_CACHE_BYTES),
            chunk_cache_bytes=_int(e, "LOFT_CHUNK_CACHE_BYTES", DEFAULT_CHUNK_CACHE_BYTES),
            disk_reserve=_reserve(e.get("LOFT_DISK_RESERVE", "")),
        )


def _int(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    from loft.units import parse_size

    return parse_size(raw)


class SettingsError(LoftError):
    """A setting's value cannot be understood."""


def _reserve(raw: str) -> str:
    """``LOFT_DISK_RESERVE`` checked: a size (``2G``), a share (``5%``) or empty."""
    from loft.units import parse_size

    spec = raw.strip()
    try:
        if spec.endswith("%"):
            if not 0 <= float(spec[:-1]) < 100:
                raise ValueError(spec)
        elif spec:
            parse_size(spec)
    except ValueError:
        raise SettingsError(
            f"LOFT_DISK_RESERVE={raw!r} is neither a size nor a share of the disk",
            hint="use a size (2G) or a percentage below 100 (5%)",
        ) from None
    return spec

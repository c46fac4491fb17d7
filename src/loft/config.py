"""Settings read from the environment, with the embedded defaults `make run` relies on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``LOFT_DATA_DIR``, ``LOFT_CHUNKS``, ``LOFT_CATALOG_URL``, ``LOFT_CACHE_BYTES``."""
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
        )


def _int(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    from loft.units import parse_size

    return parse_size(raw)

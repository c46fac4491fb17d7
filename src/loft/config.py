"""Settings read from the environment, with the embedded defaults `make run` relies on."""

from __future__ import annotations

import os
from collections.abc import Callable
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
    #: what this node commits to workspaces (admission, see :mod:`loft.node.admission`):
    #: memory as a size or ``N%`` of MemTotal, CPUs as a number or ``N%`` of the CPUs;
    #: "" for the defaults (100 % of memory, 400 % of the CPUs)
    node_memory: str = ""
    node_cpus: str = ""
    #: networks a ``nat`` workspace may never reach, beyond the private ranges and the
    #: catalog's and chunk store's hosts: the node and control APIs of a fleet
    #: (comma-separated, ``10.1.2.3,192.0.2.0/24``)
    egress_deny: str = ""
    #: the preview proxy's domain: ``PORT--WORKSPACEID.<domain>`` (``*.localhost`` is
    #: loopback in browsers, RFC 6761)
    preview_domain: str = "preview.localhost"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read ``LOFT_DATA_DIR``, ``LOFT_CHUNKS``, ``LOFT_CATALOG_URL``,
        ``LOFT_CACHE_BYTES``, ``LOFT_CHUNK_CACHE_BYTES``, ``LOFT_DISK_RESERVE``,
        ``LOFT_NODE_MEMORY``, ``LOFT_NODE_CPUS``, ``LOFT_EGRESS_DENY`` and
        ``LOFT_PREVIEW_DOMAIN``."""
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
            node_memory=_share_or(e, "LOFT_NODE_MEMORY", _size, "a size (16G)"),
            node_cpus=_share_or(e, "LOFT_NODE_CPUS", float, "a number of CPUs (8)"),
            egress_deny=_networks(e.get("LOFT_EGRESS_DENY", "")),
            preview_domain=_domain(e.get("LOFT_PREVIEW_DOMAIN") or "preview.localhost"),
        )


def _domain(text: str) -> str:
    labels = text.lower().rstrip(".").split(".")
    if not all(0 < len(x) <= 63 and x.replace("-", "").isalnum() and x.isascii() for x in labels):
        raise SettingsError(
            f"LOFT_PREVIEW_DOMAIN {text!r} is not a DNS name", hint="e.g. preview.example.com"
        )
    return ".".join(labels)


def _size(text: str) -> float:
    from loft.units import parse_size

    return parse_size(text)


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


def _share_or(
    env: os._Environ[str] | dict[str, str], name: str, parse: Callable[[str], float], what: str
) -> str:
    """A node capacity setting checked: ``N%`` (of the host's), an amount ``parse``
    reads as positive, or empty (the default)."""
    spec = env.get(name, "").strip()
    try:
        if spec and float(spec[:-1] if spec.endswith("%") else parse(spec)) <= 0:
            raise ValueError(spec)
    except ValueError:
        raise SettingsError(
            f"{name}={spec!r} is neither {what} nor a share of the host's (150%)",
            hint=f"use {what} or a positive percentage",
        ) from None
    return spec


def _networks(raw: str) -> str:
    """``LOFT_EGRESS_DENY`` checked: comma-separated IP networks or addresses."""
    import ipaddress

    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise SettingsError(
                f"LOFT_EGRESS_DENY: {part!r} is not an IP address or network",
                hint="use comma-separated addresses or networks (10.1.2.3,192.0.2.0/24)",
            ) from None
    return raw.strip()

"""Shared blockstore test helpers: a deployment (catalog + chunk store) with several nodes.

A :class:`Deployment` is one catalog and one chunk store; each *node* has its own data dir
(working copies, chunk cache) and its own :class:`Blockstore`, as separate machines would.
The catalog and the chunk store live outside every node's data dir, so a node can be "lost"
(its data dir wiped) and the volume reopened from the remote head alone.

``deployment`` is parametrised over every catalog x chunk store combination:

    sqlite-file   SQLite file catalog, FileObjectStore
    sqlite-s3     SQLite file catalog, S3ObjectStore on SeaweedFS
    pg-file       PostgreSQL (a fresh database), FileObjectStore
    pg-s3         PostgreSQL, S3ObjectStore on SeaweedFS

Tests that want one combination use :func:`make_deployment` through the ``deployment_of``
factory fixture.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from loft.blockstore import Blockstore
from loft.config import Settings

#: Small geometry: tests stay fast; 64 KiB is the smallest extent size.
KIB = 1 << 10
MIB = 1 << 20
EXTENT = 64 * KIB

COMBOS = ["sqlite-file", "sqlite-s3", "pg-file", "pg-s3"]


@dataclass
class Deployment:
    """A catalog and a chunk store shared by any number of nodes."""

    kind: str
    root: Path
    catalog_url: str
    chunks_url: str
    cache_bytes: int = 1 << 30
    chunk_cache_bytes: int = 64 * MIB
    _open: list[Blockstore] = field(default_factory=list)

    @property
    def catalog_kind(self) -> str:
        return self.kind.split("-")[0]

    @property
    def store_kind(self) -> str:
        return self.kind.split("-")[1]

    def data_dir(self, node: str = "a") -> Path:
        return self.root / f"node-{node}"

    def settings(self, node: str = "a") -> Settings:
        """Settings of one node (its own data dir; shared catalog and store)."""
        return Settings(
            data_dir=self.data_dir(node),
            chunks_url=self.chunks_url,
            catalog_url=self.catalog_url,
            cache_bytes=self.cache_bytes,
            chunk_cache_bytes=self.chunk_cache_bytes,
        )

    def env(self, node: str = "a") -> dict[str, str]:
        """The LOFT_* environment of one node (for the CLI and child processes)."""
        return {
            "LOFT_DATA_DIR": str(self.data_dir(node)),
            "LOFT_CHUNKS": self.chunks_url,
            "LOFT_CATALOG_URL": self.catalog_url,
        }

    def node(self, node: str = "a") -> Blockstore:
        """A Blockstore for ``node``; closed at the end of the test."""
        bs = Blockstore.from_settings(self.settings(node))
        self._open.append(bs)
        return bs

    def close_node(self, bs: Blockstore) -> None:
        if bs in self._open:
            self._open.remove(bs)
        bs.close()

    def lose_node(self, node: str) -> None:
        """Wipe a node's data dir (the machine is gone)."""
        shutil.rmtree(self.data_dir(node), ignore_errors=True)

    def close(self) -> None:
        while self._open:
            bs = self._open.pop()
            try:
                bs.close()
            except Exception:
                pass


def make_deployment(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> Deployment:
    """Build a deployment of ``kind`` (one of COMBOS), pulling in the service fixtures."""
    catalog, store = kind.split("-")
    root = tmp_path / kind
    root.mkdir(parents=True, exist_ok=True)
    if catalog == "sqlite":
        catalog_url = f"sqlite:///{root / 'catalog' / 'catalog.db'}"
    else:
        catalog_url = request.getfixturevalue("postgres_db_url")
    if store == "file":
        chunks_url = f"file://{root / 'store'}"
    else:
        chunks_url = request.getfixturevalue("s3_url")
    return Deployment(kind, root, catalog_url, chunks_url)

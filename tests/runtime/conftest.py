"""Runtime test fixtures: a node's Blockstore on a SQLite catalog and a file chunk
store, and the helpers of the interop and node tests (real processes, by PID)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))

from loft.blockstore import Blockstore
from loft.config import Settings

MIB = 1 << 20


def settings_under(root: Path) -> Settings:
    """A node's settings with everything under ``root`` (the layout of nodetool.Node)."""
    return Settings(
        data_dir=root / "node-a",
        chunks_url=f"file://{root / 'chunks'}",
        catalog_url=f"sqlite:///{root / 'catalog.db'}",
        cache_bytes=1 << 30,
        chunk_cache_bytes=64 * MIB,
    )


@pytest.fixture
def bs(tmp_path: Path) -> Iterator[Blockstore]:
    store = Blockstore.from_settings(settings_under(tmp_path))
    yield store
    store.close()

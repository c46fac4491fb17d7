"""Runtime test fixtures: a node's Blockstore on a SQLite catalog and a file chunk
store; attachtool.py has the served node (a real disk service) for attach tests. The
sandbox tests reuse the example environment and the escape probe of the envstore tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "node"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envstore"))

from attachtool import settings_under
from vm_support import Vms, vms

from loft.blockstore import Blockstore


@pytest.fixture
def bs(tmp_path: Path) -> Iterator[Blockstore]:
    store = Blockstore.from_settings(settings_under(tmp_path))
    yield store
    store.close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Vms]:
    """A served node and a VM runtime over it (``vm_support.vms``)."""
    with vms(tmp_path) as v:
        yield v

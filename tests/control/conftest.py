"""The ``control`` fixture: a running control plane per test, on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The end-to-end tests drive a whole node (tests/node's agenttool and what it uses).
_TESTS = Path(__file__).resolve().parents[1]
for _dir in ("node", "interop", "nbd", "envstore", "runtime"):
    sys.path.insert(0, str(_TESTS / _dir))

from controltool import Harness  # noqa: E402

_shared = itertools.count(1)


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh catalog of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    url: str = request.getfixturevalue("postgres_db_url")
    return url


@pytest.fixture
def control(catalog_url: str, tmp_path: Path) -> Iterator[Harness]:
    """A control plane serving on a loopback port and a Unix socket of this test."""
    h = Harness(catalog_url, tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_control(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    """One control plane for a whole module whose tests change nothing they share."""
    tmp = tmp_path_factory.mktemp("control")
    name = ""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'catalog.db'}"
    else:
        postgres = request.getfixturevalue("postgres")
        name = f"shared_{next(_shared)}"
        url = postgres.create_database(name)
    h = Harness(url, tmp)
    try:
        yield h
    finally:
        h.close()
        if name:
            request.getfixturevalue("postgres").drop_database(name)

"""Shared blockstore fixtures (see bsfixtures.py for the Deployment they build).

``deployment`` is parametrised over every catalog x chunk store combination (sqlite-file,
sqlite-s3, pg-file, pg-s3); ``deployment_of("pg-s3")`` builds one chosen combination;
``blockstore`` is node ``a`` of the parametrised deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bsfixtures import COMBOS, Deployment, make_deployment

from loft.blockstore import Blockstore


@pytest.fixture(params=COMBOS)
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """Every catalog x chunk store combination."""
    dep = make_deployment(request, tmp_path, request.param)
    try:
        yield dep
    finally:
        dep.close()


@pytest.fixture
def deployment_of(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Deployment]]:
    """A factory: ``deployment_of("pg-s3")`` builds that one combination."""
    made: list[Deployment] = []

    def make(kind: str) -> Deployment:
        dep = make_deployment(request, tmp_path, kind)
        made.append(dep)
        return dep

    try:
        yield make
    finally:
        for dep in made:
            dep.close()


@pytest.fixture
def blockstore(deployment: Deployment) -> Blockstore:
    """Node ``a`` of the parametrised deployment."""
    return deployment.node("a")

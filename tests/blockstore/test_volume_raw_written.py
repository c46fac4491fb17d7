"""The raw-written flag in the blockstore: an import sets it (before any byte lands),
forks inherit it, nothing clears it; a new volume, and writes through the blockstore
API (what loft itself writes), are not flagged."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from bsfixtures import EXTENT, Deployment, make_deployment

from loft.blockstore import Blockstore, InvalidArgument

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def bs(request: pytest.FixtureRequest, tmp_path: Path) -> Blockstore:
    dep: Deployment = make_deployment(request, tmp_path, "sqlite-file")
    request.addfinalizer(dep.close)
    return dep.node("a")


def test_volume_raw_written_by_import_and_inherited(bs: Blockstore) -> None:
    bs.create("v", size=16 * EXTENT, extent_size=EXTENT)
    assert not bs.get("v").raw_written and not bs.info("v").raw_written
    vol = bs.open("v")  # writes through the blockstore API are not raw: the caller's own
    vol.write(0, b"fs")
    vol.close()
    assert not bs.get("v").raw_written
    bs.import_image("v", io.BytesIO(b"\x01" * EXTENT), EXTENT)
    assert bs.get("v").raw_written and bs.info("v").raw_written
    bs.snapshot("v", "s")
    bs.fork("v@s", "child")
    assert bs.get("child").raw_written
    bs.restore("v", "s")  # sticky: a restore does not clear it
    assert bs.get("v").raw_written


def test_volume_raw_written_even_by_a_refused_import(bs: Blockstore) -> None:
    bs.create("v", size=4 * EXTENT, extent_size=EXTENT)
    with pytest.raises(InvalidArgument):  # too big: refused once the stream runs over
        bs.import_image("v", io.BytesIO(b"\x01" * (5 * EXTENT)), None)
    assert bs.get("v").raw_written

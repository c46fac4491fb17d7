"""``loft volume ...``: every command end to end through the real CLI (click's runner), on
the file chunk store and on SeaweedFS. Settings come from LOFT_* variables, as for users."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from loft.cli.group import main

KIB, MIB = 1 << 10, 1 << 20

pytestmark = pytest.mark.timeout(120)


class Loft:
    """Runs ``loft`` with a fixed environment and checks exit codes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, input: bytes | None = None, ok: bool = True) -> Result:
        result = self.runner.invoke(main, list(args), env=self.env, input=input)
        if ok:
            assert result.exit_code == 0, (
                f"loft {' '.join(args)} failed ({result.exit_code}): {result.stderr}"
                f"{result.exception!r}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "--json").stdout)


@pytest.fixture(params=["file", "s3"])
def loft(request: pytest.FixtureRequest, tmp_path: Path) -> Loft:
    env = {"LOFT_DATA_DIR": str(tmp_path / "data")}
    if request.param == "s3":
        env["LOFT_CHUNKS"] = request.getfixturevalue("s3_url")
    else:
        env["LOFT_CHUNKS"] = f"file://{tmp_path / 'chunks'}"
    return Loft(env)


def image(tmp_path: Path, name: str, size: int, seed: int) -> tuple[Path, bytes]:
    """A raw image: random data in the first and third 64 KiB blocks, zeros elsewhere."""
    data = bytearray(size)
    rng = random.Random(seed)
    data[0 : 64 * KIB] = rng.randbytes(64 * KIB)
    data[128 * KIB : 192 * KIB] = rng.randbytes(64 * KIB)
    path = tmp_path / name
    path.write_bytes(data)
    return path, bytes(data)


def test_volume_lifecycle(loft: Loft, tmp_path: Path) -> None:
    out = loft("volume", "create", "v", "--size", "1M", "--extent-size", "64K").stdout
    assert "created volume v" in out
    loft(
        "volume", "create", "r", "--size", "512K", "--extent-size", "64K", "--durability", "remote"
    )
    loft("volume", "create", "m", "--size", "1M", "--extent-size", "64K", "--max-dirty", "256K")
    assert loft.json("volume", "info", "m")["max_dirty"] == 256 * KIB
    loft("volume", "rm", "m")

    vols = {v["name"]: v for v in loft.json("volume", "ls")}
    assert set(vols) == {"r", "v"}
    assert vols["v"]["size"] == MIB and vols["v"]["extent_size"] == 64 * KIB
    assert vols["r"]["durability"] == "remote" and vols["v"]["durability"] == "local"
    assert "v" in loft("volume", "ls").stdout  # the table

    info = loft.json("volume", "info", "v")
    assert info["name"] == "v" and info["size"] == MIB and info["version"] == 0
    assert info["max_dirty"] == 1 << 30  # the default
    assert info["extents_total"] == 16 and info["extents_written"] == 0
    assert info["bytes_stored"] == 0 and info["parent"] is None
    assert "extents_total" in loft("volume", "info", "v").stdout

    # import FILE, export to FILE (sparse) and to stdout
    src, want = image(tmp_path, "a.img", 256 * KIB, 1)
    loft("volume", "import", "v", str(src))
    info = loft.json("volume", "info", "v")
    assert info["version"] >= 1 and info["extents_written"] == 2 and info["bytes_stored"] > 0
    out = tmp_path / "out.img"
    loft("volume", "export", "v", str(out))
    full = want + bytes(MIB - len(want))
    assert out.read_bytes() == full
    assert os.stat(out).st_blocks * 512 < MIB, "zero extents should be holes in the export"
    assert loft("volume", "export", "v", "-").stdout_bytes == full

    # snapshot, snapshots, import from stdin, export NAME@SNAP
    assert "snapshot v@s1" in loft("volume", "snapshot", "v", "s1").stdout
    snaps = loft.json("volume", "snapshots", "v")
    assert [s["name"] for s in snaps] == ["s1"] and snaps[0]["auto"] is False
    assert "s1" in loft("volume", "snapshots", "v").stdout
    _, second = image(tmp_path, "b.img", 192 * KIB, 2)
    loft("volume", "import", "v", "-", input=second)
    after = second + full[len(second) :]
    assert loft("volume", "export", "v", "-").stdout_bytes == after
    assert loft("volume", "export", "v@s1", "-").stdout_bytes == full
    snap_out = tmp_path / "snap.img"
    loft("volume", "export", "v@s1", str(snap_out))
    assert snap_out.read_bytes() == full

    # fork: constant time, the parent is named
    assert "forked v@s1 as w" in loft("volume", "fork", "v@s1", "w").stdout
    assert loft("volume", "export", "w", "-").stdout_bytes == full
    assert loft.json("volume", "info", "w")["parent"] == "v@s1"

    # restore: the replaced state is kept as an automatic snapshot
    out_text = loft("volume", "restore", "v", "s1").stdout
    assert "restored v to s1" in out_text
    assert loft("volume", "export", "v", "-").stdout_bytes == full
    autos = [s for s in loft.json("volume", "snapshots", "v") if s["auto"]]
    assert len(autos) == 1 and f"v@{autos[0]['name']}" in out_text
    assert loft("volume", "export", f"v@{autos[0]['name']}", "-").stdout_bytes == after

    # rm NAME@SNAP, rm NAME; the fork survives its parent's deletion and a GC
    assert "removed v@s1" in loft("volume", "rm", "v@s1").stdout
    assert [s["name"] for s in loft.json("volume", "snapshots", "v")] == [autos[0]["name"]]
    loft("volume", "rm", "v")
    loft("volume", "rm", "r")
    assert [v["name"] for v in loft.json("volume", "ls")] == ["w"]
    rep = loft.json("volume", "gc")
    assert rep["chunks_freed"] == 0  # everything is younger than the default grace
    rep = json.loads(loft("volume", "gc", "--grace", "0", "--max-fraction", "1", "--json").stdout)
    assert rep["chunks_freed"] >= 1 and rep["bytes_freed"] > 0
    assert set(rep) >= {"chunks_total", "chunks_freed", "bytes_freed", "bytes_total"}
    assert "freed" in loft("volume", "gc").stdout
    assert loft("volume", "export", "w", "-").stdout_bytes == full


def test_gc_dry_run_and_force(loft: Loft, tmp_path: Path) -> None:
    loft("volume", "create", "v", "--size", "1M", "--extent-size", "64K")
    src, _ = image(tmp_path, "a.img", 256 * KIB, 3)
    loft("volume", "import", "v", str(src))
    loft("volume", "import", "v", "-", input=bytes(256 * KIB))  # everything is garbage now
    dry = json.loads(
        loft("volume", "gc", "--grace", "0", "--max-fraction", "1", "--dry-run", "--json").stdout
    )
    assert dry["dry_run"] and dry["chunks_freed"] >= 2
    refused = loft("volume", "gc", "--grace", "0", "--max-fraction", "0.1", ok=False)
    assert refused.exit_code != 0 and "would delete" in refused.stderr
    forced = loft("volume", "gc", "--grace", "0", "--max-fraction", "0.1", "--force", "--json")
    assert "warning" in forced.stderr
    assert json.loads(forced.stdout)["chunks_freed"] == dry["chunks_freed"]
    assert loft("volume", "export", "v", "-").stdout_bytes == bytes(MIB)


def test_help_explains_every_command() -> None:
    runner = CliRunner()
    text = runner.invoke(main, ["volume", "--help"]).stdout
    for cmd in ("create", "ls", "info", "import", "export", "snapshot", "snapshots", "fork"):
        assert cmd in text
    for cmd in ("restore", "rm", "gc"):
        assert cmd in text
        assert runner.invoke(main, ["volume", cmd, "--help"]).exit_code == 0

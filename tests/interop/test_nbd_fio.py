"""fio's NBD engine writes with checksums and verifies every block through loft's server."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbdtool import NBDServerProcess, make_image, run

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize(
    ("rw", "bs", "iodepth"), [("randwrite", "4k", 32), ("write", "1M", 8), ("randrw", "64k", 16)]
)
def test_fio_verify_crc32c(tmp_path: Path, rw: str, bs: str, iodepth: int) -> None:
    img = make_image(tmp_path / "disk.img", 32 << 20)
    with NBDServerProcess(tmp_path, {"disk": img}) as server:
        out = run(
            [
                "fio",
                "--name=verify",
                "--ioengine=nbd",
                f"--uri={server.uri()}",
                f"--rw={rw}",
                f"--bs={bs}",
                f"--iodepth={iodepth}",
                "--size=32M",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",  # no state file left in the working directory
                "--output-format=json",
            ],
            timeout=150,
        ).stdout
    assert '"error" : 0' in out
    assert "verify" in out and "bad magic" not in out

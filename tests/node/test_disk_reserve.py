"""The data disk's free-space reserve, on a real disk service whose data dir is a small
tmpfs that fills up: growth (writes into new space, new chunks on that disk) gets ENOSPC
under the reserve while reads and overwrites go on, and everything resumes once space is
freed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import run
from nodetool import Node, fill_to, tmpfs

from loft.blockstore.reserve import CHECK_INTERVAL

pytestmark = [pytest.mark.serial, pytest.mark.timeout(180)]
MIB = 1 << 20
DISK = 192 * MIB
RESERVE = 64 * MIB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", DISK) as root:
        yield root


@pytest.fixture
def node(small_disk: Path) -> Iterator[Node]:
    n = Node(small_disk, "node-a")
    n.env["LOFT_DISK_RESERVE"] = f"{RESERVE // MIB}M"
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.kill()


def _io(node: Node, command: str) -> str:
    """qemu-io's account of one command ("" when it went through)."""
    proc = run(["qemu-io", "-f", "raw", "-t", "none", "-c", command, node.uri("v")], check=False)
    out = proc.stdout + proc.stderr
    return out if proc.returncode != 0 or "error" in out.lower() else ""


def test_disk_reserve_refuses_growth_only(node: Node, small_disk: Path) -> None:
    node.loft("volume", "create", "v", "--size", "128M", "--extent-size", "1M")
    node.serve()
    assert _io(node, "write -P 1 0 8M") == ""  # plenty of room: all goes
    assert _io(node, "read -P 0 64M 1M") == ""  # fetched: present (a zero hole) from now
    filler = fill_to(small_disk, RESERVE - 16 * MIB)

    refused = _io(node, "write -P 2 32M 64k")  # an extent not on the node
    assert "No space left on device" in refused, refused
    refused = _io(node, "write -P 2 64M 64k")  # a zero extent present as a hole
    assert "No space left on device" in refused, refused
    assert _io(node, "write -P 3 0 8M") == ""  # overwrites of what is allocated go on
    assert _io(node, "read -P 3 0 8M") == ""
    assert _io(node, "read -P 0 96M 1M") == ""  # reads go on, even fetching
    assert _io(node, "write -z 40M 1M") == ""  # zeroing whole extents frees, never grows
    # A commit would add chunks to this disk: refused, retried later, nothing lost.
    snap = node.loft("volume", "snapshot", "v", "s1", check=False)
    assert snap.returncode != 0 and "reserve" in snap.stderr, snap.stderr
    assert "disk.io_flusher" in node.log.read_text()  # the service is up and logging

    filler.unlink()
    time.sleep(2 * CHECK_INTERVAL)
    assert _io(node, "write -P 4 32M 64k") == ""
    node.loft("volume", "snapshot", "v", "s1")
    image = small_disk / "s1.img"
    node.loft("volume", "export", "v@s1", str(image))
    with open(image, "rb") as f:
        assert f.read(8 * MIB) == b"\x03" * 8 * MIB
        f.seek(32 * MIB)
        assert f.read(65536) == b"\x04" * 65536
    image.unlink()
    assert node.stop() == 0


def test_disk_reserve_setting_is_checked(node: Node) -> None:
    node.env["LOFT_DISK_RESERVE"] = "lots"
    proc = node.loft("volume", "ls", check=False)
    assert proc.returncode == 1 and "LOFT_DISK_RESERVE" in proc.stderr

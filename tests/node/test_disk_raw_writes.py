"""Raw writes through a real disk service: every listener but the attachment socket
flags the volume raw-written on its first write; the attachment socket's writes do not,
it refuses flagged volumes, and a volume it holds refuses raw writes and imports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import run
from nodetool import Node

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "node-a")
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.kill()


def _attach_uri(node: Node, export: str) -> str:
    return f"nbd+unix:///{export}?socket={node.sock.with_name('attach.sock')}"


def _raw(node: Node) -> dict[str, bool]:
    return {
        v["name"]: v["raw_written"] for v in json.loads(node.loft("volume", "ls", "--json").stdout)
    }


def _qemu_io(uri: str, command: str, check: bool = True) -> bool:
    proc = run(["qemu-io", "-f", "raw", "-c", command, uri], check=check)
    return proc.returncode == 0 and "error" not in (proc.stdout + proc.stderr).lower()


def test_disk_raw_writes_flag_the_volume(node: Node) -> None:
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    _qemu_io(node.uri("v"), "read 0 64k")  # reading changes nothing
    assert _raw(node) == {"v": False}
    _qemu_io(node.uri("v"), "write -P 1 0 64k")
    assert _raw(node) == {"v": True}
    # The attachment socket no longer offers it, and lists nothing at all.
    assert run(["nbdinfo", _attach_uri(node, "v")], check=False).returncode != 0
    listing = json.loads(run(["nbdinfo", "--list", "--json", _attach_uri(node, "")]).stdout)
    assert listing["exports"] == []
    node.loft("volume", "snapshot", "v", "s")
    node.loft("volume", "fork", "v@s", "child")
    assert _raw(node)["child"]
    assert node.stop() == 0


def test_disk_raw_writes_not_by_the_attachment(node: Node, tmp_path: Path) -> None:
    node.loft("volume", "create", "w", "--size", "16M")
    node.serve()
    _qemu_io(_attach_uri(node, "w"), "write -P 2 0 1M")
    assert _raw(node) == {"w": False}
    # Held by an attachment: raw writes and imports are refused, raw reads are not.
    assert not _qemu_io(node.uri("w"), "write -P 3 0 4k", check=False)
    assert not _qemu_io(node.uri("w"), "write -z 0 4k", check=False)
    image = tmp_path / "img"
    image.write_bytes(b"\x04" * 4096)
    refused = node.loft("volume", "import", "w", str(image), check=False)
    assert refused.returncode != 0 and "attached" in refused.stderr
    assert _qemu_io(node.uri("w"), "read -P 2 0 1M")
    assert _raw(node) == {"w": False}
    # Released, the volume may be written raw again, and then it is flagged.
    node.loft("disk", "release", "w")
    node.loft("volume", "import", "w", str(image))
    assert _raw(node) == {"w": True}
    assert node.stop() == 0

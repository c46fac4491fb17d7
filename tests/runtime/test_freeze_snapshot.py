"""Freezing an attached workspace filesystem: writers block until it is thawed, the
context manager always thaws, and a snapshot taken while frozen (through the disk
service, as the CLI and the node agent do) is a clean ext4 image."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attachtool import Served, served_node

from loft.runtime.attach import Attachment, attach, detach
from loft.runtime.freeze import freeze, frozen, thaw
from loft.runtime.template import create_workspace_volume

pytestmark = [pytest.mark.serial, pytest.mark.timeout(240)]

_WRITE_ONE = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"x" * 65536)
os.fsync(fd)
print("done", flush=True)
"""

_WRITE_MANY = """
import os, sys
root, i = sys.argv[1], 0
while True:
    p = f"{root}/d{i % 16}"
    os.makedirs(p, exist_ok=True)
    with open(f"{p}/f{i}", "wb") as f:
        f.write(os.urandom(4096 * (1 + i % 64)))
    if i % 10 == 0:
        os.unlink(f"{p}/f{i}")
    i += 1
"""


@pytest.fixture
def attached(tmp_path: Path) -> Iterator[tuple[Served, Attachment]]:
    with served_node(tmp_path) as s:
        create_workspace_volume(s.bs, "vol", size=1 << 30)
        att = attach(s.bs, "vol", "ws", socket=s.attach_socket)
        try:
            yield s, att
        finally:
            detach(att)


def test_freeze_snapshot_blocks_writers_until_thawed(
    attached: tuple[Served, Attachment],
) -> None:
    _, att = attached
    target = att.root / "home/runner/blocked"
    with frozen(att.root):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITE_ONE, str(target)], stdout=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert writer.poll() is None, "a write went through a frozen filesystem"
    assert writer.stdout is not None
    started = time.monotonic()
    assert writer.stdout.readline().strip() == "done"
    assert time.monotonic() - started < 5
    writer.wait(10)
    # The context manager thaws when its block fails, too.
    with pytest.raises(RuntimeError), frozen(att.root):
        raise RuntimeError("snapshot failed")
    target.write_bytes(b"thawed")
    freeze(att.root)
    with pytest.raises(OSError):  # already frozen
        freeze(att.root)
    thaw(att.root)
    with pytest.raises(OSError):  # not frozen
        thaw(att.root)


def test_freeze_snapshot_is_a_clean_filesystem(
    attached: tuple[Served, Attachment], tmp_path: Path
) -> None:
    served, att = attached
    busy = att.root / "home/runner/busy"
    busy.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", _WRITE_MANY, str(busy)])
    try:
        time.sleep(0.5)
        served.node.loft("volume", "snapshot", "vol", "unfrozen")
        for n in range(3):
            time.sleep(0.5)  # let the writer dirty the filesystem
            with frozen(att.root):
                served.node.loft("volume", "snapshot", "vol", f"s{n}")
    finally:
        writer.kill()
        writer.wait(10)

    def fsck(snapshot: str) -> str:
        image = tmp_path / f"{snapshot}.img"
        served.node.loft("volume", "export", f"vol@{snapshot}", str(image))
        proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        image.unlink()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    # A mounted ext4 caught as it is needs its journal replayed; a frozen one does not.
    assert "journal recovery" in fsck("unfrozen")
    for n in range(3):
        assert "recovery" not in fsck(f"s{n}")

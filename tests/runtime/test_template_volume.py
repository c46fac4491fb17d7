"""Workspace template volumes: built once per geometry with the workspace layout, never
flagged raw-written, forked in constant time whatever the size, forks sharing every
chunk; the filesystem is clean, owned as the layout says, with nothing left for the
kernel to initialise at mount time."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from loft.blockstore import Blockstore, InvalidArgument
from loft.runtime.rootfs_layout import RUNNER_HOME, RUNNER_UID
from loft.runtime.template import (
    TemplateError,
    create_workspace_volume,
    ensure_template,
    template_name,
)

pytestmark = pytest.mark.timeout(300)
GIB = 1 << 30
MIB = 1 << 20


def _tool(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=120).stdout


def test_template_volume_filesystem(bs: Blockstore, tmp_path: Path) -> None:
    ref = ensure_template(bs, GIB, 4 * MIB)
    assert ref == "loft-template-1g-4m@base" == f"{template_name(GIB, 4 * MIB)}@base"
    assert not bs.get("loft-template-1g-4m").raw_written
    assert ensure_template(bs, GIB, 4 * MIB) == ref  # built once
    image = tmp_path / "t.img"
    with open(image, "wb") as f:
        bs.export_image(ref, f)
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # Nothing for ext4lazyinit to do after a mount: every inode table is zeroed already.
    groups = re.findall(r"^Group \d+: .*$", _tool("dumpe2fs", str(image)), re.M)
    assert len(groups) == 8 and all("ITABLE_ZEROED" in g for g in groups), groups
    home = _tool("debugfs", "-R", f"stat {RUNNER_HOME}", str(image))
    assert f"User:  {RUNNER_UID}" in home and "Mode:  0755" in home
    assert "Mode:  01777" in _tool("debugfs", "-R", "stat /tmp", str(image))
    assert "usr/bin" in _tool("debugfs", "-R", "stat /bin", str(image))  # a usr-merge link
    passwd = _tool("debugfs", "-R", "cat /etc/passwd", str(image))
    assert passwd.startswith("root:x:0:0:") and f"runner:x:{RUNNER_UID}:" in passwd
    listing = _tool("debugfs", "-R", "ls -l /", str(image))
    for name in ("etc", "home", "nix", "opt", "root", "usr", "var", "tmp"):
        assert f" {name}" in listing, listing


def test_template_volume_fork_is_constant_time(bs: Blockstore) -> None:
    """Creating a workspace volume of 64 GiB costs what one of 1 GiB does."""
    seconds = {}
    for size in (GIB, 64 * GIB):
        ensure_template(bs, size)
        runs = []
        for i in range(3):
            started = time.perf_counter()
            create_workspace_volume(bs, f"ws-{size // GIB}-{i}", size=size)
            runs.append(time.perf_counter() - started)
        seconds[size] = min(runs)
    assert seconds[64 * GIB] < 0.25
    assert seconds[64 * GIB] < 4 * seconds[GIB] + 0.05, seconds


def test_template_volume_forks_share_chunks(bs: Blockstore) -> None:
    a = create_workspace_volume(bs, "a", size=GIB)
    stored = bs.ctx.store
    chunks = sum(1 for _ in stored.list("chunks/"))
    b = create_workspace_volume(bs, "b", size=GIB)
    template = bs.get(template_name(GIB, 4 * MIB))
    assert a.root == b.root == template.root  # every chunk of both is the template's
    assert not a.raw_written and not b.raw_written
    assert sum(1 for _ in stored.list("chunks/")) == chunks  # a fork stores nothing
    assert bs.info("a").parent == bs.info("b").parent == f"{template.name}@base"


def test_template_volume_names_are_loft_s_own(bs: Blockstore) -> None:
    with pytest.raises(InvalidArgument, match="reserved"):
        bs.create("loft-template-1g-4m", size=GIB)
    ensure_template(bs, GIB)
    with pytest.raises(InvalidArgument, match="reserved"):
        bs.fork("loft-template-1g-4m@base", "loft-mine")


def test_template_volume_written_raw_is_refused(bs: Blockstore) -> None:
    ensure_template(bs, GIB)
    bs.heads.mark_raw_written(bs.get("loft-template-1g-4m").id)
    with pytest.raises(TemplateError, match="written raw"):
        create_workspace_volume(bs, "ws", size=GIB)

"""Attaching workspace volumes for real: a template fork served by a real disk service,
nbdfuse + a direct-I/O loop device + ext4 mounted nosuid,nodev below the data dir;
detached in reverse, also after a failed step, and re-adopted by a restarted agent.
Everything a test attaches is detached by PID and path at its end (attachtool)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attachtool import Served, mount_options, served_node

from loft.procfs import mounts, proc_stat
from loft.runtime.attach import (
    AttachBusy,
    AttachError,
    Attachment,
    RawWrittenVolume,
    adopt,
    attach,
    attach_kernel_nbd,
    attached_workspaces,
    detach,
    workspace_dir,
)
from loft.runtime.template import create_workspace_volume

pytestmark = [pytest.mark.serial, pytest.mark.timeout(240)]
GIB = 1 << 30
NOBODY = 65534


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with served_node(tmp_path) as s:
        yield s


def _attach(s: Served, volume: str, workspace: str, **kw: object) -> Attachment:
    return attach(s.bs, volume, workspace, socket=s.attach_socket, **kw)  # type: ignore[arg-type]


def _nothing_left(s: Served, att: Attachment) -> None:
    assert str(att.root) not in mounts() and str(att.fuse_file.parent) not in mounts()
    stat_ = proc_stat(att.nbdfuse_pid)
    assert stat_ is None or stat_.start != att.nbdfuse_start or stat_.exited
    backing = [p.read_text().strip() for p in Path("/sys/block").glob("loop*/loop/backing_file")]
    assert str(att.fuse_file) not in backing
    assert att.workspace not in attached_workspaces(s.data_dir)


def test_attach_volume_mounts_a_template_fork(served: Served) -> None:
    create_workspace_volume(served.bs, "vol-a", size=GIB)
    create_workspace_volume(served.bs, "vol-b", size=GIB)
    a = _attach(served, "vol-a", "ws-a")
    b = _attach(served, "vol-b", "ws-b")
    try:
        assert a.root == workspace_dir(served.data_dir, "ws-a") / "root"
        assert mounts()[str(a.root)] == ("ext4", a.device)
        assert {"nosuid", "nodev"} <= mount_options(a.root)
        dev = Path(a.device).name
        assert Path(f"/sys/block/{dev}/loop/dio").read_text().strip() == "1"
        assert os.getsid(a.nbdfuse_pid) == a.nbdfuse_pid != os.getsid(0)  # own session
        # The path down to the root: search only; the record: root's alone.
        for d in (served.data_dir, served.data_dir / "workspaces", a.root.parent):
            assert stat.S_IMODE(d.stat().st_mode) == 0o711, d
        assert stat.S_IMODE((a.root.parent / "attach.json").stat().st_mode) == 0o600
        assert (a.root / "home/runner").stat().st_uid == 1000
        assert adopt(served.data_dir, "ws-a") == a  # whole: adopted as it is
        assert _attach(served, "vol-a", "ws-a") == a  # attaching again changes nothing
        # A device node written inside is no device on the host (nodev).
        os.mknod(a.root / "tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with pytest.raises(PermissionError):
            open(a.root / "tmp/null", "rb")  # noqa: SIM115
        # Forks of one template are two filesystems.
        (a.root / "home/runner/only-in-a").write_text("a")
        assert not (b.root / "home/runner/only-in-a").exists()
        with open(a.root / "home/runner/busy", "w"):
            with pytest.raises(AttachBusy):
                detach(a)  # in use: refused, nothing undone
            assert str(a.root) in mounts()
    finally:
        detach(a)
        detach(b)
    _nothing_left(served, a)
    _nothing_left(served, b)
    assert not served.bs.get("vol-a").raw_written  # its own filesystem's writes: not raw
    # The data went to the disk service: attached again, it is there.
    again = _attach(served, "vol-a", "ws-a")
    try:
        assert (again.root / "home/runner/only-in-a").read_text() == "a"
    finally:
        detach(again)


def test_attach_volume_refuses_a_raw_written_one(served: Served) -> None:
    create_workspace_volume(served.bs, "vol", size=GIB)
    served.bs.import_image("vol", io.BytesIO(b"\x00" * 4096), 4096)  # not even served yet
    with pytest.raises(RawWrittenVolume, match="written raw") as info:
        _attach(served, "vol", "ws")
    assert "forked from a template" in (info.value.hint or "")
    assert not workspace_dir(served.data_dir, "ws").exists()


def test_attach_volume_undoes_a_failed_step(served: Served) -> None:
    """An empty volume has no filesystem: the mount fails, and what came before it (the
    loop device, nbdfuse and its FUSE mount) is undone."""
    served.bs.create("empty", size=GIB)
    ws = workspace_dir(served.data_dir, "ws")
    with pytest.raises(AttachError, match="mount"):
        _attach(served, "empty", "ws")
    assert not ws.exists()
    backing = [p.read_text().strip() for p in Path("/sys/block").glob("loop*/loop/backing_file")]
    assert str(ws / "nbd/disk") not in backing
    assert not [p for p in mounts() if p.startswith(str(ws))]
    # nbdfuse finds no service there: a clear error, nothing left.
    with pytest.raises(AttachError, match="nbdfuse could not attach"):
        attach(served.bs, "empty", "ws2", socket=served.attach_socket.with_name("none.sock"))
    assert not workspace_dir(served.data_dir, "ws2").exists()


def test_attach_volume_outlives_the_agent(served: Served) -> None:
    """The agent that attached is killed: nbdfuse and the mount stay; a new agent
    adopts them; killing nbdfuse instead leaves a broken attachment that adopt tears
    down."""
    create_workspace_volume(served.bs, "vol", size=GIB)
    env = {**served.node.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from pathlib import Path\n"
            "from loft.blockstore import Blockstore\n"
            "from loft.runtime.attach import attach\n"
            "bs = Blockstore.from_settings()\n"
            "attach(bs, 'vol', 'ws', socket=Path(sys.argv[1]))\n"
            "print('up', flush=True)\n"
            "time.sleep(60)\n",
            str(served.attach_socket),
        ],
        env=env,
        stdout=subprocess.PIPE,
    )
    try:
        assert agent.stdout is not None and agent.stdout.readline().strip() == b"up"
    finally:
        agent.kill()
        agent.wait(10)
    att = adopt(served.data_dir, "ws")
    assert att is not None and str(att.root) in mounts()
    (att.root / "home/runner/still-here").write_text("yes")
    os.kill(att.nbdfuse_pid, 9)  # now nbdfuse dies: the attachment is broken
    deadline = time.monotonic() + 10
    while (st := proc_stat(att.nbdfuse_pid)) is not None and not st.exited:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert adopt(served.data_dir, "ws") is None
    _nothing_left(served, att)


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every account may traverse (pytest's own temp dirs are 0700, which
    would hide the data dir from a second account whatever its modes)."""
    d = Path(tempfile.mkdtemp(prefix="loft-attach-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_attach_volume_traverse_gid(open_parent: Path) -> None:
    """With a traverse group, only that group (runc's init as the workspace's mapped
    root) passes the workspace's directory; another local account does not."""
    with served_node(open_parent) as served:
        _traverse_gid(served)


def _traverse_gid(served: Served) -> None:
    create_workspace_volume(served.bs, "vol", size=GIB)
    gid = 524288
    att = _attach(served, "vol", "ws", traverse_gid=gid)
    try:
        ws = att.root.parent
        assert (ws.stat().st_gid, stat.S_IMODE(ws.stat().st_mode)) == (gid, 0o710)

        def stat_as(uid: int, group: int) -> int:
            cmd = ["setpriv", f"--reuid={uid}", f"--regid={group}", "--clear-groups"]
            return subprocess.run([*cmd, "stat", str(att.root / "etc/passwd")]).returncode

        assert stat_as(gid, gid) == 0
        assert stat_as(NOBODY, NOBODY) != 0
    finally:
        detach(att)


def test_attach_volume_kernel_nbd_is_a_stub() -> None:
    if Path("/dev/nbd0").exists():
        pytest.skip("this host has kernel NBD")
    with pytest.raises(AttachError, match="not supported on this host"):
        attach_kernel_nbd()

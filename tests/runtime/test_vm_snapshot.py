"""Memory snapshots of VM workspaces on real QEMU: restore where it was, live fork into
two VMs that then diverge (memory, disk, RNG), and damaged or foreign records refused.
At most two VMs run at once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from nodetool import Node
from vm_support import COUNTER, GUEST, Vms, needs_qemu, sh

from loft.blockstore import Blockstore
from loft.config import Settings
from loft.runtime.errors import WorkspaceError
from loft.runtime.interface import RuntimeSnapshot
from loft.runtime.phase import Phase
from loft.runtime.vm import NbdDisk, VmRuntime
from loft.runtime.vm_image import decode_record

pytestmark = [pytest.mark.serial, needs_qemu]


def _counter(node: Vms, ws: str) -> tuple[int, int]:
    """(pid, count) of the counter that started first in ``ws``."""
    pid = int(sh(node, ws, "cat /tmp/counter.pid"))
    return pid, int(sh(node, ws, "cat /tmp/count"))


def _start_counter(node: Vms, ws: str) -> int:
    out = sh(node, ws, f"setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 & echo $! "
                        "| tee /tmp/counter.pid")  # fmt: skip
    sh(node, ws, "sleep 0.5")
    return int(out)


@pytest.mark.timeout(180)
def test_vm_snapshot_restore_continues_from_the_snapshot(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    pid = _start_counter(node, spec.id)
    rt.freeze(spec.id)
    snap = rt.snapshot(spec.id)
    node.node.node.loft("volume", "snapshot", spec.id, "s1")
    rt.thaw(spec.id)
    sh(node, spec.id, "echo after > /root/after; sleep 1; sync")
    _, later = _counter(node, spec.id)

    rt.stop(spec.id)
    node.node.node.loft("volume", "restore", spec.id, "s1")
    rt.restore(spec, snap)
    got_pid, count = _counter(node, spec.id)
    assert got_pid == pid and count < later  # back at the snapshot, not where it stopped
    assert sh(node, spec.id, "cat /root/after 2>/dev/null || echo gone") == "gone\n"
    sh(node, spec.id, "sleep 0.5")
    assert _counter(node, spec.id)[1] > count  # and it counts on

    # a restored VM has its own RAM file: it suspends with device state only, and resumes
    rt.suspend(spec.id)
    assert (rt.dir(spec.id) / "state").stat().st_size < 1 << 20
    rt.resume(spec.id)
    assert _counter(node, spec.id)[0] == pid
    rt.stop(spec.id)


@pytest.mark.timeout(180)
def test_vm_live_fork_diverges(node: Vms) -> None:
    rt = node.runtime
    src = node.spec()
    rt.start(src)
    pid = _start_counter(node, src.id)
    rt.freeze(src.id)
    snap = rt.snapshot(src.id)
    node.node.node.loft("volume", "snapshot", src.id, "f")
    node.node.node.loft("volume", "fork", f"{src.id}@f", "fork1")
    rt.thaw(src.id)
    fork = node.spec(name="fork1", volume=False)

    with pytest.raises(WorkspaceError, match="fork it"):
        rt.restore(fork, snap)  # another workspace's snapshot, not asked as a fork
    rt.restore(fork, snap, fork=True)
    assert rt.status(src.id).phase is Phase.RUNNING  # the source kept running

    for ws in (src.id, fork.id):
        assert _counter(node, ws)[0] == pid
    sh(node, fork.id, "echo fork > /dev/shm/mem; echo fork > /root/disk; sync")
    sh(node, src.id, "echo src > /dev/shm/mem; echo src > /root/disk; sync")
    assert sh(node, fork.id, "cat /dev/shm/mem /root/disk") == "fork\nfork\n"
    assert sh(node, src.id, "cat /dev/shm/mem /root/disk") == "src\nsrc\n"
    rng = "head -c 32 /dev/urandom | md5sum"
    assert sh(node, src.id, rng) != sh(node, fork.id, rng)
    sh(node, fork.id, "sleep 0.3")
    assert _counter(node, fork.id)[1] > 0 and _counter(node, src.id)[1] > 0

    # the fork runs from a RAM file of its own: the image may go while it runs
    rt.remove_snapshot(snap)
    assert _counter(node, fork.id)[0] == pid
    rt.stop(fork.id)
    rt.stop(src.id)


@pytest.mark.timeout(120)
def test_vm_damaged_snapshot_records_are_refused(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    snap = rt.snapshot(spec.id)
    rt.stop(spec.id)
    bad = bytearray(snap.state)
    bad[20] ^= 1
    for record, match in [
        (bytes(bad), "damaged"),
        (snap.state[:-3], "damaged|not a VM"),
        (b"x" * 100, "not a VM"),
    ]:
        with pytest.raises(WorkspaceError, match=match):
            rt.restore(spec, RuntimeSnapshot("vm", 1, record))
    with pytest.raises(WorkspaceError, match="cannot restore"):
        rt.restore(spec, RuntimeSnapshot("sandbox"))
    # a damaged image: refused before QEMU starts
    image = rt.images / next(p.name for p in rt.images.iterdir())
    (image / "state").write_bytes(b"\0" * 100)
    with pytest.raises(WorkspaceError, match="missing or damaged"):
        rt.restore(spec, snap)
    assert rt.status(spec.id).phase is Phase.STOPPED


@pytest.mark.timeout(240)
def test_vm_cold_restore_on_another_node_from_the_chunk_store(node: Vms, tmp_path: Path) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    pid = _start_counter(node, spec.id)
    rt.freeze(spec.id)
    snap = rt.snapshot(spec.id)
    node.node.node.loft("volume", "snapshot", spec.id, "s1")
    count = 0
    volume = rt.upload_snapshot(snap)
    assert volume.startswith("loft-vm-")
    rt.stop(spec.id)
    node.node.node.stop()  # node A goes away: its disk service releases the volumes

    other = Node(tmp_path, "node-b")  # an empty data dir on the same store and catalog
    other.loft("volume", "restore", spec.id, "s1")
    other.serve()
    bs = Blockstore.from_settings(Settings.from_env(other.env))
    rt_b = VmRuntime(other.data_dir, lambda ws: NbdDisk(other.sock, ws), guest=GUEST, bs=bs)
    try:
        assert not rt_b.images.exists()
        rt_b.restore(spec, snap)
        b = Vms(rt_b, node.node, tmp_path)
        got_pid, got = _counter(b, spec.id)
        assert got_pid == pid and got >= count
        sh(b, spec.id, "sleep 0.5")
        assert _counter(b, spec.id)[1] > got
        # the image came whole from the chunk store: its state matches the record, and
        # the environment disk is the very one node A's guest had mounted, not rebuilt
        rec = decode_record(snap.state)
        assert (rt_b.images / rec.image / "state").is_file()
        fetched = rt_b.images / rec.image / "env.img"
        assert hashlib.sha256(fetched.read_bytes()).hexdigest() == rec.env_sha256
        assert not list(rt_b.envs.glob("*.img"))
    finally:
        for ws in list(rt_b._live):
            rt_b._teardown(ws)
        bs.close()
        other.kill()

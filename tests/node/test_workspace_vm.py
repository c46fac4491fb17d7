"""VM workspaces through the CLI on ``loft up``: ``loft new --runtime vm`` boots a QEMU
microVM whose disk the node's disk service serves; ``stop`` suspends it (its memory
uploaded to the chunk store) and ``start`` resumes it where it was (a counter keeps its
PID and counts on), here or on an empty data dir, ``stop --cold`` shuts
it down, ``snap`` keeps its memory and ``restore`` brings it back running from it,
``fork --live`` makes a running copy that then diverges, ``rm NAME@SNAP`` deletes a
snapshot's memory image (not while another image maps it), a restarted agent adopts a
running VM, and ``rm`` leaves no QEMU, directory, image, volume or row. Bad input is
one line with a hint.

Real QEMU (TCG), at most two VMs at once; every QEMU is killed by the pid its record
holds at the end (:meth:`AgentNode.cleanup`)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agenttool import AgentNode, agent_node, path_without
from envbuild_support import apt_state, example
from nbdtool import loft_command
from runtime_support import needs_runc
from vm_support import GUEST, needs_qemu

from loft.blockstore import Blockstore
from loft.client import Conflict
from loft.config import Settings
from loft.procfs import proc_stat
from loft.runtime import vm_cold, vm_store
from loft.runtime.vm_cold import EXTENT_SIZE
from loft.runtime.vm_image import decode_record, encode_record
from loft.runtime.vm_process import recorded_pid

pytestmark = [pytest.mark.serial, needs_qemu, needs_runc, pytest.mark.timeout(300)]

#: A counter in the guest (the workspace's Debian environment has no usleep).
#: Each count replaces the file whole (a reader of ``echo > file`` may catch it empty).
COUNTER = (
    "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; "
    "sleep 0.05; done"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    ex, apt = example(tmp_path_factory), apt_state(tmp_path_factory)
    with agent_node(ex, apt, LOFT_VM_GUEST=str(GUEST)) as n:
        n.up()
        yield n


def _vm_dir(node: AgentNode, name: str) -> Path:
    return node.data_dir / "runtime" / "vm" / node.json("info", name)["id"]


def _root(node: AgentNode, name: str, script: str) -> str:
    return node.sh(name, script, "--user", "root", "--cwd", "/")


def _start_counter(node: AgentNode, name: str) -> int:
    out = _root(node, name, f"setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 & echo $!")
    _root(node, name, "sleep 0.3")
    return int(out)


def _counter_gone(node: AgentNode, name: str, pid: int) -> bool:
    """The counter ``pid`` no longer runs in ``name``. By its command line, not by its pid
    alone: a fresh boot of the same guest may give that pid to another process."""
    cmdline = _root(node, name, f"tr '\\0' ' ' 2>/dev/null </proc/{pid}/cmdline; true")
    return "count.new" not in cmdline


def _count(node: AgentNode, name: str) -> int:
    return int(_root(node, name, "cat /tmp/count").strip() or 0)


def _counts_on(node: AgentNode, name: str, pid: int, at_least: int = 1) -> int:
    """The counter ``pid`` lives in ``name`` and counts on from ``at_least``; its count."""
    assert _root(node, name, f"kill -0 {pid} && echo alive").strip() == "alive"
    first = _count(node, name)
    assert first >= at_least
    _root(node, name, "sleep 0.4")
    assert _count(node, name) > first
    return first


def _refused(node: AgentNode, *args: str, says: str) -> str:
    r = node.loft(*args, check=False)
    assert r.returncode == 1, (args, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines[0].startswith("loft: error: ") and says in lines[0], (args, r.stderr)
    assert len(lines) <= 2 and all(line.startswith("loft: ") for line in lines), r.stderr
    return r.stderr


def _qemu(node: AgentNode, name: str) -> int | None:
    return recorded_pid(_vm_dir(node, name))


def _uploads(node: AgentNode) -> list[str]:
    """The suspend images in the chunk store (volumes of their own)."""
    return [r[2] for r in node.rows("volumes") if r[2].startswith("loft-vm-suspend-")]


def _uploaded(node: AgentNode) -> list[dict[str, Any]]:
    """What the agent logged of each suspend image it uploaded, in order."""
    lines = node.log.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if '"workspace.suspend_uploaded"' in line]


def _memories(node: AgentNode, name: str) -> dict[str, bytes]:
    """Snapshot name -> memory image record, of workspace ``name``'s snapshots."""
    ws_id = node.json("info", name)["id"]
    return {r[1]: r[4] for r in node.rows("workspace_snapshots") if r[0] == ws_id and r[4]}


def _image_mapping(images: Path, image: str) -> Path:
    """An image whose record maps ``image``'s RAM (what an older loft wrote for a VM it
    had restored onto that image): the directory."""
    rec = decode_record((images / image / "record").read_bytes())
    other = secrets.token_hex(16)
    (images / other).mkdir(mode=0o700)
    record = encode_record(dataclasses.replace(rec, image=other, ram_from=image))
    (images / other / "record").write_bytes(record)
    return images / other


def _fresh_data_dir(node: AgentNode) -> None:
    """``loft up`` stopped, its data dir replaced by an empty one (as a workspace moved
    to another node finds it: only the catalog and the chunk store), ``loft up`` again."""
    assert node.stop() == 0
    envstore = os.readlink(node.data_dir / "envstore")  # the session's, shared
    node.data_dir.rename(node.data_dir.with_name(f"old-{time.monotonic_ns()}"))
    node.data_dir.mkdir(mode=0o700)
    (node.data_dir / "envstore").symlink_to(envstore)
    node.up()


def test_workspace_vm_new_exec_suspend_resume_cold(node: AgentNode) -> None:
    t0 = time.monotonic()
    ws = node.new("vm1", "--runtime", "vm", "--net", "nat")  # with a NIC through every flow
    assert node.sh("vm1", "echo hi") == "hi\n"
    print(f"new --runtime vm -> first exec output: {time.monotonic() - t0:.2f} s")
    assert ws["runtime"] == "vm" and ws["state"] == "running"
    assert node.json("info", "vm1")["runtime"] == "vm"
    assert [(w["name"], w["runtime"]) for w in node.json("ls")] == [("vm1", "vm")]
    assert "RUNTI" in node.loft("ls").stdout
    assert node.sh("vm1", "id -u; pwd") == "1000\n/home/runner\n"
    assert node.sh("vm1", "ls /sys/class/net").split() == ["eth0", "lo"]
    qemu = _qemu(node, "vm1")
    assert qemu is not None and node.node_view("vm1")["pid"] == qemu
    # the host never mounts what the tenant writes raw: QEMU is the NBD client
    left = node.leftovers()
    assert (left["mounts"], left["loops"], left["nbdfuse"]) == ([], [], []), left
    assert left["workspace_dirs"] == [] and left["containers"] == [], left
    pid = _start_counter(node, "vm1")
    assert not _counter_gone(node, "vm1", pid)

    # stop suspends (QEMU gone, the memory kept); start resumes where it was
    t0 = time.monotonic()
    assert node.loft("stop", "vm1").stdout == "suspended vm1\n"
    stopped = time.monotonic() - t0
    assert node.json("info", "vm1")["state"] == "suspended"
    assert [w["state"] for w in node.json("ls")] == ["suspended"]
    wide = subprocess.run([*loft_command(), "ls"], env={**node.env, "COLUMNS": "200"},
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "suspended" in wide.stdout and "suspended" in node.loft("info", "vm1").stdout
    assert _uploads(node) == [f"loft-vm-suspend-{ws['id']}"]
    assert proc_stat(qemu) is None or proc_stat(qemu).exited  # type: ignore[union-attr]
    assert (_vm_dir(node, "vm1") / "suspend.json").is_file()
    _refused(node, "exec", "vm1", "--", "true", says="exec needs it running")
    t0 = time.monotonic()
    node.loft("start", "vm1")
    assert node.sh("vm1", "echo back") == "back\n"
    print(f"stop (suspend): {stopped:.2f} s; start (resume) -> exec: {time.monotonic() - t0:.2f} s")
    before = _counts_on(node, "vm1", pid)

    # twice in a row, and the counter goes on from where it was
    node.loft("stop", "vm1")
    node.loft("start", "vm1")
    _counts_on(node, "vm1", pid, before)

    # --cold shuts it down: a fresh boot, the counter gone, the disk kept, no image left
    _root(node, "vm1", "echo kept > /root/file && sync")
    assert node.loft("stop", "vm1", "--cold").stdout == "stopped vm1\n"
    assert not _vm_dir(node, "vm1").exists() and _uploads(node) == []
    assert node.json("info", "vm1")["state"] == "stopped"
    node.loft("start", "vm1")
    assert _root(node, "vm1", "cat /root/file") == "kept\n"
    assert _counter_gone(node, "vm1", pid)
    # --cold of a suspended VM drops its memory
    node.loft("stop", "vm1")
    node.loft("stop", "vm1")  # a second stop keeps the memory
    assert node.json("info", "vm1")["state"] == "suspended"
    node.loft("stop", "vm1", "--cold")
    assert not _vm_dir(node, "vm1").exists() and _uploads(node) == []


def test_workspace_vm_snapshot_restore_and_live_fork(node: AgentNode) -> None:
    if node.loft("info", "vm1", check=False).returncode != 0:
        node.new("vm1", "--runtime", "vm", "--net", "nat")
    if node.json("info", "vm1")["state"] != "running":
        node.loft("start", "vm1")
    pid = _start_counter(node, "vm1")
    _root(node, "vm1", "echo before > /root/disk && sync")
    snap = node.json("snap", "vm1", "s1")
    at_snap = _count(node, "vm1")
    assert snap["name"] == "s1"
    _root(node, "vm1", "sleep 1; echo after > /root/disk; sync")
    later = _count(node, "vm1")
    assert later > at_snap + 5

    # restore: back to the snapshot's memory and disk, and it counts on from there
    node.loft("restore", "vm1", "s1")
    assert node.json("info", "vm1")["state"] == "running"
    assert _root(node, "vm1", "cat /root/disk") == "before\n"
    back = _counts_on(node, "vm1", pid)
    assert at_snap <= back < later

    # live fork: the same processes in both, then apart; a MAC and machine-id of its own
    _root(node, "vm1", "echo 0123456789abcdef0123456789abcdef > /etc/machine-id")
    t0 = time.monotonic()
    node.loft("fork", "vm1", "vm2", "--live", "--new-machine-id")
    assert node.sh("vm2", "echo forked") == "forked\n"
    fork = node.json("info", "vm2")
    print(f"fork --live -> first exec output in the fork: {time.monotonic() - t0:.2f} s")
    assert fork["runtime"] == "vm" and fork["state"] == "running"
    _counts_on(node, "vm2", pid)
    _counts_on(node, "vm1", pid)
    ident = "cat /sys/class/net/eth0/address /etc/machine-id"
    mac1, id1 = _root(node, "vm1", ident).split()
    mac2, id2 = _root(node, "vm2", ident).split()
    assert mac1 != mac2 and id1 == "0123456789abcdef0123456789abcdef" and id2 != id1
    _root(node, "vm2", f"kill {pid}; echo mine > /root/disk; echo m > /tmp/mem; sync")
    assert _root(node, "vm1", "cat /root/disk") == "before\n"
    assert _root(node, "vm1", "cat /tmp/mem 2>/dev/null || echo none") == "none\n"
    _counts_on(node, "vm1", pid)
    assert _qemu(node, "vm1") != _qemu(node, "vm2")

    # rm vm1@s1 deletes its memory image here and in the chunk store (the VM and the
    # live fork each run on their own RAM); refused with 409, nothing deleted, while
    # another image maps it
    rec = decode_record(_memories(node, "vm1")["s1"])
    image, images = rec.image, node.data_dir / "runtime" / "vm-images"
    assert (images / image / "state").is_file()
    bs = Blockstore.from_settings(Settings.from_env(node.env))
    try:
        uploaded = vm_cold.upload(bs, images, rec)  # as VmRuntime.upload_snapshot does
    finally:
        bs.close()
    assert uploaded in [r[2] for r in node.rows("volumes")]
    mapper = _image_mapping(images, image)
    with node.admin_client() as admin, pytest.raises(Conflict, match="in use by image"):
        admin.delete_snapshot("vm1", "s1")
    assert "s1" in [s["name"] for s in node.json("snaps", "vm1")]
    assert (images / image / "state").is_file() and "s1" in _memories(node, "vm1")
    assert uploaded in [r[2] for r in node.rows("volumes")]
    shutil.rmtree(mapper)
    assert node.loft("rm", "vm1@s1").stdout == "removed vm1@s1\n"
    assert not (images / image).exists() and "s1" not in _memories(node, "vm1")
    assert "s1" not in [s["name"] for s in node.json("snaps", "vm1")]
    assert uploaded not in [r[2] for r in node.rows("volumes")]
    _counts_on(node, "vm1", pid)

    # the fork of a sandbox cannot be live
    node.new("sb", "--stopped")
    _refused(
        node, "fork", "sb", "sb2", "--live", says="--live forks a running VM; 'sb' is a sandbox"
    )
    node.loft("rm", "sb")

    # rm leaves nothing: no QEMU, directory, memory image, volume or row
    qemus = [_qemu(node, "vm1"), _qemu(node, "vm2")]
    ids = [node.json("info", n)["id"] for n in ("vm2", "vm1")]
    # the source first: its images go at once, its live fork running on its own RAM copy
    node.loft("rm", "vm1")
    assert not any(images.glob("*")) and node.sh("vm2", "echo still") == "still\n"
    node.loft("rm", "vm2")
    for q in qemus:
        assert q is not None
        assert proc_stat(q) is None or proc_stat(q).exited  # type: ignore[union-attr]
    vm_root = node.data_dir / "runtime"
    assert not any((vm_root / "vm").glob("*")), list((vm_root / "vm").glob("*"))
    assert not any((vm_root / "vm-images").glob("*")), list((vm_root / "vm-images").glob("*"))
    left = node.leftovers()
    assert left["volumes"] == [] and left["workspaces"] == [], left
    assert left["runtime_rows"] == [] and left["profiles"] == [], left
    assert all(not (node.data_dir / "run-logs" / f"{i}.log").exists() for i in ids)


def test_workspace_vm_agent_restart_adopts_a_running_vm(node: AgentNode) -> None:
    node.new("vm3", "--runtime", "vm")
    pid = _start_counter(node, "vm3")
    qemu = _qemu(node, "vm3")
    agent = node.pid_of("agent")
    os.kill(agent, 9)  # loft up starts a new agent, which adopts what runs
    deadline = time.monotonic() + 60
    while node.pid_of("agent") == agent or not node.agent_answers():
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.2)
    assert node.json("info", "vm3")["state"] == "running"
    assert _qemu(node, "vm3") == qemu
    _counts_on(node, "vm3", pid)
    node.loft("rm", "vm3")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["new", "x", "--runtime", "vm", "--memory", "64M"], "too little for a VM"),
        (["new", "x", "--runtime", "jail"], "bad --runtime 'jail'"),
        (["fork", "nope", "x", "--live"], "no workspace named 'nope'"),
        (["fork", "nope", "x", "--live", "--stopped"], "--live and --stopped"),
        (["fork", "nope", "x", "--new-machine-id"], "--new-machine-id is for a live fork"),
    ],
)
def test_workspace_vm_bad_input(node: AgentNode, args: list[str], says: str) -> None:
    _refused(node, *args, says=says)
    assert "x" not in [w["name"] for w in node.json("ls")]


def test_workspace_vm_a_fork_live_of_a_stopped_vm(node: AgentNode) -> None:
    node.new("vm4", "--runtime", "vm", "--stopped")
    _refused(node, "fork", "vm4", "x", "--live", says="'vm4' is not running")
    node.loft("rm", "vm4")
    assert not any((node.data_dir / "runtime" / "vm").glob("*"))


@pytest.mark.parametrize("missing", ["qemu", "guest"])
def test_workspace_vm_missing_runtime(
    tmp_path_factory: pytest.TempPathFactory, missing: str
) -> None:
    """Without QEMU or the guest the agent still serves; a VM's new says what to install."""
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        env = {**n.env, "LOFT_VM_GUEST": str(GUEST)}
        if missing == "qemu":
            env["PATH"] = path_without("qemu-system-x86_64", n.root / "bin")
            says, hint = "qemu-system-x86_64 is not installed", "qemu-system-x86"
        else:
            env["LOFT_VM_GUEST"] = str(n.root / "no-guest")
            says, hint = "the VM guest is not built", "make guest"
        n.serve(agent_env=env)
        err = _refused(n, "new", "x", "--runtime", "vm", says=f"the vm runtime is missing: {says}")
        assert hint in err
        assert n.json("ls") == []
        left = n.leftovers()
        assert all(not v for v in left.values()), left


def test_workspace_vm_resumes_from_the_chunk_store_on_an_empty_data_dir(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A stop uploads the memory (a second stop only what changed); on an empty data dir
    the start resumes from the chunk store alone; a damaged image, or one whose state
    does not load, boots from the disk; a drain uploads a running VM, which the next
    agent resumes."""
    ex, apt = example(tmp_path_factory), apt_state(tmp_path_factory)
    with agent_node(ex, apt, LOFT_VM_GUEST=str(GUEST)) as n:
        n.up()
        ws = n.new("vm5", "--runtime", "vm")
        pid = _start_counter(n, "vm5")
        _root(n, "vm5", "head -c 33554432 /dev/urandom > /dev/shm/fill")
        _root(n, "vm5", "echo disk > /root/file && sync")
        n.loft("stop", "vm5")
        n.loft("start", "vm5")
        _root(n, "vm5", "head -c 1048576 /dev/urandom > /dev/shm/more")
        n.loft("stop", "vm5")
        first, second = _uploaded(n)
        assert first["stored_bytes"] > 32 << 20, first
        assert second["stored_bytes"] < first["stored_bytes"] / 4, (first, second)
        assert second["extents_written"] < first["extents_written"] / 2, (first, second)

        _fresh_data_dir(n)
        assert not _vm_dir(n, "vm5").exists()
        assert n.json("info", "vm5")["state"] == "suspended"
        t0 = time.monotonic()
        n.loft("start", "vm5")
        assert n.sh("vm5", "echo back") == "back\n"
        print(f"start from the chunk store -> exec: {time.monotonic() - t0:.2f} s")
        _counts_on(n, "vm5", pid)
        assert _root(n, "vm5", "cat /root/file; wc -c < /dev/shm/more") == "disk\n1048576\n"

        # an image damaged in the chunk store: refused, the VM boots from its disk
        n.loft("stop", "vm5")
        assert n.json("info", "vm5")["state"] == "suspended"
        bs = Blockstore.from_settings(Settings.from_env(n.env))
        try:
            vol = bs.open(f"loft-vm-suspend-{ws['id']}")
            try:
                vol.write(EXTENT_SIZE + 8192, b"\xff" * 64)  # its RAM's first extent
                vol.commit()
            finally:
                vol.close()
        finally:
            bs.close()
        _fresh_data_dir(n)
        n.loft("start", "vm5")
        assert _counter_gone(n, "vm5", pid)
        assert _root(n, "vm5", "cat /root/file") == "disk\n"
        assert n.json("info", "vm5")["state"] == "running"
        assert "memory image refused" in n.loft("logs", "vm5").stdout
        assert _uploads(n) == []

        # a state that checks out but QEMU cannot load: refused at the resume, it boots
        pid = _start_counter(n, "vm5")
        n.loft("stop", "vm5")
        bad = n.root / "bad-state"
        bad.write_bytes(os.urandom(4096))
        bs = Blockstore.from_settings(Settings.from_env(n.env))
        try:
            root = bs.get(n.node_view("vm5")["volume"]).root.hex()
            vm_store.upload(bs, ws["id"], _vm_dir(n, "vm5") / "ram", bad, root)
        finally:
            bs.close()
        _fresh_data_dir(n)
        n.loft("start", "vm5")
        assert _counter_gone(n, "vm5", pid)
        assert "memory image refused (loading the VM's state failed" in n.loft("logs", "vm5").stdout
        left = [p.name for p in (n.data_dir / "runtime" / "vm").iterdir()]
        assert left == [ws["id"]] and _qemu(n, "vm5") is not None

        # a drain (loft up's Ctrl-C) suspends and uploads a running VM; the next node's
        # reconciler resumes it from the chunk store
        pid = _start_counter(n, "vm5")
        _fresh_data_dir(n)
        deadline = time.monotonic() + 60
        while n.json("info", "vm5")["state"] != "running":
            assert time.monotonic() < deadline, n.tail()
            time.sleep(0.5)
        _counts_on(n, "vm5", pid)
        n.loft("stop", "vm5")
        assert _uploads(n) != []
        n.loft("rm", "vm5")
        assert _uploads(n) == []

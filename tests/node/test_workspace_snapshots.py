"""Snapshots, restores and forks of workspaces through the CLI and the agent (real runc,
nbdfuse, loop devices, ext4): snapshot, change, restore brings the files back and is
undoable; a fork of a running workspace is independent both ways; the environments
workspaces and their snapshots use are roots for ``loft env gc``; removing one snapshot
leaves the forks made from it whole and its environment no root through it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from runtime_support import needs_runc

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]

#: A file in home and in each persistent system directory.
FILES = ("/home/runner/f", "/etc/f", "/var/lib/f", "/usr/local/bin/f", "/opt/f", "/root/f")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


def _write(node: AgentNode, name: str, text: str) -> None:
    node.sh(name, "; ".join(f"echo {text} > {f}" for f in FILES) + "; sync", "--user", "root")


def _read(node: AgentNode, name: str) -> list[str]:
    out = node.sh(name, f"cat {' '.join(FILES)} 2>/dev/null; true", "--user", "root")
    return out.split()


def test_workspace_snapshots_restore_brings_files_back_and_is_undoable(node: AgentNode) -> None:
    node.new("snappy")
    _write(node, "snappy", "before")
    taken = node.json("snap", "snappy", "s1")
    assert taken["name"] == "s1" and taken["pause_ms"] is not None  # it ran: writers paused
    _write(node, "snappy", "after")
    node.sh("snappy", "echo new > ~/only-after")
    pid = node.node_view("snappy")["pid"]

    out = node.loft("restore", "snappy", "s1").stdout
    undo = out.rsplit("loft restore snappy ", 1)[1].strip()
    info = node.node_view("snappy")
    assert info["phase"] == "running" and info["pid"] != pid  # stopped and started again
    assert _read(node, "snappy") == ["before"] * len(FILES)
    assert node.sh("snappy", "test -e ~/only-after && echo there || echo gone").strip() == "gone"
    snaps = {s["name"]: s for s in node.json("snaps", "snappy")}
    assert snaps[undo]["auto"] and not snaps["s1"]["auto"]

    node.loft("restore", "snappy", undo)  # undo the restore
    assert _read(node, "snappy") == ["after"] * len(FILES)
    assert node.sh("snappy", "cat ~/only-after").strip() == "new"
    # A stopped workspace restores too, and stays stopped.
    node.loft("stop", "snappy")
    node.loft("restore", "snappy", "s1")
    assert node.json("info", "snappy")["state"] == "stopped"
    node.loft("start", "snappy")
    assert _read(node, "snappy") == ["before"] * len(FILES)
    node.loft("rm", "snappy")


def test_workspace_snapshots_fork_of_a_running_workspace_is_independent(node: AgentNode) -> None:
    node.new("parent")
    parent = node.node_view("parent")
    _write(node, "parent", "shared")
    # a writer keeps writing while the fork snapshots the running parent
    node.sh("parent", "(while :; do date >> ~/log; sleep 0.01; done >/dev/null 2>&1 &)")
    node.loft("fork", "parent", "child")
    child = node.node_view("child")
    assert child["phase"] == "running" and child["id"] != parent["id"]
    assert child["ids_base"] != parent["ids_base"] and child["volume"] != parent["volume"]
    assert _read(node, "child") == ["shared"] * len(FILES)
    assert node.sh("child", "test -s ~/log && echo logged").strip() == "logged"
    # both ways: a write on one side never shows on the other
    _write(node, "parent", "parent-only")
    assert _read(node, "child") == ["shared"] * len(FILES)
    _write(node, "child", "child-only")
    assert _read(node, "parent") == ["parent-only"] * len(FILES)
    node.sh("child", "rm -f ~/log")
    assert node.sh("parent", "test -s ~/log && echo logged").strip() == "logged"
    # and from a named snapshot: its state then, not the parent's now
    node.loft("snap", "parent", "p1")
    _write(node, "parent", "later")
    node.loft("fork", "parent@p1", "child2", "--stopped")
    assert node.json("info", "child2")["state"] == "stopped"
    node.loft("start", "child2")
    assert _read(node, "child2") == ["parent-only"] * len(FILES)
    # removing the parent leaves the forks whole
    node.loft("rm", "parent")
    assert _read(node, "child") == ["child-only"] * len(FILES)
    for name in ("child", "child2"):
        node.loft("rm", name)


def _gc_would_delete(node: AgentNode) -> set[str]:
    """What ``loft env gc`` would delete (a dry run: the store is the session's)."""
    report = json.loads(node.loft("env", "gc", "--dry-run", "--json").stdout)
    return set(report["deleted"])


def test_workspace_snapshots_environments_in_use_are_gc_roots(
    node: AgentNode, tmp_path: Path
) -> None:
    """The environment a workspace runs, and the one a snapshot of it was taken with
    even after the profile generation holding it is pruned, are never collected; once
    nothing uses an environment, it is."""
    ws = node.new("rooted")
    first = ws["env_path"]
    assert first not in _gc_would_delete(node)
    node.loft("snap", "rooted", "with-first")
    spec = tmp_path / "loft.toml"
    spec.write_text('[env]\ndebian = ["git"]\n')
    node.loft("env", "switch", "rooted", str(spec))
    second = node.json("info", "rooted")["env_path"]
    assert second != first
    # prune the profile down to the current generation: only the snapshot keeps `first`
    node.loft("env", "profile", f"ws-{ws['id']}", "prune", "--keep", "1")
    would = _gc_would_delete(node)
    assert first not in would and second not in would
    # restoring the snapshot brings its environment back
    node.loft("restore", "rooted", "with-first")
    assert node.json("info", "rooted")["env_path"] == first
    assert node.sh("rooted", "python3 -c 'print(42)'").strip() == "42"
    node.loft("rm", "rooted")
    # nothing here uses them now: the switched-to environment is garbage (so the check
    # above could fail); the example environment may still be held by other tests of
    # the session, which share its store
    assert second in _gc_would_delete(node)


def _snapshot_envs(node: AgentNode, ws_id: str) -> dict[str, str]:
    """Snapshot name -> environment, as the workspace's rows in the catalog hold them."""
    return {r[1]: r[2] for r in node.rows("workspace_snapshots") if r[0] == ws_id}


def _agent_delete(node: AgentNode, path: str) -> tuple[int, dict[str, str]]:
    """``DELETE path`` on the node agent's socket with curl: (status, answer)."""
    cmd = ["curl", "-s", "-m", "60", "--unix-socket", str(node.run_dir / "agent.sock")]
    cmd += ["-X", "DELETE", "-w", "\\n%{http_code}", f"http://localhost{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=90).stdout
    text, _, code = out.rpartition("\n")
    return int(code), json.loads(text)


def test_workspace_snapshots_remove_one_keeps_its_forks(node: AgentNode, tmp_path: Path) -> None:
    """``loft rm NAME@SNAP``: the snapshot is gone (a restore to it, or its removal
    again, finds none), a fork made from it reads its files even after a GC of the chunk
    store, and the environment it was taken with stops being a GC root through it once
    no other snapshot was taken with it."""
    ws = node.new("pruned")
    _write(node, "pruned", "first")
    node.loft("snap", "pruned", "s1")
    node.loft("fork", "pruned@s1", "from-s1", "--stopped")
    _write(node, "pruned", "second")  # s1's files now live in s1 and the fork alone
    # two snapshots with an environment nothing else holds: switched to, then away from
    spec = tmp_path / "loft.toml"
    spec.write_text('[env]\ndebian = ["git"]\n')
    node.loft("env", "switch", "pruned", str(spec))
    only_snapped = node.json("info", "pruned")["env_path"]
    node.loft("snap", "pruned", "s2")
    node.loft("snap", "pruned", "s3")
    node.loft("env", "switch", "pruned", str(node.lock_file))
    node.loft("env", "profile", f"ws-{ws['id']}", "prune", "--keep", "1")
    assert _snapshot_envs(node, ws["id"]).keys() == {"s1", "s2", "s3"}
    assert only_snapped not in _gc_would_delete(node)

    assert node.loft("rm", "pruned@s1").stdout == "removed pruned@s1\n"
    assert [s["name"] for s in node.json("snaps", "pruned")] == ["s2", "s3"]
    assert _snapshot_envs(node, ws["id"]).keys() == {"s2", "s3"}
    restore = node.loft("restore", "pruned", "s1", check=False)
    assert restore.returncode == 1 and "has no snapshot named 's1'" in restore.stderr
    again = node.loft("rm", "pruned@s1", check=False)
    assert again.returncode == 1 and "has no snapshot named 's1'" in again.stderr
    # the agent's own answer: 404, with the workspace running on untouched
    code, answer = _agent_delete(node, f"/v1/workspaces/{ws['id']}/snapshots/nope")
    assert code == 404 and "has no snapshot named 'nope'" in answer["error"], answer
    assert _read(node, "pruned") == ["second"] * len(FILES)
    # a removal cut short after the volume's snapshot went: the next one drops the row
    node.loft("snap", "pruned", "cut")
    node.loft("volume", "rm", f"ws-{ws['id']}@cut")
    assert "cut" in _snapshot_envs(node, ws["id"])
    assert node.loft("rm", "pruned@cut", check=False).returncode == 1
    assert "cut" not in _snapshot_envs(node, ws["id"])

    # earlier tests' workspaces left most chunks garbage: past GC's default fraction
    node.loft("volume", "gc", "--grace", "0", "--max-fraction", "1")
    node.loft("start", "from-s1")
    assert _read(node, "from-s1") == ["first"] * len(FILES)

    # s3 still holds the environment s2 was taken with; once both go, nothing does
    node.loft("rm", "pruned@s2")
    assert _snapshot_envs(node, ws["id"]) == {"s3": only_snapped}
    assert only_snapped not in _gc_would_delete(node)
    node.loft("rm", "pruned@s3")
    assert _snapshot_envs(node, ws["id"]) == {}
    assert only_snapped in _gc_would_delete(node)
    assert node.json("snaps", "pruned") == []
    for name in ("pruned", "from-s1"):
        node.loft("rm", name)

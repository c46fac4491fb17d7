"""Bad input to the workspace commands: one clear line and a hint, exit 1, and nothing
half-created — a failed ``new`` leaves no volume, mount, loop device, nbdfuse, cgroup,
container, profile or catalog row, whatever failed (its input, the spec, admission, a
missing runtime, the disk service gone while it starts)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttool import AgentNode, agent_node, path_without
from envbuild_support import apt_state, example
from runtime_support import needs_runc

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        # root's quotas above the machine, so that the node's own admission is what refuses
        n.loft("user", "quota", "root", "--memory", "8T", "--cpus", "4000")
        n.new("dev")
        n.loft("snap", "dev", "s1")
        yield n


def _refused(node: AgentNode, *args: str, says: str) -> None:
    r = node.loft(*args, check=False)
    assert r.returncode == 1, (args, r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert lines[0].startswith("loft: error: ") and says in lines[0], (args, r.stderr)
    assert len(lines) <= 2 and all(line.startswith("loft: ") for line in lines), r.stderr
    assert not r.stdout


def _nothing_but_dev(node: AgentNode) -> None:
    left = node.leftovers(node.failed_new_ids())
    assert left["workspaces"] == ["dev"] and len(left["volumes"]) == 1, left
    assert len(left["profiles"]) == 1 and len(left["containers"]) == 1, left
    assert len(left["workspace_dirs"]) == 1 and len(left["loops"]) == 1, left
    assert not left["cgroups"], left


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["start", "nope"], "no workspace named 'nope'"),
        (["stop", "nope"], "no workspace named 'nope'"),
        (["rm", "nope"], "no workspace named 'nope'"),
        (["info", "nope"], "no workspace named 'nope'"),
        (["exec", "nope", "--", "true"], "no workspace named 'nope'"),
        (["shell", "nope"], "no workspace named 'nope'"),
        (["snap", "nope"], "no workspace named 'nope'"),
        (["snaps", "nope"], "no workspace named 'nope'"),
        (["forward", "nope", "80"], "no workspace named 'nope'"),
        (["restore", "dev", "nosnap"], "has no snapshot named 'nosnap'"),
        (["fork", "dev@nosnap", "x"], "has no snapshot named 'nosnap'"),
        (["rm", "dev@nosnap"], "has no snapshot named 'nosnap'"),
        (["rm", "dev@bad/name"], "bad snapshot name"),
        (["rm", "nope@s1"], "no workspace named 'nope'"),
        (["snap", "dev", "s1"], "has a snapshot named 's1'"),
        (["snap", "dev", "bad/name"], "bad snapshot name"),
        (["start", "dev"], "is running already"),
        (["new", "dev"], "named 'dev' exists already"),
        (["fork", "dev", "dev"], "named 'dev' exists already"),
        (["new", "Bad_Name"], "bad workspace name"),
        (["new", "a--b"], "bad workspace name"),
        (["new", "x", "--size", "1x"], "bad --size"),
        (["new", "x", "--size", "1M"], "below 64M"),
        (["new", "x", "--memory", "1M"], "memory 1M is below 16M"),
        (["new", "x", "--memory", "lots"], "bad --memory"),
        (["new", "x", "--cpus", "0"], "cpus 0 is not between"),
        (["new", "x", "--cpus", "many"], "bad --cpus"),
        (["new", "x", "--pids", "5"], "pids limit 5 is below 16"),
        (["new", "x", "--net", "wifi"], "bad --net"),
        (["new", "x", "--packages", ","], "--packages is empty"),
        (["new", "x", "--packages", "no-such-package-xyz"], "unknown Debian package"),
        (["new", "x", "--spec", "/nonexistent/loft.toml"], "cannot read"),
        (["new", "x", "--memory", "64T"], "memory 64T is not between 16M and 4T"),
        (["new", "x", "--memory", "2T"], "not enough memory"),
        (["new", "x", "--cpus", "1000"], "not enough CPU"),
        (["exec", "dev", "-e", "novalue", "--", "true"], "is not K=V"),
        (["exec", "dev", "-u", "nobody", "--", "true"], "bad --user"),
        (["forward", "dev", "0"], "bad port"),
    ],
)
def test_workspace_errors_are_one_line_with_a_hint(
    node: AgentNode, args: list[str], says: str
) -> None:
    _refused(node, *args, says=says)
    _nothing_but_dev(node)


def test_workspace_errors_a_spec_that_does_not_parse(node: AgentNode, tmp_path: Path) -> None:
    bad = tmp_path / "loft.toml"
    bad.write_text("[env]\ndebian = 'python3'\n")
    _refused(node, "new", "x", "--spec", str(bad), says="must be a list")
    bad.write_text("{not a lock")
    _refused(node, "new", "x", "--spec", str(bad), says="the spec: not JSON")
    _refused(node, "env", "switch", "dev", str(bad), says="the spec: not JSON")
    _nothing_but_dev(node)
    assert node.json("info", "dev")["env_generation"] == 1


def test_workspace_errors_a_stopped_workspace_refuses_exec(node: AgentNode) -> None:
    node.new("idle", "--stopped")
    _refused(node, "exec", "idle", "--", "true", says="exec needs it running")
    _refused(node, "forward", "idle", "80", says="forward needs it running")
    node.loft("rm", "idle")


def test_workspace_errors_a_missing_runtime(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Without runc the agent still serves, and new says what is missing."""
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        env = {**n.env, "PATH": path_without("runc", n.root / "bin")}
        n.serve(agent_env=env)
        assert shutil.which("runc", path=env["PATH"]) is None
        _refused(n, "new", "x", says="the sandbox runtime is missing: runc is not installed")
        r = n.loft("new", "x", check=False)
        assert "make deps" in r.stderr
        assert n.json("ls") == []
        left = n.leftovers()
        assert all(not v for v in left.values()), left


def test_workspace_errors_a_start_that_fails_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The disk service dies before a new workspace's volume can be attached: the
    catalog rows, profile and volume made before are undone."""
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.serve()
        n.procs["disk"].send_signal(signal.SIGKILL)
        n.procs["disk"].wait(10)
        started = time.monotonic()
        r = n.loft("new", "x", "--spec", str(n.lock_file), "--size", "1G", check=False)
        assert r.returncode == 1 and "loft: error:" in r.stderr, r.stderr
        assert time.monotonic() - started < 60
        ids = n.failed_new_ids()
        assert len(ids) == 1
        left = n.leftovers(ids)
        assert all(not v for v in left.values()), json.dumps(left)
        assert n.json("ls") == []
        undone = [line for line in n.log.read_text().splitlines() if "undo.failed" in line]
        assert not undone, undone

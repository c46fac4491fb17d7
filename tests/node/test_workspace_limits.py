"""Workspaces made by the agent under load and at their limits (real runc, nbdfuse, loop
devices, ext4): five running at once, each with a shell; a process over the memory limit
OOM-killed while its shell survives; a fork bomb stopped at the pids limit with the host
responsive; a CPU hog throttled to its quota; a full disk ENOSPC for its writer only;
and the path to each workspace's filesystem passable by its own mapped root alone."""

from __future__ import annotations

import os
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from nbdtool import loft_command
from runtime_support import needs_runc

from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.oci import cgroup_path

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]
NOBODY = 65534


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


class Shell:
    """``loft shell NAME`` on pipes, fed a line at a time. The terminal echoes input, so
    the markers waited for are quoted apart in the commands (``rea''dy``)."""

    def __init__(self, node: AgentNode, name: str) -> None:
        self.proc = subprocess.Popen([*loft_command(), "shell", name], env=node.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        self.seen = b""

    def _done(self, until: bytes) -> bool:
        at = self.seen.find(until)
        return at >= 0 and b"\n" in self.seen[at:]

    def run(self, line: str, until: bytes, timeout: float = 60) -> bytes:
        """Send ``line``; what the shell printed up to the end of the line with ``until``."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while not self._done(until):
            left = deadline - time.monotonic()
            assert left > 0, f"no {until!r} in {self.seen[-2000:]!r}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 65536)
                assert chunk, f"the shell ended: {self.seen[-2000:]!r}"
                self.seen += chunk
        out, self.seen = self.seen, b""
        return out

    def close(self) -> int:
        assert self.proc.stdin is not None
        if self.proc.poll() is None:
            self.proc.stdin.write(b"exit 0\n")
            self.proc.stdin.close()
        return self.proc.wait(30)


def test_workspace_limits_five_at_once_each_with_a_shell(node: AgentNode) -> None:
    names = [f"five-{i}" for i in range(5)]
    for name in names:
        node.new(name, "--memory", "128M")
    shells = [Shell(node, name) for name in names]
    try:
        for i, sh in enumerate(shells):
            sh.run(f"echo $((40 + {i})) > ~/mine; echo rea''dy-$(hostname)", b"ready-five-")
        running = [w for w in node.json("ls") if w["state"] == "running"]
        assert {w["name"] for w in running} >= set(names)
        # every shell is still there, each sees its own file and its own processes
        for i, sh in enumerate(shells):
            out = sh.run("echo g''ot-$(cat ~/mine)-$(ls /proc | grep -c '^[0-9]')", b"got-")
            got = out.split(b"got-", 1)[1].split(b"\n", 1)[0].split(b"-")
            assert got[0] == str(40 + i).encode() and int(got[1]) < 10, out
    finally:
        statuses = [sh.close() for sh in shells]
    assert statuses == [0] * 5
    for name in names:
        node.loft("rm", name)


def test_workspace_limits_memory_hog_killed_shell_survives(node: AgentNode) -> None:
    node.new("hog", "--memory", "96M")
    sh = Shell(node, "hog")
    try:
        out = sh.run("python3 -c 'b = bytearray(400 * 2**20)'; echo sta''tus=$?", b"status=")
        assert b"status=137" in out, out  # SIGKILL from the OOM killer
        assert b"alive" in sh.run("echo al''ive", b"alive")
    finally:
        assert sh.close() == 0
    info = node.json("info", "hog")
    assert info["state"] == "running" and info["limits"]["memory"] == 96 << 20
    node.loft("rm", "hog")


def test_workspace_limits_fork_bomb_stops_at_pids(node: AgentNode) -> None:
    ws = node.new("bomb", "--pids", "64", "--cpus", "0.5")
    bomb = subprocess.Popen([*loft_command(), "exec", "bomb", "--", "bash", "-c",
                             "b() { b | b & }; b; sleep 30"], env=node.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while (node.json("info", "bomb")["pids_used"] or 0) < 60:
            assert time.monotonic() < deadline, "the bomb never reached the limit"
            time.sleep(0.2)
        # the host and the agent stay responsive
        t = time.monotonic()
        subprocess.run(["true"], check=True)
        node.json("ls")
        assert time.monotonic() - t < 5
        assert node.json("info", "bomb")["pids_used"] <= 64
        pids_max = [d / "pids.max" for d in cgroup_dirs(cgroup_path(ws["id"]))]
        assert [p.read_text().strip() for p in pids_max if p.exists()] == ["64"]
    finally:
        t = time.monotonic()
        node.loft("rm", "bomb")
        bomb.wait(30)
    assert time.monotonic() - t < 30
    assert not node.leftovers([ws["id"]])["cgroups"]


def _cpu(workspace_id: str) -> tuple[float, int]:
    """(CPU seconds used, periods throttled) from the workspace's cgroup."""
    used, throttled = 0.0, 0
    for d in cgroup_dirs(cgroup_path(workspace_id)):
        if (d / "cpuacct.usage").exists():  # v1
            used = int((d / "cpuacct.usage").read_text()) / 1e9
        if (d / "cpu.stat").exists():
            fields = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
            throttled = int(fields.get("nr_throttled", throttled))
            if "usage_usec" in fields:  # v2
                used = int(fields["usage_usec"]) / 1e6
    return used, throttled


def test_workspace_limits_cpu_hog_is_throttled(node: AgentNode) -> None:
    ws = node.new("hot", "--cpus", "0.2")
    used0, throttled0 = _cpu(ws["id"])
    t = time.monotonic()
    node.sh("hot", "timeout 3 sh -c 'while :; do :; done'; true")
    wall = time.monotonic() - t
    used1, throttled1 = _cpu(ws["id"])
    assert throttled1 > throttled0
    # 0.2 CPU over the run, with room for the exec's own start and a period's rounding
    assert used1 - used0 <= 0.2 * wall + 0.15, (used1 - used0, wall)
    node.loft("rm", "hot")


def test_workspace_limits_full_disk_is_the_writers_own(node: AgentNode) -> None:
    node.new("small", "--size", "64M")
    node.new("neighbour")
    out = node.sh("small", "dd if=/dev/zero of=$HOME/fill bs=1M count=200 2>&1; echo status=$?")
    assert "No space left on device" in out and "status=1" in out
    # the neighbour, the agent and the full workspace itself carry on
    assert node.sh("neighbour", "dd if=/dev/zero of=$HOME/f bs=1M count=20 2>&1 >/dev/null && "
                   "echo fine").strip().endswith("fine")  # fmt: skip
    assert {w["name"] for w in node.json("ls")} >= {"small", "neighbour"}
    assert node.sh("small", "rm ~/fill; echo ok > ~/after; cat ~/after").strip() == "ok"
    for name in ("small", "neighbour"):
        node.loft("rm", name)


def test_workspace_limits_path_to_the_filesystem_is_search_only(node: AgentNode) -> None:
    """Down to the mounted volume every directory is search-only, and the workspace's
    own is ``root:<its host id base> 0710``: runc's init (the mapped root) passes,
    another local account does not."""
    node.new("walled")
    ws = node.node_view("walled")
    ws_dir = node.data_dir / "workspaces" / ws["id"]
    for d in (node.data_dir, node.data_dir / "workspaces"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o711, d
    st = ws_dir.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, ws["ids_base"], 0o710)
    target = ws_dir / "root" / "etc" / "passwd"
    base = ws["ids_base"]

    def stat_as(uid: int, gid: int, path: Path) -> int:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "stat", "-c",
               "%n", str(path)]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, check=False).returncode

    assert stat_as(base, base, target) == 0
    assert stat_as(NOBODY, NOBODY, target) != 0
    node.new("other")
    other = node.node_view("other")
    assert stat_as(other["ids_base"], other["ids_base"], target) != 0  # not its neighbour's
    for name in ("walled", "other"):
        node.loft("rm", name)

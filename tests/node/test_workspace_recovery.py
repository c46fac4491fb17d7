"""The processes around workspaces die and come back; the workspaces do not notice, or
come back from their last flush: ``kill -9`` of the agent (adopted as they run), of the
disk service (stopped cleanly and restarted automatically), of ``loft up`` itself (its
children adopted by the next one), and ``loft up``'s clean stop (workspaces stopped
cleanly, started again by the next ``loft up``)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from runtime_support import needs_runc

from loft.procfs import proc_stat

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


def _alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and not st.exited


def _wait_phase(node: AgentNode, name: str, phase: str, timeout: float = 60) -> float:
    """Seconds until workspace ``name`` is in ``phase``."""
    started = time.monotonic()
    while node.json("info", name)["state"] != phase:
        assert time.monotonic() - started < timeout, node.tail()
        time.sleep(0.1)
    return time.monotonic() - started


def _wait_restarted(node: AgentNode, child: str, old: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if node.pid_of(child) != old and node.agent_answers():
                return
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.1)


#: Where a user's changes persist: home and the system directories on the volume.
PLACES = ("/home/runner", "/etc", "/var/lib", "/usr/local/bin", "/opt", "/root")


def _write_everywhere(node: AgentNode, name: str, tag: str) -> None:
    node.sh(name, "; ".join(f"echo {tag} > {d}/{tag}" for d in PLACES), "--user", "root")


def _read_everywhere(node: AgentNode, name: str, tag: str) -> list[str]:
    return node.sh(name, f"cat {' '.join(f'{d}/{tag}' for d in PLACES)}", "--user",
                   "root").split()  # fmt: skip


def test_workspace_recovery_agent_killed_workspaces_keep_running(node: AgentNode) -> None:
    node.new("steady")
    ws = node.node_view("steady")
    node.sh("steady", "echo home > ~/h; (sleep 1000 >/dev/null 2>&1 &)")
    node.sh("steady", "echo etc > /etc/mine", "--user", "root")
    _write_everywhere(node, "steady", "before-kill")
    agent = node.pid_of("agent")
    os.kill(agent, signal.SIGKILL)
    time.sleep(0.3)
    assert _alive(ws["pid"])  # the container runs on without any agent
    _wait_restarted(node, "agent", agent)
    again = node.node_view("steady")
    assert (again["phase"], again["pid"]) == ("running", ws["pid"])  # adopted, not restarted
    # runner reads what root wrote in /etc (an exec's umask is 022, not the agent's)
    out = node.sh("steady", "cat ~/h /etc/mine; grep -qx sleep /proc/[0-9]*/comm && echo sleeping")
    assert out.split() == ["home", "etc", "sleeping"]
    assert _read_everywhere(node, "steady", "before-kill") == ["before-kill"] * len(PLACES)
    assert '"event": "agent.adopted", "workspaces": 1' in node.log.read_text()


def test_workspace_recovery_disk_service_killed_restarts_from_last_flush(node: AgentNode) -> None:
    node.new("flushed")
    node.sh("flushed", "echo durable > ~/d; sync")
    _write_everywhere(node, "flushed", "synced")
    node.sh("flushed", "sync")
    before = node.node_view("flushed")["pid"]
    disk = node.pid_of("disk")
    os.kill(disk, signal.SIGKILL)
    took = _wait_phase(node, "flushed", "recovering", timeout=30)
    took += _wait_phase(node, "flushed", "running")
    print(f"restarted {took:.2f} s after the disk service was killed")
    after = node.node_view("flushed")
    assert after["pid"] != before  # stopped cleanly and started again
    assert node.sh("flushed", "cat ~/d; touch ~/new && echo writable").split() == [
        "durable",
        "writable",
    ]
    assert _read_everywhere(node, "flushed", "synced") == ["synced"] * len(PLACES)
    assert node.pid_of("disk") != disk


def test_workspace_recovery_loft_up_stops_cleanly_and_starts_again(node: AgentNode) -> None:
    node.new("kept")
    node.sh("kept", "echo kept > ~/k")
    _write_everywhere(node, "kept", "across-up")
    node.new("parked")
    node.loft("stop", "parked")
    assert node.stop("up", signal.SIGINT) == 0
    left = node.leftovers()
    assert not left["containers"] and not left["mounts"] and not left["nbdfuse"], left
    assert not left["loops"], left
    node.up()
    # the next agent starts again what was running (its reconciler, in the background)
    for name in ("kept", "steady", "flushed"):
        _wait_phase(node, name, "running")
    assert node.json("info", "parked")["state"] == "stopped"
    assert node.sh("kept", "cat ~/k").strip() == "kept"
    assert _read_everywhere(node, "kept", "across-up") == ["across-up"] * len(PLACES)


def test_workspace_recovery_a_killed_loft_up_is_taken_over(node: AgentNode) -> None:
    """A new ``loft up`` adopts the disk service, agent and control plane a killed one
    left running, instead of starting second copies."""
    children = tuple(node.pid_of(c) for c in ("disk", "agent", "control"))
    node.procs["up"].send_signal(signal.SIGKILL)
    node.procs.pop("up").wait(10)
    assert all(_alive(pid) for pid in children)
    ready = node.log.read_text().count('"up.ready"')
    node.up()  # the agent answers at once (it never stopped): wait for loft up itself
    deadline = time.monotonic() + 60
    while node.log.read_text().count('"up.ready"') == ready:
        assert time.monotonic() < deadline and node.procs["up"].poll() is None, node.tail()
        time.sleep(0.1)
    assert tuple(node.pid_of(c) for c in ("disk", "agent", "control")) == children
    assert node.log.read_text().count('"up.adopted"') == 3
    assert node.sh("kept", "cat ~/k").strip() == "kept"
    assert _read_everywhere(node, "kept", "across-up") == ["across-up"] * len(PLACES)

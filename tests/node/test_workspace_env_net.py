"""A workspace's environment generations and its outbound network, through the CLI and
the agent (real runc, nbdfuse, loop devices, ext4): ``loft env switch`` and ``rollback``
take effect at the next start and a rollback brings the previous environment back;
``--net nat`` gives the workspace an interface of its own whose stack refuses the host's
loopback services, and ``none`` has only ``lo``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from runtime_support import needs_runc

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


def _has(node: AgentNode, name: str, program: str) -> bool:
    out = node.sh(name, f"command -v {program} >/dev/null && echo yes || echo no")
    return out.strip() == "yes"


def test_workspace_env_switch_then_rollback(node: AgentNode, tmp_path: Path) -> None:
    ws = node.new("gens")
    first, first_gen = ws["env_path"], ws["env_generation"]
    assert _has(node, "gens", "python3")
    spec = tmp_path / "loft.toml"
    spec.write_text('[env]\ndebian = ["git"]\n')
    node.loft("env", "switch", "gens", str(spec))
    info = node.json("info", "gens")
    assert info["env_path"] != first and info["env_generation"] > first_gen
    # the running workspace keeps its environment until its next start
    assert _has(node, "gens", "python3")
    node.sh("gens", "echo kept > ~/mine")
    node.loft("stop", "gens")
    node.loft("start", "gens")
    assert _has(node, "gens", "git") and not _has(node, "gens", "python3")

    node.loft("env", "rollback", "gens")
    assert node.json("info", "gens")["env_path"] == first
    node.loft("stop", "gens")
    node.loft("start", "gens")
    assert _has(node, "gens", "python3")
    # generations change /usr, never the volume
    assert node.sh("gens", "cat ~/mine").strip() == "kept"
    node.loft("rm", "gens")


@pytest.fixture
def host_service() -> Iterator[int]:
    """A TCP server on the host's loopback, answering every connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"host")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


PROBE = (
    "import socket, sys\n"
    "s = socket.socket(); s.settimeout(5)\n"
    "try:\n"
    "    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(10).decode())\n"
    "except OSError as e:\n"
    "    print('refused', e.errno)\n"
)


def test_workspace_net_nat_refuses_the_hosts_loopback(node: AgentNode, host_service: int) -> None:
    node.new("outbound", "--net", "nat")
    assert node.json("info", "outbound")["network"] == "nat"
    links = node.sh("outbound", "ls /sys/class/net").split()
    assert "lo" in links and len(links) >= 2, links
    # the userspace stack maps its gateway to the host's loopback: the policy refuses it
    for addr in ("10.0.2.2", "127.0.0.1"):
        out = node.loft("exec", "outbound", "--", "python3", "-c", PROBE, addr, str(host_service))
        assert out.stdout.startswith("refused"), (addr, out.stdout)
    node.new("closed")
    assert node.sh("closed", "ls /sys/class/net").split() == ["lo"]
    for name in ("outbound", "closed"):
        node.loft("rm", name)

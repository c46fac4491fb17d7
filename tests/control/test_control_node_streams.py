"""Sleep, wake, terminals and logs through the control plane over a real node (``loft
up``: the disk service, the node agent, the API and the preview proxy; real runc,
nbdfuse and ext4), not the fake one:

- a workspace whose ``[run] command`` is ``python3 -m http.server`` serves its page
  through the preview proxy; the idle reaper snapshots and stops it, pruning its
  ``idle-*`` snapshots to the newest three on the node; a request without
  credentials is a 401 and wakes nothing; the owner's next request wakes it and gets
  the page, and the wake shows in ``/metrics`` with the volume's commit lag and the
  disk service's NBD and chunk store counts; the
  command's output is in ``loft logs``;
- the terminal WebSocket runs a shell in the sandbox: ``echo hi``, a resize that
  ``stty size`` sees, the exit code;
- a shell open on the node (``loft shell`` goes to the node agent, not through the API)
  keeps its workspace awake: the node reports it as use to the reaper.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from nbdtool import loft_command
from runtime_support import needs_runc
from wsclient import Closed, WebSocket

from loft.api import CreateWorkspace, EnvSpec, Limits
from loft.client import Client
from loft.control.reaper import IDLE_SNAPSHOT_PREFIX

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]

PAGE = b"<h1>served from the sandbox</h1>\n"
SPEC = '[env]\ndebian = ["python3"]\n\n[run]\ncommand = "python3 -m http.server 8000"\n'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


@pytest.fixture(scope="module")
def admin(node: AgentNode) -> Iterator[Client]:
    with node.admin_client() as c:
        yield c


def _state(admin: Client, name: str) -> str:
    return admin.workspace(name).state


def _idle_snapshots(admin: Client, name: str) -> list[str]:
    return [s.name for s in admin.snapshots(name) if s.name.startswith(IDLE_SNAPSHOT_PREFIX)]


def test_wake_on_request_through_the_real_node(node: AgentNode, admin: Client) -> None:
    req = CreateWorkspace(
        "web", env=EnvSpec(spec=SPEC), size=1 << 30, limits=Limits(256 << 20), idle_timeout=0
    )
    ws = admin.create_workspace(req)
    # three idle snapshots before the reaper's: its prune deletes the oldest on the node
    older = [f"{IDLE_SNAPSHOT_PREFIX}{n}" for n in ("a", "b", "c")]
    for name in older:
        admin.snapshot("web", name)
    admin.update_workspace("web", idle_timeout=2.0)
    admin.write_file("web", "/home/runner/index.html", PAGE)
    token = admin._token  # the owner's (root's) token
    deadline = time.monotonic() + 60
    while (r := node.preview_get(ws.id, token)).status_code != 200:  # its server is coming up
        assert r.status_code == 502 and time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.2)
    assert r.content == PAGE

    # idle: the reaper (every 5 s) snapshots it and stops it
    deadline = time.monotonic() + 60
    while _state(admin, "web") != "stopped":
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.5)
    while len(idle := _idle_snapshots(admin, "web")) > 3:  # the prune follows the stop
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.2)
    assert idle[:2] == older[1:] and idle[2] not in older, idle

    # no credentials: refused before any wake
    assert node.preview_get(ws.id, None).status_code == 401
    time.sleep(1.0)
    assert _state(admin, "web") == "stopped"

    started = time.monotonic()
    woken = node.preview_get(ws.id, token)
    took = time.monotonic() - started
    assert woken.status_code == 200 and woken.content == PAGE, woken.text
    print(f"idle -> first byte through the proxy over the real node: {took * 1000:.0f} ms")
    assert _state(admin, "web") == "running"
    metrics = httpx.get(
        admin.url + "/metrics",
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    ).text
    count = re.search(r"^loft_workspace_wake_to_first_byte_seconds_count (\S+)$", metrics, re.M)
    assert count is not None and float(count.group(1)) >= 1
    # the node relays its disk service's commit lag of each running workspace's volume
    pattern = r'^loft_commit_lag_seconds\{volume="ws-' + ws.id + r'"\} (\S+)$'
    lag = re.search(pattern, metrics, re.M)
    assert lag is not None and float(lag.group(1)) >= 0, metrics[-2000:]
    # and what its disk service counted: NBD requests (the workspace's reads and writes
    # through nbdfuse) and the chunk store (the idle stop's snapshot committed the volume)
    for series in (
        r'loft_nbd_request_seconds_count\{op="write"\}',
        r'loft_nbd_request_seconds_count\{op="read"\}',
        r'loft_nbd_bytes_total\{direction="write"\}',
        r'loft_chunk_store_operation_seconds_count\{op="put_many"\}',
        r'loft_chunk_store_bytes_total\{direction="up"\}',
    ):
        found = re.search(f"^{series} (\\S+)$", metrics, re.M)
        assert found is not None and float(found.group(1)) > 0, (series, metrics[-3000:])

    logs = b"".join(admin.logs("web"))
    assert logs.count(b"started: python3 -m http.server 8000") == 2, logs  # create, wake
    assert b'"GET / HTTP/1.1" 200' in logs, logs
    assert b"exited with" in logs  # the idle stop ended the first one
    out = node.loft("logs", "web").stdout
    assert "started: python3 -m http.server 8000" in out
    admin.delete_workspace("web")


def test_terminal_through_the_real_node(node: AgentNode, admin: Client) -> None:
    node.new("term")
    port = int(admin.url.rsplit(":", 1)[1])
    ws = WebSocket(
        port,
        "/v1/workspaces/term/terminal?rows=30&cols=100",
        headers={"authorization": f"Bearer {admin._token}"},
    )
    first = ws.recv()
    assert isinstance(first, dict) and first["type"] == "session", first
    ws.send_bytes(b"echo h''i; id -u; stty size\n")
    ws.read_until(re.compile(rb"[\r\n]hi\r\n1000\r\n30 100\r\n"), timeout=30)
    ws.send_json({"type": "resize", "rows": 50, "cols": 132})
    ws.send_bytes(b"stty size\n")
    ws.read_until(b"50 132\r\n", timeout=30)
    ws.send_bytes(b"exit 3\n")
    while True:
        msg = ws.recv(timeout=30)
        if isinstance(msg, dict) and msg["type"] == "exit":
            assert msg["code"] == 3
            break
    assert isinstance(ws.recv(), Closed)
    node.loft("rm", "term")


def test_a_shell_on_the_node_keeps_its_workspace_awake(node: AgentNode, admin: Client) -> None:
    node.new("busy")
    admin.update_workspace("busy", idle_timeout=2.0)
    # `loft shell` wants a terminal: script(1) gives it one; the shell reads its input
    command = " ".join([*loft_command(), "shell", "busy"])
    shell = subprocess.Popen(
        ["script", "-qec", command, "/dev/null"],
        env=node.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert shell.stdin is not None
    try:
        time.sleep(12)  # two of the reaper's looks, each past the idle timeout
        assert shell.poll() is None
        assert _state(admin, "busy") == "running", node.tail()
    finally:
        shell.stdin.write(b"exit\n")
        shell.stdin.close()
        shell.wait(30)
    deadline = time.monotonic() + 60
    while _state(admin, "busy") != "stopped":  # quiet since: it sleeps
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.5)
    node.loft("rm", "busy")

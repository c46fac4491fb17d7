"""A VM workspace behind the control plane over a real node (``loft up``, real QEMU):
the preview proxy reaches a server in the guest, the idle reaper suspends the VM (its
snapshot is of the disk alone: the suspend keeps the memory), the owner's next request
resumes it and the very same server answers (its PID unchanged, its ``[run] command``
not started twice, its output followed again), and the terminal WebSocket runs a shell
in the guest."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from runtime_support import needs_runc
from vm_support import GUEST, needs_qemu
from wsclient import Closed, WebSocket

from loft.api import CreateWorkspace, EnvSpec, Limits
from loft.client import Client

pytestmark = [pytest.mark.serial, needs_runc, needs_qemu, pytest.mark.timeout(300)]

PAGE = b"<h1>served from the VM</h1>\n"
#: The workspace's server: Python's, from its own environment (the guest's /usr).
SERVER = (
    "sh -c 'echo $$ > /tmp/server.pid; "
    "exec python3 -m http.server 8000 --bind 127.0.0.1 --directory /home/runner'"
)
SPEC = f'[env]\ndebian = ["python3"]\n\n[run]\ncommand = "{SERVER}"\n'


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    ex, apt = example(tmp_path_factory), apt_state(tmp_path_factory)
    with agent_node(ex, apt, LOFT_VM_GUEST=str(GUEST)) as n:
        n.up()
        yield n


@pytest.fixture(scope="module")
def admin(node: AgentNode) -> Iterator[Client]:
    with node.admin_client() as c:
        yield c


def _server_pid(admin: Client) -> str:
    out = admin.exec("vmweb", ["sh", "-c", "kill -0 $(cat /tmp/server.pid) && cat /tmp/server.pid"])
    return out.stdout.decode().strip()


def test_vm_idle_suspend_and_wake_through_the_preview(node: AgentNode, admin: Client) -> None:
    req = CreateWorkspace(
        "vmweb",
        env=EnvSpec(spec=SPEC),
        size=1 << 30,
        limits=Limits(256 << 20),
        runtime="vm",
        idle_timeout=2.0,
    )
    ws = admin.create_workspace(req)
    admin.write_file("vmweb", "/home/runner/index.html", PAGE)
    token = admin._token
    deadline = time.monotonic() + 60
    while (r := node.preview_get(ws.id, token)).status_code != 200:  # its server is coming up
        assert r.status_code == 502 and time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.2)
    assert r.content == PAGE
    server = _server_pid(admin)
    assert server.isdigit()

    # idle: the reaper snapshots its disk and suspends it
    vm_dir = node.data_dir / "runtime" / "vm" / ws.id
    deadline = time.monotonic() + 60
    while admin.workspace("vmweb").state != "suspended":
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.5)
    assert (vm_dir / "suspend.json").is_file()
    assert any(s.name.startswith("idle-") for s in admin.snapshots("vmweb"))
    assert not any((node.data_dir / "runtime" / "vm-images").glob("*"))  # no memory image

    assert node.preview_get(ws.id, None).status_code == 401  # refused before any wake
    assert admin.workspace("vmweb").state == "suspended"
    started = time.monotonic()
    woken = node.preview_get(ws.id, token)
    took = time.monotonic() - started
    assert woken.status_code == 200 and woken.content == PAGE, woken.text
    print(f"suspended VM -> first byte through the proxy: {took * 1000:.0f} ms")
    assert admin.workspace("vmweb").state == "running"
    assert _server_pid(admin) == server  # the same process, resumed
    logs = b"".join(admin.logs("vmweb"))
    assert logs.count(b"started: sh -c") == 1 and b"resumed from memory" in logs, logs
    # its output is followed again: the resumed server's log line for the wake request
    deadline = time.monotonic() + 30
    while b'"GET / HTTP/1.1" 200' not in logs.split(b"resumed from memory", 1)[1]:
        assert time.monotonic() < deadline, logs
        time.sleep(0.5)
        logs = b"".join(admin.logs("vmweb"))


def test_vm_terminal_through_the_real_node(node: AgentNode, admin: Client) -> None:
    assert admin.workspace("vmweb").state == "running"
    port = int(admin.url.rsplit(":", 1)[1])
    ws = WebSocket(
        port,
        "/v1/workspaces/vmweb/terminal?rows=30&cols=100",
        headers={"authorization": f"Bearer {admin._token}"},
    )
    first = ws.recv()
    assert isinstance(first, dict) and first["type"] == "session", first
    prompt = re.compile(rb"\$ ")  # the environment's bash, as runner

    def run(line: bytes, out: bytes | re.Pattern[bytes]) -> None:
        ws.read_until(prompt, timeout=30)
        ws.send_bytes(line)
        ws.read_until(out, timeout=30)

    # bash ends bracketed paste (ESC [?2004l) and returns the carriage before any output
    run(b"echo h''i\n", b"\rhi\r\n")
    run(b"id -u; stty size\n", b"\r1000\r\n30 100\r\n")
    ws.send_json({"type": "resize", "rows": 50, "cols": 132})
    run(b"stty size\n", b"\r50 132\r\n")
    ws.read_until(prompt, timeout=30)
    ws.send_bytes(b"exit 3\n")
    while True:
        msg = ws.recv(timeout=30)
        if isinstance(msg, dict) and msg["type"] == "exit":
            assert msg["code"] == 3
            break
    assert isinstance(ws.recv(), Closed)
    assert admin.exec("vmweb", ["echo", "done"]).stdout == b"done\n"
    admin.delete_workspace("vmweb")
    assert not any((node.data_dir / "runtime" / "vm").glob("*"))

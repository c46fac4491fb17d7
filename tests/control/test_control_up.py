"""The control plane in front of a real node, end to end: ``loft up`` (disk service, node
agent, control plane) on a fresh data dir, the CLI and the SDK through the API, real
runc, nbdfuse, loop devices and ext4; on SQLite and on PostgreSQL.

- ``loft up`` prints the API URL, the preview domain and, on the first start only, the
  admin token (kept 0600); a workspace made and written through the CLI is there with
  its files after Ctrl-C and a second ``loft up``, and nothing of the first run is left
  running in between;
- tenant isolation against the real agent: another user's token reaches none of a
  workspace's operations (404, as for a workspace that does not exist), each attempt
  checked, and the owner's workspace is unchanged after all of them; the owner deletes
  one of its snapshots on the node (200), and a second delete finds none (404).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from agenttool import AgentNode, agent_node
from envbuild_support import apt_state, example
from runtime_support import needs_runc

from loft.api import CreateWorkspace, EnvSpec, Limits
from loft.client import Client, NotFound
from loft.procfs import proc_stat

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]


@pytest.fixture(params=["sqlite", "postgres"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentNode]:
    env = {}
    if request.param == "postgres":
        env["LOFT_CATALOG_URL"] = request.getfixturevalue("postgres_db_url")
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory), **env) as n:
        yield n


def _api_url(node: AgentNode) -> str:
    return (node.run_dir / "api.url").read_text().strip()


def _running(node: AgentNode, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while node.json("info", name)["state"] != "running":
        assert time.monotonic() < deadline, node.tail()
        time.sleep(0.2)


def test_control_up_restart_keeps_every_workspace(node: AgentNode) -> None:
    node.up()
    banner = node.log.read_text()
    url = _api_url(node)
    assert re.search(r"API +http://127\.0\.0\.1:\d+ ", banner) and url in banner
    assert "preview      http://PORT--WORKSPACEID.preview.localhost" in banner
    token_file = node.data_dir / "control" / "admin.token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert f"admin token  {token}" in banner and banner.count(token) == 1

    node.new("keep")
    node.sh("keep", "echo kept > ~/file && mkdir -p ~/proj && echo code > ~/proj/main.py")
    node.sh("keep", "echo etc > /etc/mine", "--user", "root")
    with Client(url, token) as admin:  # the printed token works over HTTP
        assert admin.exec("keep", ["cat", "/home/runner/file"]).stdout == b"kept\n"
        assert [w.name for w in admin.workspaces()] == ["keep"]

    children = json.loads((node.run_dir / "up.json").read_text())
    assert set(children) == {"disk", "agent", "control"}
    assert node.stop("up") == 0
    for child, (pid, start) in children.items():
        stat = proc_stat(pid)
        assert stat is None or stat.start != start or stat.exited, f"{child} still runs"
    runc = subprocess.run(["runc", "--root", str(node.data_dir / "runtime" / "runc"), "list",
                           "-q"], capture_output=True, text=True, check=False)  # fmt: skip
    assert runc.stdout.split() == []
    assert not (node.run_dir / "api.sock").exists()

    seen = len(node.log.read_text())
    node.up()
    second = node.log.read_text()[seen:]
    assert "loft is up" in second and "admin token" not in second
    _running(node, "keep")
    out = node.sh("keep", "cat ~runner/file ~runner/proj/main.py /etc/mine", "--user", "root")
    assert out.split() == ["kept", "code", "etc"]
    with Client(_api_url(node), token) as admin:  # the same admin, the same token
        assert admin.me().name == "root" and admin.me().admin
        assert admin.read_file("keep", "/home/runner/proj/main.py") == b"code\n"
    node.loft("rm", "keep")
    assert node.json("ls") == []


def test_control_up_tenant_isolation_against_the_real_agent(node: AgentNode) -> None:
    node.up()
    url = _api_url(node)
    tokens = {u: node.json("user", "add", u)["token"] for u in ("alice", "bob")}
    spec = EnvSpec(spec=node.lock_file.read_text())
    small = {"size": 1 << 30, "limits": Limits(memory=256 << 20)}
    with Client(url, tokens["alice"]) as alice, Client(url, tokens["bob"]) as bob:
        made = alice.create_workspace(CreateWorkspace("w", spec, **small))  # type: ignore[arg-type]
        assert (made.owner, made.state) == ("alice", "running")
        alice.write_file("w", "/home/runner/secret", b"hers\n")
        assert alice.exec("w", ["cat", "/home/runner/secret"]).stdout == b"hers\n"
        alice.snapshot("w", "s1")

        attempts: dict[str, Callable[[], object]] = {
            "get": lambda: bob.workspace("w"),
            "get as her": lambda: bob.workspace("w", owner="alice"),
            "exec": lambda: bob.exec("w", ["cat", "/home/runner/secret"]),
            "read file": lambda: bob.read_file("w", "/home/runner/secret"),
            "write file": lambda: bob.write_file("w", "/home/runner/secret", b"his\n"),
            "delete file": lambda: bob.delete_file("w", "/home/runner/secret"),
            "snapshot": lambda: bob.snapshot("w", "b1"),
            "list snapshots": lambda: bob.snapshots("w"),
            "fork": lambda: bob.fork("w", "mine", snapshot="s1"),
            "fork now": lambda: bob.fork("w", "mine"),
            "restore": lambda: bob.restore("w", "s1"),
            "delete snapshot": lambda: bob.delete_snapshot("w", "s1"),
            "stop": lambda: bob.stop("w"),
            "start": lambda: bob.start("w"),
            "limits": lambda: bob.update_workspace("w", limits=Limits(memory=128 << 20)),
            "env switch": lambda: bob.env_switch("w", EnvSpec(packages=["bash"])),
            "env rollback": lambda: bob.env_rollback("w"),
            "delete": lambda: bob.delete_workspace("w"),
        }
        for what, attempt in attempts.items():
            with pytest.raises(NotFound):
                attempt()
                pytest.fail(f"bob's {what} reached alice's workspace")
        assert bob.workspaces() == []
        terminal = httpx.get(
            f"{url}/v1/workspaces/w/terminal",
            headers={
                "authorization": f"Bearer {tokens['bob']}",
                "connection": "upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
            timeout=30,
        )
        assert terminal.status_code == 404

        # Nothing of hers changed, and it still runs.
        assert alice.exec("w", ["cat", "/home/runner/secret"]).stdout == b"hers\n"
        assert [s.name for s in alice.snapshots("w")] == ["s1"]
        assert alice.workspace("w").state == "running"
        # Hers to delete, through the node: once (200), then it is not there (404).
        alice.snapshot("w", "s2")
        gone = httpx.delete(
            f"{url}/v1/workspaces/w/snapshots/s1",
            headers={"authorization": f"Bearer {tokens['alice']}"},
            timeout=60,
        )
        assert (gone.status_code, gone.json()) == (200, {"deleted": "s1"}), gone.text
        assert [s.name for s in alice.snapshots("w")] == ["s2"]
        with pytest.raises(NotFound, match="no snapshot named 's1'"):
            alice.delete_snapshot("w", "s1")
        assert alice.exec("w", ["cat", "/home/runner/secret"]).stdout == b"hers\n"

        # The same name is free for him: a workspace of his own that sees nothing of hers.
        his = bob.create_workspace(CreateWorkspace("w", spec, **small))  # type: ignore[arg-type]
        assert his.id != made.id and his.owner == "bob"
        peek = bob.exec("w", ["cat", "/home/runner/secret"])
        assert peek.code == 1 and b"No such file" in peek.stderr
        # root on the node is the admin: it sees both
        assert sorted((w["owner"], w["name"]) for w in node.json("ls")) == [
            ("alice", "w"),
            ("bob", "w"),
        ]
        bob.delete_workspace("w")
        alice.delete_workspace("w")


def test_control_up_refuses_plain_http_off_loopback(node: AgentNode) -> None:
    r = node.loft("up", "--listen", "0.0.0.0:0", check=False, timeout=30)
    assert r.returncode == 1 and "refusing to serve the API in clear" in r.stderr
    assert "--tls-cert" in r.stderr
    # refused before anything started or was made
    assert not (node.data_dir / "run").exists()
    assert not (node.data_dir / "control").exists()

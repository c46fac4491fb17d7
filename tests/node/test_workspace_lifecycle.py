"""Workspaces end to end through the CLI, the control plane and the node agent, on real
runc, nbdfuse,
loop devices and ext4: create, exec and shell (streams, exit status, terminals), the
environment, persistence across stop and start, limits reaching the container, port
forwarding, the node API out of a workspace's reach, and removal leaving nothing."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
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

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentNode]:
    with agent_node(example(tmp_path_factory), apt_state(tmp_path_factory)) as n:
        n.up()
        yield n


def test_workspace_lifecycle_new_with_packages_runs_its_environment(node: AgentNode) -> None:
    """--packages is locked and built on the node; python3 and git work, /usr is
    read-only, CA certificates, runner's passwd entry and the shell are there."""
    ws = node.json("new", "pkgs", "--packages", "python3,git", "--size", "1G",
                   "--memory", "256M")  # fmt: skip
    assert ws["state"] == "running" and ws["env_generation"] == 1
    assert ws["env"] == {"packages": ["python3", "git"], "spec": None}
    out = node.sh("pkgs", "python3 -c 'print(6*7)'; git --version; id -un; echo $HOME")
    assert out.splitlines()[0] == "42" and out.splitlines()[1].startswith("git version")
    assert out.splitlines()[2:] == ["runner", "/home/runner"]
    ro = node.sh("pkgs", "touch /usr/x 2>&1; echo $?", "--user", "root")
    assert "Read-only file system" in ro and ro.strip().endswith("1")
    certs = node.sh("pkgs", "test -s /etc/ssl/certs/ca-certificates.crt && grep -c ^runner: "
                    "/etc/passwd")  # fmt: skip
    assert certs.strip() == "1"
    shell = node.loft("shell", "pkgs", input="echo shell-$((6*7)); exit 3\n", check=False)
    assert shell.returncode == 3 and "shell-42" in shell.stdout
    node.loft("rm", "pkgs")


def test_workspace_lifecycle_exec_streams_and_status(node: AgentNode) -> None:
    node.new("ex")
    r = node.loft("exec", "ex", "--", "sh", "-c", "cat; echo err >&2; exit 7", input="piped in",
                  check=False)  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (7, "piped in", "err\n")
    r = node.loft("exec", "--env", "A=1", "-e", "B=two words", "--cwd", "/tmp", "--user",
                  "root", "ex", "--", "sh", "-c", 'echo "$A $B $(pwd) $(id -u)"')  # fmt: skip
    assert r.stdout == "1 two words /tmp 0\n"
    killed = node.loft("exec", "ex", "--", "sh", "-c", "kill -9 $$", check=False)
    assert killed.returncode == 137
    big = subprocess.run(
        [*loft_command(), "exec", "ex", "--", "python3", "-c",
         "import sys; sys.stdout.buffer.write(bytes(range(256)) * 40000)"],
        env=node.env, capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert hashlib.sha256(big.stdout).digest() == hashlib.sha256(bytes(range(256)) * 40000).digest()
    echo = node.loft("exec", "ex", "--", "sh", "-c", "wc -c", input="x" * 3_000_000)
    assert echo.stdout.strip() == "3000000"


def test_workspace_lifecycle_shell_window_follows_resizes(node: AgentNode) -> None:
    """A shell's terminal starts at the client's size and follows RESIZE frames."""
    from loft.node import frames
    from loft.node import workspace_api as wapi
    from loft.node.client import open_stream

    node.new("term")
    wid = node.json("info", "term")["id"]
    req = wapi.ExecWorkspaceRequest(wid, ["sh"], tty=True, rows=33, cols=101)
    sock, initial = open_stream(str(node.run_dir / "agent.sock"), req)
    with sock:
        sock.sendall(frames.encode(frames.Frame(frames.Channel.STDIN, b"stty size\n")))
        seen = _read_until(sock, initial, b"33 101")
        sock.sendall(frames.encode(frames.resize(50, 140)))
        time.sleep(0.2)
        sock.sendall(frames.encode(frames.Frame(frames.Channel.STDIN, b"stty size; exit 4\n")))
        seen = _read_until(sock, b"", b"50 140")
        assert b"50 140" in seen


def _read_until(sock: socket.socket, initial: bytes, needle: bytes, timeout: float = 20) -> bytes:
    from loft.node import frames

    dec = frames.Decoder()
    if initial:
        dec.receive_data(initial)
    out = b""
    sock.settimeout(timeout)
    while needle not in out:
        f = dec.next_frame()
        if f is frames.NEED_DATA:
            dec.receive_data(sock.recv(65536))
            continue
        assert isinstance(f, frames.Frame), f"session ended before {needle!r}: {out!r}"
        out += f.payload
    return out


def test_workspace_lifecycle_persists_across_stop_and_start(node: AgentNode) -> None:
    info = node.new("keep")
    node.sh("keep", "echo home > ~/h; mkdir -p ~/proj && echo code > ~/proj/main.py")
    node.sh("keep", "echo etc > /etc/mine; echo var > /var/lib/mine; echo opt > /opt/mine; "
                    "echo root > /root/mine; echo local > /usr/local/bin/mine", "--user",
                    "root")  # fmt: skip
    node.loft("stop", "keep")
    stopped = node.json("info", "keep")
    assert (stopped["state"], stopped["memory_used"]) == ("stopped", None)
    assert info["id"] not in node.leftovers()["containers"]
    assert not any(info["id"] in m for m in node.leftovers()["mounts"])
    node.loft("start", "keep")
    out = node.sh("keep", "cd /home/runner && cat h proj/main.py /etc/mine /var/lib/mine /opt/mine "
                          "/root/mine /usr/local/bin/mine", "--user", "root")  # fmt: skip
    assert out.split() == ["home", "code", "etc", "var", "opt", "root", "local"]
    # runner's home is runner's: the files runner wrote are runner's inside
    assert node.sh("keep", "stat -c %U ~/h").strip() == "runner"


def test_workspace_lifecycle_limits_reach_the_container(node: AgentNode) -> None:
    ws = node.new("lim", "--memory", "300M", "--cpus", "0.5", "--pids", "200")
    assert ws["limits"] == {"memory": 300 << 20, "cpus": 0.5, "pids": 200}
    found = {}
    for d in cgroup_dirs(cgroup_path(ws["id"])):
        for name in ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us",
                     "cpu.cfs_period_us", "cpu.max"):  # fmt: skip
            if (d / name).exists():
                found[name] = (d / name).read_text().split()
    if "memory.max" in found:  # cgroup v2
        assert found["memory.max"] == [str(300 << 20)] and found["pids.max"] == ["200"]
        quota, period = map(int, found["cpu.max"])
    else:
        assert found["memory.limit_in_bytes"] == [str(300 << 20)]
        assert found["pids.max"] == ["200"]
        quota, period = int(found["cpu.cfs_quota_us"][0]), int(found["cpu.cfs_period_us"][0])
    assert quota / period == pytest.approx(0.5)
    live = node.json("info", "lim")
    assert 0 < live["memory_used"] < 300 << 20 and live["pids_used"] >= 1


def test_workspace_lifecycle_node_api_is_out_of_reach_inside(node: AgentNode) -> None:
    """The agent's and the disk service's sockets are not in a workspace's mount
    namespace, and its network has only its own loopback."""
    node.new("probe")
    probe = (
        "import socket, sys\n"
        "for path in sys.argv[1:]:\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        "    try:\n"
        "        s.connect(path); print('REACHED', path)\n"
        "    except OSError as e:\n"
        "        print('refused', e.errno)\n"
    )
    paths = [str(node.run_dir / n) for n in ("agent.sock", "control.sock", "nbd.sock",
                                             "attach.sock")]  # fmt: skip
    for user in ("runner", "root"):
        out = node.loft("exec", "--user", user, "probe", "--", "python3", "-c", probe, *paths)
        assert "REACHED" not in out.stdout and out.stdout.count("refused 2") == 4
    assert node.sh("probe", "ls /sys/class/net").split() == ["lo"]


def test_workspace_lifecycle_forward_a_port(node: AgentNode) -> None:
    node.new("web")
    node.sh("web", "cd /tmp && echo served > index.html && "
                   "(python3 -m http.server 8000 >/dev/null 2>&1 &) && sleep 0.5")  # fmt: skip
    for extra in ([], ["--local", "0"]):
        # Ctrl-C is what stops a forward: make sure it is not ignored, as it is in a
        # suite started in the background by a non-interactive shell.
        fwd = subprocess.Popen([*loft_command(), "forward", "web", "8000", *extra], env=node.env,
                               stdout=subprocess.PIPE, text=True,
                               preexec_fn=_sigint_default)  # fmt: skip
        try:
            assert fwd.stdout is not None
            line = fwd.stdout.readline()
            where = line.split(" at ", 1)[1].split(" (", 1)[0]
            if extra:
                host, port = where.split(":")
                assert host == "127.0.0.1"
                got = _http_get(socket.create_connection((host, int(port)), 10))
            else:
                assert Path(where).stat().st_mode & 0o777 == 0o600
                s = socket.socket(socket.AF_UNIX)
                s.connect(where)
                got = _http_get(s)
            assert got.endswith(b"served\n")
        finally:
            fwd.send_signal(2)
            fwd.wait(20)
        if not extra:
            deadline = time.monotonic() + 10
            while Path(where).exists():  # the listener goes with the connection
                assert time.monotonic() < deadline
                time.sleep(0.05)
    # A forward ends, saying so, when its workspace stops.
    fwd = subprocess.Popen([*loft_command(), "forward", "web", "8000"], env=node.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert fwd.stdout is not None and "forwarding" in fwd.stdout.readline()
    node.loft("stop", "web")
    _, err = fwd.communicate(timeout=30)
    assert fwd.returncode == 1 and "workspace stopped" in err


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _http_get(s: socket.socket) -> bytes:
    with s:
        s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_workspace_lifecycle_rm_leaves_nothing(node: AgentNode) -> None:
    ids = [w["id"] for w in node.json("ls")]
    for w in node.json("ls"):
        node.loft("rm", w["name"])
    assert node.json("ls") == []
    left = node.leftovers(ids)
    assert all(not v for v in left.values()), json.dumps(left, indent=1)

"""Commands in a running workspace: the environment's programs, streams and exit status,
a terminal, the filesystem layout, persistence across a restart."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.spec import ExecRequest, WindowSize, WorkspaceSpec

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        yield ws


@pytest.fixture(scope="module")
def one(ws: Workspaces) -> WorkspaceSpec:
    return ws.start()


def test_sandbox_exec_runs_the_environment(ws: Workspaces, one: WorkspaceSpec) -> None:
    status, out, err = ws.sh(
        one,
        "id; python3 -c 'import sys; print(sys.version_info[0])'; git --version; echo $HOME; pwd",
    )
    assert status == 0, err
    ident, py, git, home, cwd = out.splitlines()
    assert ident == "uid=1000(runner) gid=1000(runner) groups=1000(runner)"
    assert py == "3" and git.startswith("git version ")
    assert home == cwd == "/home/runner"
    assert ws.sh(one, "id -u; echo $HOME", user=0)[1].split() == ["0", "/root"]


def test_sandbox_exec_streams_and_status(ws: Workspaces, one: WorkspaceSpec) -> None:
    req = ExecRequest(
        ("sh", "-c", "cat; echo err >&2; echo $GREETING; pwd; exit 3"),
        cwd="/tmp",
        env={"GREETING": "hello"},
    )
    done = ws.runtime.run(one.id, req, input=b"from stdin\n", timeout=30)
    assert done.status == 3
    assert done.stdout == b"from stdin\nhello\n/tmp\n"
    assert done.stderr == b"err\n"
    killed = ws.runtime.run(one.id, ExecRequest(("sh", "-c", "kill -9 $$")), timeout=30)
    assert killed.status == 128 + 9


def _read_until(fd: int, want: bytes, timeout: float = 20) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, got
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, 4096)
    return got


def test_sandbox_pty_has_a_terminal_of_its_size(ws: Workspaces, one: WorkspaceSpec) -> None:
    script = "tty; stty size; while read line; do stty size; [ $line = end ] && exit 5; done"
    session = ws.runtime.pty(one.id, ExecRequest(("sh", "-c", script)), WindowSize(40, 120))
    try:
        first = _read_until(session.master, b"40 120")
        assert b"/dev/pts/" in first
        session.resize(WindowSize(50, 100))
        # runc copies the new size to the inner terminal when its SIGWINCH arrives.
        deadline = time.monotonic() + 20
        got = b""
        while b"50 100" not in got:
            assert time.monotonic() < deadline, got
            os.write(session.master, b"again\n")
            got += _read_until(session.master, b"\n", 5)
            time.sleep(0.05)
        os.write(session.master, b"end\n")
        assert session.wait(20) == 5
    finally:
        session.close()


def test_sandbox_usr_is_the_environment_read_only(ws: Workspaces, one: WorkspaceSpec) -> None:
    _status, out, _ = ws.sh(
        one,
        "touch /usr/x; echo $?; touch /nix/store/x/y; echo $?; ls /nix/store; readlink /bin",
        user=0,
    )
    lines = out.splitlines()
    assert lines[0] != "0" and lines[1] != "0"
    assert sorted(lines[2:-1]) == sorted(p.removeprefix("/nix/store/") for p in one.env.closure)
    assert lines[-1] == "usr/bin"


def test_sandbox_out_of_the_box(ws: Workspaces, one: WorkspaceSpec) -> None:
    status, out, err = ws.sh(
        one,
        "getent passwd runner root | cut -d: -f1,3,6; "
        "test -s /etc/ssl/certs/ca-certificates.crt && echo certs; "
        "cat /proc/sys/kernel/hostname; ls -ld /home/runner /tmp",
    )
    assert status == 0, err
    lines = out.splitlines()
    assert lines[:3] == ["runner:1000:/home/runner", "root:0:/root", "certs"]
    assert lines[3] == one.host_name
    assert lines[4].split()[2:4] == ["runner", "runner"]
    assert lines[5].startswith("drwxrwxrwt")


def test_sandbox_files_persist_across_a_restart(ws: Workspaces) -> None:
    spec = ws.start()
    assert ws.sh(spec, "echo kept > ~/note")[0] == 0
    assert ws.sh(spec, "echo 10.0.0.1 db >> /etc/hosts; echo tmp > /tmp/gone", user=0)[0] == 0
    ws.runtime.stop(spec.id)
    assert not Path(spec.rootfs / "tmp" / "gone").exists()
    ws.runtime.start(spec)
    status, out, _ = ws.sh(spec, "cat ~/note; tail -n1 /etc/hosts; ls /tmp")
    assert status == 0
    assert out.splitlines() == ["kept", "10.0.0.1 db"]
    # On disk the files keep the workspace's own ids (no chown on a move).
    assert (spec.rootfs / "home/runner/note").stat().st_uid == 1000
    assert (spec.rootfs / "etc/hosts").stat().st_uid == 0


def test_sandbox_system_dirs_persist_on_the_volume(ws: Workspaces) -> None:
    """/usr/local is the volume's own (bound back over the environment, writable by
    root, with the workspace's ids on disk), as are /opt, /root, /etc and /var; /usr
    beside it stays read-only."""
    spec = ws.start()
    places = ("/usr/local/bin/tool", "/usr/local/lib/x", "/opt/o", "/root/r", "/etc/e",
              "/var/lib/v")  # fmt: skip
    script = "; ".join(f"mkdir -p {os.path.dirname(p)}; echo {p} > {p} || exit 1" for p in places)
    done = ws.sh(spec, f"{script}; chmod 755 /usr/local/bin/tool", user=0)
    assert done[0] == 0, done
    status, out, _ = ws.sh(spec, "touch /usr/x 2>/dev/null; echo $?; touch /usr/local/y; echo $?; "
                                 "ls /usr/local >/dev/null; echo $?")  # fmt: skip
    assert out.split() == ["1", "1", "0"]  # runner: /usr read-only, /usr/local root's
    ws.runtime.stop(spec.id)
    assert (spec.rootfs / "usr/local/bin/tool").read_text() == "/usr/local/bin/tool\n"
    assert (spec.rootfs / "usr/local/bin/tool").stat().st_uid == 0
    ws.runtime.start(spec)
    status, out, _ = ws.sh(spec, f"cat {' '.join(places)}; umask; ls /usr/bin/python3", user=0)
    assert status == 0
    assert out.split() == [*places, "0022", "/usr/bin/python3"]


def test_sandbox_sees_only_its_own_processes_and_lo(ws: Workspaces, one: WorkspaceSpec) -> None:
    me = os.getpid()  # a host pid: far above what the workspace's few processes get
    _status, out, _ = ws.sh(
        one,
        "ls /proc | grep -c '^[0-9]'; tr '\\0' ' ' < /proc/1/cmdline; "
        f"echo; ls /sys/class/net; test -e /proc/{me} && echo {me}",
    )
    count, pid1, *nets = out.splitlines()
    # init, sh, ls, grep and whatever runc's exec left for a moment
    assert int(count) <= 6
    assert pid1.strip() == "/run/loft/init -P"
    assert nets == ["lo"]

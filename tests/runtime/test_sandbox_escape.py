"""Attacks from inside a workspace, as runner and as root: each attempt must fail
(escape_probe.py of the env sandbox tests, and the host paths, sockets and devices a
workspace must not reach); from the host, what runs and what it writes belongs to the
workspace's own unprivileged id range."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from escape_support import (
    ATTEMPTS,
    LEASE_BREAK_TIME,
    PROBE,
    attempt_problem,
    lease_break_time_kept,
    syscall_numbers,
)
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.oci import CAPABILITIES
from loft.runtime.spec import ExecRequest, WorkspaceSpec

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]
CHECKOUT = Path(__file__).resolve().parents[2]
#: What a workspace has that `loft env run` does not: a read-only /sys to list.
NOT_APPLICABLE = {"list /sys"}
WORKSPACE_ATTEMPTS = [a for a in ATTEMPTS if a not in NOT_APPLICABLE]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        yield ws


@pytest.fixture(scope="module")
def two(ws: Workspaces) -> tuple[WorkspaceSpec, WorkspaceSpec]:
    return ws.start(), ws.start()


def _probe(ws: Workspaces, spec: WorkspaceSpec, user: int) -> dict[str, Any]:
    with lease_break_time_kept() as before:
        done = ws.runtime.run(
            spec.id,
            ExecRequest(("python3", "-c", PROBE.read_text(), syscall_numbers()), user=user),
            timeout=120,
        )
        assert done.status == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        result["lease_break_time"] = (before, LEASE_BREAK_TIME.read_text())
    return result


@pytest.fixture(scope="module")
def probes(ws: Workspaces, two: tuple[WorkspaceSpec, WorkspaceSpec]) -> dict[int, Any]:
    return {uid: _probe(ws, two[0], uid) for uid in (1000, 0)}


@pytest.mark.parametrize("user", [1000, 0], ids=["runner", "root"])
@pytest.mark.parametrize("name", WORKSPACE_ATTEMPTS)
def test_sandbox_escape_attempt_fails(probes: dict[int, Any], user: int, name: str) -> None:
    if user == 0 and name == "open /proc/1/mem":
        # The container's own init, as root inside: no privilege to gain (it has none)
        # and nothing of the host's; ptrace and process_vm_* are denied all the same.
        pytest.skip("root inside may open its own init's memory")
    assert attempt_problem(probes[user]["attempts"], name) is None
    before, after = probes[user]["lease_break_time"]
    assert after == before


@pytest.mark.parametrize("user", [1000, 0], ids=["runner", "root"])
def test_sandbox_escape_privileges(
    probes: dict[int, Any], two: tuple[WorkspaceSpec, WorkspaceSpec], user: int
) -> None:
    status = probes[user]["status"]
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert probes[user]["uid_map"] == ["0", str(two[0].ids.host), "65536"]
    caps = int(status["CapEff"], 16)
    if user:
        assert caps == 0
    else:
        assert caps == int(status["CapBnd"], 16) != 0
        assert bin(caps).count("1") == len(CAPABILITIES)
    assert int(status["CapAmb"], 16) == int(status["CapInh"], 16) == 0
    assert probes[user]["personality"] == 0  # what the filter allows still works


# Each reports 0 (it worked: a failure of the test) or the errno it failed with.
INSIDE = r"""
import errno, json, os, socket, sys
def attempt(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno or -1
def connect(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(address)
    finally:
        s.close()
def listdir(p):
    return os.listdir(p)
paths = json.loads(sys.argv[1])
out = {f"read {p}": attempt(lambda p=p: listdir(p) if os.path.isdir(p) else open(p).read())
       for p in paths["paths"]}
out["node API socket"] = attempt(lambda: connect(socket.AF_UNIX, paths["socket"]))
out["abstract socket"] = attempt(lambda: connect(socket.AF_UNIX, "\0" + paths["abstract"]))
out["host loopback"] = attempt(lambda: connect(socket.AF_INET, ("127.0.0.1", paths["port"])))
BLOCK = 0o060000
out["mknod block device"] = attempt(lambda: os.mknod("/tmp/sda", 0o600 | BLOCK, os.makedev(8, 0)))
for dev in ("/dev/sda", "/dev/vda", "/dev/loop0", "/dev/mem", "/dev/kmsg", "/dev/fuse"):
    out[f"open {dev}"] = attempt(lambda dev=dev: os.close(os.open(dev, os.O_RDONLY)))
out["devices"] = sorted(os.listdir("/dev"))
print(json.dumps(out))
"""


def test_sandbox_escape_host_paths_sockets_and_devices(
    ws: Workspaces, two: tuple[WorkspaceSpec, WorkspaceSpec], tmp_path: Path
) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("secret")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "control.sock"))
    sock.listen(1)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0loft-test-{os.getpid()}")
    abstract.listen(1)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    paths = [
        str(marker),
        str(CHECKOUT),
        str(CHECKOUT / "pyproject.toml"),
        str(ws.runtime.dirs.data_dir),
        str(two[1].rootfs),
        str(ws.runtime.dirs.stage(two[1].id)),
        str(two[0].env.store_dir),
    ]
    args = {
        "paths": paths,
        "socket": str(tmp_path / "control.sock"),
        "abstract": f"loft-test-{os.getpid()}",
        "port": tcp.getsockname()[1],
    }
    try:
        for user in (1000, 0):
            done = ws.runtime.run(
                two[0].id,
                ExecRequest(("python3", "-c", INSIDE, json.dumps(args)), user=user),
                timeout=60,
            )
            assert done.status == 0, done.stderr
            out = json.loads(done.stdout)
            devices = out.pop("devices")
            worked = [name for name, err in out.items() if err == 0]
            assert not worked, (user, worked)
            assert set(devices) <= {
                "console",
                "full",
                "mqueue",
                "null",
                "ptmx",
                "pts",
                "random",
                "shm",
                "tty",
                "urandom",
                "zero",
                "core",
                "fd",
                "stdin",
                "stdout",
                "stderr",
            }
    finally:
        for s in (sock, abstract, tcp):
            s.close()
    # The host's /root is not the workspace's.
    status, out, _ = ws.sh(two[0], "ls -A /root", user=0)
    host_root = set(os.listdir("/root"))
    assert status == 0 and not (set(out.split()) & host_root - {".bashrc", ".profile"})


def _container_pids(init: int) -> list[int]:
    ns = os.readlink(f"/proc/{init}/ns/pid")
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _ids(pid: int) -> tuple[list[int], list[int]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    f = {k: v.split() for k, v in (ln.split(":", 1) for ln in lines)}
    return [int(x) for x in f["Uid"]], [int(x) for x in f["Gid"]]


def test_sandbox_escape_host_sees_the_workspace_range(
    ws: Workspaces, two: tuple[WorkspaceSpec, WorkspaceSpec]
) -> None:
    spec = two[0]
    script = (
        "cp /usr/bin/id /root/suid-id && chmod 4755 /root/suid-id && "
        "cp /usr/bin/id /home/runner/suid-id && chmod 4755 /home/runner/suid-id && "
        "(sleep 30 >/dev/null 2>&1 &) && echo ready"
    )
    assert ws.sh(spec, script, user=0)[1] == "ready\n"
    # Run as runner, the setuid-root copy gives nothing (nosuid, no_new_privs).
    assert ws.sh(spec, "/home/runner/suid-id -u")[1] == "1000\n"
    init = ws.runtime.status(spec.id).pid
    # The host's mount table holds nothing of a running workspace's.
    assert str(ws.runtime.dirs.data_dir) not in Path("/proc/self/mountinfo").read_text()
    pids = _container_pids(init)
    assert init in pids and len(pids) >= 2
    for pid in pids:
        uids, gids = _ids(pid)
        assert all(u in spec.ids for u in uids) and all(g in spec.ids for g in gids), pid
    # Through the container's root (the idmapped mount): owned by the range, setuid but
    # on a nosuid mount; on disk (the host's mount of the volume): the workspace's own
    # ids, on a nosuid mount too.
    seen = Path(f"/proc/{init}/root/root/suid-id")
    st = seen.stat()
    assert st.st_uid == spec.ids.host and st.st_mode & stat.S_ISUID
    assert os.statvfs(seen).f_flag & os.ST_NOSUID
    on_disk = (spec.rootfs / "root/suid-id").stat()
    assert on_disk.st_uid == 0 and os.statvfs(spec.rootfs).f_flag & os.ST_NOSUID
    # Two workspaces never share an id.
    assert not set(range(two[0].ids.host, two[0].ids.host + 65536)) & set(
        range(two[1].ids.host, two[1].ids.host + 65536)
    )

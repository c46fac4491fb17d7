"""A workspace's life on real runc: phases refused, freeze and thaw, a frozen filesystem,
five at once, adoption by a new runtime (an agent restart), port forwarding, and clean
teardown after a stop and after a start that failed half way."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.errors import PhaseError, RuncError, WorkspaceError
from loft.runtime.forward import unix_listener
from loft.runtime.oci import cgroup_path
from loft.runtime.phase import Phase
from loft.runtime.runc import ContainerState, Runc
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.spec import ExecRequest, Limits, WindowSize, WorkspaceSpec

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]
COUNTER = (
    "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done' "
    ">/dev/null 2>&1 &"
)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        yield ws


def _leftovers(ws: Workspaces, spec: WorkspaceSpec) -> list[str]:
    """What a workspace that is gone must not leave: mounts, cgroups, runc state, dirs."""
    found = []
    data = str(ws.runtime.dirs.data_dir)
    found += [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if data in ln]
    found += [str(d) for d in cgroup_dirs(cgroup_path(spec.id))]
    found += [s.id for s in ws.runtime.runc.list() if s.id == spec.id]
    found += [
        str(p)
        for p in (ws.runtime.dirs.bundle(spec.id), ws.runtime.dirs.stage(spec.id))
        if p.exists()
    ]
    return found


def test_sandbox_phases_refuse_illegal_commands(ws: Workspaces) -> None:
    spec = ws.spec()
    with pytest.raises(PhaseError, match="start it first"):
        ws.runtime.exec(spec.id, ExecRequest(("true",)))
    with pytest.raises(PhaseError):
        ws.runtime.freeze(spec.id)
    ws.runtime.start(spec)
    with pytest.raises(PhaseError):
        ws.runtime.start(spec)
    with pytest.raises(PhaseError):
        ws.runtime.thaw(spec.id)
    ws.runtime.freeze(spec.id)
    with pytest.raises(PhaseError, match="thaw it first"):
        ws.runtime.run(spec.id, ExecRequest(("true",)))
    ws.runtime.thaw(spec.id)
    ws.runtime.stop(spec.id)
    assert ws.runtime.status(spec.id).phase is Phase.STOPPED
    assert not _leftovers(ws, spec)


def _count(init: int) -> int:
    text = Path(f"/proc/{init}/root/tmp/count").read_text().strip()
    return int(text) if text else 0


def test_sandbox_freeze_stops_the_clock(ws: Workspaces) -> None:
    spec = ws.start()
    assert ws.sh(spec, COUNTER)[0] == 0
    init = ws.runtime.status(spec.id).pid
    time.sleep(0.3)
    ws.runtime.freeze(spec.id)
    assert ws.runtime.status(spec.id).phase is Phase.PAUSED
    frozen = _count(init)
    time.sleep(0.5)
    assert _count(init) == frozen > 0
    ws.runtime.thaw(spec.id)
    time.sleep(0.3)
    assert _count(init) > frozen
    ws.runtime.stop(spec.id, grace=1)
    assert not _leftovers(ws, spec)


def test_sandbox_frozen_filesystem_holds_writes(ws: Workspaces) -> None:
    spec = ws.start()
    ws.runtime.freeze(spec.id)
    ws.runtime.freeze_filesystem(spec.id)
    ws.runtime.thaw(spec.id)  # processes run; the filesystem still holds their writes
    writer = ws.runtime.exec(
        spec.id, ExecRequest(("sh", "-c", "echo x > ~/f; sync; echo done")), stdout=subprocess.PIPE
    )
    try:
        time.sleep(0.5)
        assert writer.poll() is None
        assert not (spec.rootfs / "home/runner/f").exists()
    finally:
        ws.runtime.thaw_filesystem(spec.id)
    out, _ = writer.communicate(timeout=20)
    assert out == b"done\n" and (spec.rootfs / "home/runner/f").read_text() == "x\n"
    assert ws.runtime.snapshot(spec.id).kind == "sandbox"
    # Stop thaws a filesystem left frozen.
    ws.runtime.freeze_filesystem(spec.id)
    ws.runtime.stop(spec.id, grace=0)
    (spec.rootfs / "written-after").write_text("thawed")


def test_sandbox_five_at_once_each_with_a_shell(ws: Workspaces) -> None:
    specs = [ws.start(Limits(memory=256 * 2**20, cpus=0.5, pids=256)) for _ in range(5)]
    shells = [
        ws.runtime.pty(s.id, ExecRequest(("bash", "--norc", "-i")), WindowSize()) for s in specs
    ]
    try:
        for spec, shell in zip(specs, shells, strict=True):
            os.write(shell.master, b"echo ready-$HOSTNAME; exit 7\n")
            assert shell.wait(30) == 7
            got = b""
            while True:
                try:
                    chunk = os.read(shell.master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                got += chunk
            assert f"ready-{spec.host_name}".encode() in got
        assert {ws.runtime.status(s.id).phase for s in specs} == {Phase.RUNNING}
    finally:
        for shell in shells:
            shell.close()
        for spec in specs:
            ws.runtime.stop(spec.id, grace=0)
    for spec in specs:
        assert not _leftovers(ws, spec)


def test_sandbox_adopted_by_a_new_runtime(ws: Workspaces) -> None:
    spec = ws.start()
    again = SandboxRuntime(ws.runtime.dirs.data_dir)  # the agent restarted
    adopted = {s.id: s for s in again.adopt()}
    assert adopted[spec.id].phase is Phase.RUNNING
    assert adopted[spec.id].pid == ws.runtime.status(spec.id).pid
    assert again.run(spec.id, ExecRequest(("echo", "hi"))).stdout == b"hi\n"
    again.freeze(spec.id)
    assert SandboxRuntime(ws.runtime.dirs.data_dir).status(spec.id).phase is Phase.PAUSED
    again.stop(spec.id)
    assert not _leftovers(ws, spec)


def test_sandbox_init_killed_from_outside_is_stopped(ws: Workspaces) -> None:
    spec = ws.start()
    os.kill(ws.runtime.status(spec.id).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while ws.runtime.status(spec.id).phase is not Phase.STOPPED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(PhaseError):
        ws.runtime.run(spec.id, ExecRequest(("true",)))
    ws.runtime.start(spec)  # the dead container is deleted first
    assert ws.runtime.run(spec.id, ExecRequest(("true",))).status == 0
    ws.runtime.stop(spec.id, grace=0)
    assert not _leftovers(ws, spec)


def test_sandbox_init_gone_before_adoption_reads_as_stopped(ws: Workspaces) -> None:
    """runc may still list an init that has ended by the time it is adopted (a stop in
    flight, the OOM killer): the caller hears "stopped", never a missing /proc entry."""
    spec = ws.start()
    ended = subprocess.Popen(["true"])
    ended.wait()

    class Late(Runc):
        def state(self, workspace: str) -> ContainerState | None:
            real = super().state(workspace)
            return real and dataclasses.replace(real, pid=ended.pid)

    again = SandboxRuntime(ws.runtime.dirs.data_dir, runc=Late(ws.runtime.runc.root))
    with pytest.raises(PhaseError, match="stopped"):
        again.stats(spec.id)
    assert spec.id not in again._live  # nothing held for a process gone
    ws.runtime.stop(spec.id, grace=0)
    assert not _leftovers(ws, spec)


def test_sandbox_failed_start_leaves_nothing(ws: Workspaces) -> None:
    broken = SandboxRuntime(ws.runtime.dirs.data_dir, init="/nonexistent/init")
    spec = ws.spec()
    with pytest.raises(RuncError):
        broken.start(spec)
    assert not _leftovers(ws, spec)
    assert broken.status(spec.id).phase is Phase.STOPPED


@pytest.mark.parametrize(
    ("name", "link"), [("usr/local", "/"), ("usr/local", "../../.."), ("usr", "/etc")]
)
def test_sandbox_usr_local_link_on_the_volume_is_refused(
    ws: Workspaces, name: str, link: str
) -> None:
    """The host binds the volume's /usr/local: a tenant's link there (a volume may come
    from anywhere) must not lead the host to bind another host directory; the start is
    refused and leaves nothing."""
    spec = ws.spec()
    if name == "usr/local":
        (spec.rootfs / "usr").mkdir(exist_ok=True)
    (spec.rootfs / name).symlink_to(link)
    with pytest.raises(WorkspaceError, match=f"/{name} on its volume is not a directory"):
        ws.runtime.start(spec)
    assert not _leftovers(ws, spec)


def _http_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        data = b""
        try:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            while chunk := s.recv(65536):
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            return b""  # nothing listens inside yet: the forwarder hung up
    return data


def test_sandbox_forward_a_port_over_a_unix_socket(ws: Workspaces, tmp_path: Path) -> None:
    spec = ws.start()
    assert (
        ws.sh(
            spec,
            "echo served > ~/index.html; nohup python3 -m http.server 8000 "
            "--bind 127.0.0.1 >/dev/null 2>&1 &",
        )[0]
        == 0
    )
    path = tmp_path / "fwd.sock"
    fwd = ws.runtime.forward(spec.id, 8000, unix_listener(path))
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        deadline = time.monotonic() + 20
        while not (reply := _http_get(path)):  # empty until the server listens
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"served\n")
    finally:
        ws.runtime.stop(spec.id, grace=0)  # closes the forwarder too
    with pytest.raises(OSError):
        _http_get(path)
    fwd.close()

"""cgroup limits enforced by the kernel, set through runc: memory (a child is OOM-killed,
the workspace and its shell survive), pids (a fork bomb stops at the limit and the host
stays responsive), CPU (a hog is throttled to its quota); and a full disk is ENOSPC for
the writer only."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_support import Workspaces, example, needs_runc, workspaces

from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.oci import cgroup_path
from loft.runtime.phase import Phase
from loft.runtime.spec import ExecRequest, Limits

pytestmark = [pytest.mark.serial, needs_runc, pytest.mark.timeout(900)]
MiB = 2**20


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspaces]:
    ex = example(tmp_path_factory)
    with workspaces(ex) as ws:
        yield ws


def test_sandbox_limits_memory_kills_the_hog_only(ws: Workspaces) -> None:
    spec = ws.start(Limits(memory=96 * MiB))
    hog = "python3 -c 'b = bytearray(400 * 2**20); print(len(b))'; echo status $?"
    status, out, _ = ws.sh(spec, hog)
    assert status == 0  # the shell survived its child
    assert out.strip().endswith("status 137")  # SIGKILL from the OOM killer
    assert ws.runtime.status(spec.id).phase is Phase.RUNNING
    assert ws.sh(spec, "echo alive")[1] == "alive\n"
    stats = ws.runtime.stats(spec.id)
    assert stats.memory_limit == 96 * MiB and stats.memory_peak <= 96 * MiB


def test_sandbox_limits_pids_stop_a_fork_bomb(ws: Workspaces) -> None:
    spec = ws.start(Limits(pids=64, cpus=0.5))
    bomb = ws.runtime.exec(
        spec.id,
        ExecRequest(("bash", "-c", "b() { b | b & }; b")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while ws.runtime.stats(spec.id).pids < 64:
            assert time.monotonic() < deadline, "the bomb never reached the limit"
            time.sleep(0.1)
        # The host stays responsive: a process starts and ends at once.
        t = time.monotonic()
        subprocess.run(["true"], check=True)
        assert time.monotonic() - t < 2
        assert ws.runtime.stats(spec.id).pids == 64
        cgroups = cgroup_dirs(cgroup_path(spec.id))
        assert cgroups
    finally:
        t = time.monotonic()
        ws.runtime.stop(spec.id, grace=0)
        bomb.wait(30)
    assert time.monotonic() - t < 20
    assert not cgroup_dirs(cgroup_path(spec.id))


def test_sandbox_limits_cpu_quota_throttles(ws: Workspaces) -> None:
    spec = ws.start(Limits(cpus=0.2))
    before = ws.runtime.stats(spec.id)
    t = time.monotonic()
    status, _, _ = ws.sh(spec, "timeout 2 sh -c 'while :; do :; done'; true")
    wall = time.monotonic() - t
    after = ws.runtime.stats(spec.id)
    used = (after.cpu_ns - before.cpu_ns) / 1e9
    assert status == 0
    assert after.cpu_throttled_periods > before.cpu_throttled_periods
    # 0.2 CPU over the run, with room for the exec's own start and a period's rounding.
    assert used <= 0.2 * wall + 0.15, (used, wall)


def test_sandbox_limits_full_disk_is_the_writers_own(ws: Workspaces, tmp_path: Path) -> None:
    spec = ws.start(size_mb=32)
    _status, out, _err = ws.sh(spec, "dd if=/dev/zero of=$HOME/fill bs=1M count=64 2>&1; echo $?")
    assert "No space left on device" in out and out.strip().endswith("1")
    assert ws.sh(spec, "rm $HOME/fill; echo ok > $HOME/after; cat $HOME/after")[1] == "ok\n"
    (tmp_path / "host").write_bytes(b"x" * MiB)  # the host's disks are not the volume

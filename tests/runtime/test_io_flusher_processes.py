"""PR_SET_IO_FLUSHER on the write path of an attached workspace: every thread of the
disk service and of nbdfuse carries the flag where the kernel grants it (it needs
CAP_SYS_RESOURCE); where it does not, both run anyway and say so."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from attachtool import Served, served_node

from loft.procfs import PF_LOCAL_THROTTLE, PF_MEMALLOC_NOIO, proc_stat
from loft.runtime import io_flusher
from loft.runtime.attach import attach, detach
from loft.runtime.template import create_workspace_volume

pytestmark = [pytest.mark.serial, pytest.mark.timeout(120)]
CAP_SYS_RESOURCE = 24
FLAGS = PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE


def _granted() -> bool:
    """Whether this host lets root set the flag (some drop CAP_SYS_RESOURCE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def _thread_flags(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = proc_stat(pid, int(task.name))
        if stat is not None:
            out.append(stat.flags & FLAGS)
    assert out
    return out


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with served_node(tmp_path) as s:
        yield s


def test_io_flusher_processes_of_an_attachment(served: Served) -> None:
    create_workspace_volume(served.bs, "vol", size=1 << 30)
    att = attach(served.bs, "vol", "ws", socket=served.attach_socket)
    try:
        assert served.node.proc is not None
        service, nbdfuse = served.node.proc.pid, att.nbdfuse_pid
        if _granted():
            assert att.io_flusher
            assert set(_thread_flags(service)) == set(_thread_flags(nbdfuse)) == {FLAGS}
        else:
            assert not att.io_flusher
            assert set(_thread_flags(service)) == set(_thread_flags(nbdfuse)) == {0}
            assert '"event": "disk.io_flusher", "ok": false' in served.node.log.read_text()
            log = (att.root.parent / "nbdfuse.log").read_text()
            assert "nbdfuse runs without the flag" in log
    finally:
        detach(att)


def test_io_flusher_wrapper_runs_the_program() -> None:
    ok = subprocess.run(io_flusher.command(["sh", "-c", "exit 3"]), capture_output=True)
    assert ok.returncode == 3
    missing = subprocess.run(io_flusher.command(["/nonexistent"]), capture_output=True)
    assert missing.returncode == 127 and b"/nonexistent" in missing.stderr

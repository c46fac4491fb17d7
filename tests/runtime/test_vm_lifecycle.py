"""VM workspaces on real QEMU (TCG) with the disk from loft's NBD server: boot and exec,
suspend and resume (hot and warm), disk durability, and bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from vm_support import Vms, needs_qemu, vms

from loft.runtime.phase import Phase
from loft.runtime.spec import ExecRequest

pytestmark = [pytest.mark.serial, needs_qemu]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Vms]:
    with vms(tmp_path) as v:
        yield v


def _sh(node: Vms, ws: str, script: str, user: int = 0) -> str:
    done = node.runtime.run(ws, ExecRequest(("sh", "-c", script), user=user, cwd="/"), timeout=30)
    assert done.status == 0, (done.status, done.stdout, done.stderr)
    return done.stdout.decode()


@pytest.mark.timeout(120)
def test_vm_boots_and_runs_a_command(node: Vms) -> None:
    spec = node.spec()
    st = node.runtime.start(spec)
    assert st.phase is Phase.RUNNING and st.pid > 0
    done = node.runtime.run(spec.id, ExecRequest(("echo", "hi")))
    assert (done.status, done.stdout, done.stderr) == (0, b"hi\n", b"")
    done = node.runtime.run(spec.id, ExecRequest(("sh", "-c", "id -u; cat; exit 3")), input=b"in")
    assert (done.status, done.stdout) == (3, b"1000\nin")
    node.runtime.stop(spec.id)
    assert node.runtime.status(spec.id).phase is Phase.STOPPED

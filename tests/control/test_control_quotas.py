"""Per-user quotas (workspaces, memory, CPUs, disk): checked at create, fork and limits
changes, answered 403 with a hint, never blocking a shrink."""

from __future__ import annotations

import pytest
from controltool import Harness

from loft.api import CreateWorkspace, Limits, Quotas
from loft.client import Forbidden

pytestmark = pytest.mark.timeout(120)
GIB = 1 << 30


def test_quotas_each_limit_is_enforced(control: Harness) -> None:
    alice = control.user("alice", workspaces=2, memory=3 * GIB, cpus=3.0, disk=3 * GIB)
    alice.create_workspace(CreateWorkspace("a", size=GIB, limits=Limits(GIB, 1.0)))
    cases = {
        "memory": CreateWorkspace("b", size=GIB, limits=Limits(3 * GIB, 1.0)),
        "cpus": CreateWorkspace("b", size=GIB, limits=Limits(GIB, 2.5)),
        "disk": CreateWorkspace("b", size=3 * GIB, limits=Limits(GIB, 1.0)),
    }
    for what, req in cases.items():
        with pytest.raises(Forbidden, match=f"quota exceeded: {what}") as info:
            alice.create_workspace(req)
        assert info.value.status == 403 and info.value.hint
    alice.create_workspace(CreateWorkspace("b", size=GIB, limits=Limits(GIB, 1.0)))
    with pytest.raises(Forbidden, match="quota exceeded: workspaces"):
        alice.create_workspace(CreateWorkspace("c", size=GIB, limits=Limits(GIB, 1.0)))
    with pytest.raises(Forbidden, match="workspaces"):
        alice.fork("a", "c")
    usage = alice.me().usage
    assert (usage.workspaces, usage.memory, usage.cpus, usage.disk) == (2, 2 * GIB, 2.0, 2 * GIB)
    assert {w.name for w in alice.workspaces()} == {"a", "b"}  # nothing half-made


def test_quotas_limits_changes_are_checked_and_shrinks_allowed(control: Harness) -> None:
    alice = control.user("alice", memory=2 * GIB)
    alice.create_workspace(CreateWorkspace("a", size=GIB, limits=Limits(GIB, 1.0)))
    with pytest.raises(Forbidden, match="memory"):
        alice.update_workspace("a", limits=Limits(3 * GIB, 1.0))
    assert alice.workspace("a").limits.memory == GIB
    control.admin().update_user("alice", quotas=Quotas(memory=GIB // 2))
    # over the new quota already: shrinking still works, growing does not
    assert alice.update_workspace("a", limits=Limits(GIB // 2, 1.0)).limits.memory == GIB // 2
    assert control.node.workspaces[alice.workspace("a").id].spec.limits.memory == GIB // 2


def test_quotas_an_admin_raises_them(control: Harness) -> None:
    alice = control.user("alice", workspaces=0)
    with pytest.raises(Forbidden):
        alice.create_workspace(CreateWorkspace("a", size=GIB))
    control.admin().update_user("alice", quotas=Quotas(workspaces=1))
    assert alice.create_workspace(CreateWorkspace("a", size=GIB)).owner == "alice"

"""Tenant isolation: user B's token reaches nothing of user A's through any route the API
offers; each attempt is a 404 exactly like a workspace that does not exist, and none of
them reaches the node."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from controltool import Harness

from loft.api import CreateWorkspace, EnvSpec, ExecRequest, Limits
from loft.client import Client, NotFound
from loft.control.accounts import Principal

pytestmark = pytest.mark.timeout(120)

#: Every operation on a workspace by name, as the SDK makes it.
ATTEMPTS: dict[str, Callable[[Client], object]] = {
    "read": lambda c: c.workspace("w"),
    "update": lambda c: c.update_workspace("w", idle_timeout=1.0),
    "delete": lambda c: c.delete_workspace("w"),
    "start": lambda c: c.start("w"),
    "stop": lambda c: c.stop("w"),
    "restore": lambda c: c.restore("w", "s1"),
    "fork": lambda c: c.fork("w", "mine"),
    "fork-snapshot": lambda c: c.fork("w", "mine", snapshot="s1"),
    "snapshots": lambda c: c.snapshots("w"),
    "snapshot": lambda c: c.snapshot("w", "s2"),
    "delete-snapshot": lambda c: c.delete_snapshot("w", "s1"),
    "exec": lambda c: c.exec("w", ["cat", "/secret"]),
    "exec-stream": lambda c: list(c.exec_stream("w", ExecRequest(["echo"]))),
    "read-file": lambda c: c.read_file("w", "/secret"),
    "write-file": lambda c: c.write_file("w", "/secret", b"mine now"),
    "delete-file": lambda c: c.delete_file("w", "/secret"),
    "env": lambda c: c.env("w"),
    "env-switch": lambda c: c.env_switch("w", EnvSpec(["curl"])),
    "env-rollback": lambda c: c.env_rollback("w"),
    "terminal": lambda c: c.terminal("w"),
    "port-tunnel": lambda c: c.port("w", 8000),
    "as-owner": lambda c: c.workspace("w", owner="alice"),
    "list-as-owner": lambda c: c.workspaces(owner="alice"),
}


@pytest.fixture(scope="module")
def control(shared_control: Harness) -> Harness:
    """One control plane for the module: B's attempts change nothing (they are 404s),
    and the tests that change something use names of their own."""
    return shared_control


@pytest.fixture(scope="module")
def alice_and_bob(control: Harness) -> tuple[Client, Client]:
    alice, bob = control.user("alice"), control.user("bob")
    control.workspace(alice, "w")
    alice.write_file("w", "/secret", b"alice's")
    alice.snapshot("w", "s1")
    return alice, bob


@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_isolation_another_users_workspace_is_404(
    control: Harness, alice_and_bob: tuple[Client, Client], attempt: str
) -> None:
    alice, bob = alice_and_bob
    before = dict(control.node.calls)
    with pytest.raises(NotFound):
        ATTEMPTS[attempt](bob)
    assert control.node.calls == before, "B's attempt reached the node"
    assert alice.read_file("w", "/secret") == b"alice's"
    assert [s.name for s in alice.snapshots("w")] == ["s1"]
    assert [w.name for w in bob.workspaces()] == []


def test_isolation_not_found_is_the_same_for_taken_and_free_names(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    _, bob = alice_and_bob
    token = bob._token
    taken = control.raw("GET", "/v1/workspaces/w", token)
    free = control.raw("GET", "/v1/workspaces/nobody-has-this", token)
    assert taken.status_code == free.status_code == 404
    assert taken.json()["hint"] == free.json()["hint"]
    # naming an owner: a user who exists and one who does not are answered alike
    real = control.raw("GET", "/v1/workspaces?owner=alice", token).json()
    made_up = control.raw("GET", "/v1/workspaces?owner=zed", token).json()
    assert real == {**made_up, "error": made_up["error"].replace("zed", "alice")}


def test_isolation_names_are_per_user(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_and_bob
    control.workspace(bob, "w")  # the same name: never "taken"
    bob.write_file("w", "/secret", b"bob's")
    assert alice.read_file("w", "/secret") == b"alice's"
    assert [w.owner for w in bob.workspaces()] == ["bob"]
    assert {w.owner for w in control.admin().workspaces()} == {"alice", "bob"}
    bob.delete_workspace("w")


def test_isolation_admin_reaches_any_workspace_by_owner(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    admin = control.admin()
    assert admin.read_file("w", "/secret", owner="alice") == b"alice's"
    with pytest.raises(NotFound):
        admin.workspace("w")  # the admin's own: none
    assert [w.name for w in admin.workspaces(owner="alice")] == ["w"]


def test_isolation_terminal_is_authorized_before_anything(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    alice, bob = alice_and_bob
    upgrade = {
        "connection": "Upgrade",
        "upgrade": "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
    }

    def status(token: str | None) -> int:
        r = control.raw("GET", "/v1/workspaces/w/terminal", token, headers=upgrade)
        if r.status_code != 101:
            assert r.json()["error"]
        return r.status_code

    assert status(None) == 401
    assert status(bob._token) == 404
    assert control.node.calls.get("terminal", 0) == 0
    # hers: authorized, and a shell is opened for her
    assert status(alice._token) == 101
    assert control.node.calls["terminal"] == 1


def test_isolation_preview_lookup_by_id_checks_the_owner(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    alice, _ = alice_and_bob
    ws_id = alice.workspace("w").id
    records = control.state.records
    who = {u.name: control.state.accounts.principal(u.name) for u in control.admin().users()}
    assert records.find(ws_id, who["alice"]) is not None
    assert records.find(ws_id, who["bob"]) is None
    assert records.find(ws_id, who["root"]) is not None
    assert records.find("a" * 10, Principal(who["alice"].id, "alice", False)) is None


def test_isolation_fork_into_own_account_only(
    control: Harness, alice_and_bob: tuple[Client, Client]
) -> None:
    alice, _ = alice_and_bob
    forked = alice.fork("w", "w2", snapshot="s1")
    assert forked.owner == "alice" and alice.read_file("w2", "/secret") == b"alice's"
    created = alice.create_workspace(
        CreateWorkspace("w3", size=1 << 30, limits=Limits(memory=1 << 30, cpus=1.0))
    )
    assert created.owner == "alice"
    alice.delete_workspace("w2")
    alice.delete_workspace("w3")

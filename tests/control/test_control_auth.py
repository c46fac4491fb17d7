"""Authentication: bearer tokens only, kept hashed, shown once; a missing, malformed,
unknown, wrong or revoked token is one answer (401 with a hint); admin routes are 403
to anyone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from controltool import Harness
from sqlalchemy import select

from loft.catalog import schema
from loft.client import Forbidden, Unauthorized
from loft.control.server import write_admin_token

pytestmark = pytest.mark.timeout(120)


def test_auth_no_token_is_401_with_a_hint(control: Harness) -> None:
    r = control.raw("GET", "/v1/workspaces")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["error"] and "Bearer" in body["hint"]


@pytest.mark.parametrize(
    "header",
    [
        "Bearer nonsense",
        "Bearer loft_0000000000000000_" + "A" * 43,  # unknown id
        "Basic dXNlcjpwYXNz",  # another scheme
        "Bearer",
    ],
)
def test_auth_bad_token_is_401(control: Harness, header: str) -> None:
    r = control.raw("GET", "/v1/me", headers={"authorization": header})
    assert r.status_code == 401 and r.json()["hint"]


def test_auth_wrong_secret_of_a_real_id_is_401(control: Harness) -> None:
    token_id = control.admin_token.split("_")[1]
    forged = f"loft_{token_id}_" + "B" * 43
    assert control.raw("GET", "/v1/me", forged).status_code == 401


def test_auth_revoked_token_stops_at_once(control: Harness) -> None:
    alice = control.user("alice")
    second = alice.create_token("laptop")
    other = control.client(second.token)
    assert other.me().name == "alice"
    assert alice.revoke_token(second.id).name == "laptop"
    with pytest.raises(Unauthorized):
        other.me()
    assert [t.name for t in alice.tokens()] == ["first"]


def test_auth_tokens_are_stored_hashed_and_never_listed(control: Harness) -> None:
    made = control.admin().create_user("bob")
    secret = made.token.split("_", 2)[2]  # the secret itself may hold "_"
    with control.catalog.read() as conn:
        rows = conn.execute(select(schema.tokens)).all()
    assert rows and all(secret not in str(tuple(r)) for r in rows)
    listed = control.client(made.token).tokens()
    assert all(not hasattr(t, "token") for t in listed)
    assert secret not in control.raw("GET", "/v1/tokens", made.token).text


def test_auth_a_user_cannot_revoke_another_users_token(control: Harness) -> None:
    alice, bob = control.user("alice"), control.user("bob")
    (token,) = alice.tokens()
    r = control.raw("DELETE", f"/v1/tokens/{token.id}", control.admin().create_token().token)
    assert r.status_code == 404  # the admin's own tokens only, too
    with pytest.raises(Exception, match="no token"):
        bob.revoke_token(token.id)
    assert alice.me().name == "alice"


def test_auth_admin_routes_are_403_to_users(control: Harness) -> None:
    alice = control.user("alice")
    for call in (alice.users, lambda: alice.create_user("eve"), lambda: alice.user("root")):
        with pytest.raises(Forbidden):
            call()
    assert control.raw("GET", "/metrics", alice._token).status_code == 403


def test_auth_local_socket_is_the_admin_without_a_token(control: Harness) -> None:
    from loft.client import Client

    assert stat.S_IMODE(os.stat(control.socket).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(control.socket.parent).st_mode) == 0o700
    with Client.light(f"unix://{control.socket}") as root:
        assert root.me().name == "root" and root.me().admin
    assert control.raw("GET", "/v1/me").status_code == 401  # not over TCP


def test_auth_first_admin_token_file_is_private(tmp_path: Path) -> None:
    path = write_admin_token(tmp_path / "data", "loft_x")
    assert path.read_text() == "loft_x\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_auth_first_admin_is_made_once(control: Harness) -> None:
    assert control.state.accounts.ensure_first_admin() is None
    assert [u.name for u in control.admin().users()] == ["root"]

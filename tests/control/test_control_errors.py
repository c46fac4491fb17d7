"""Bad input to every endpoint is a 4xx with a hint; a body over its limit is 413; a dead
or wedged node is 503 within a bounded time, never a hang."""

from __future__ import annotations

import time

import pytest
from controltool import Harness

pytestmark = pytest.mark.timeout(120)

W = "/v1/workspaces/w"
#: (method, path, JSON body or raw bytes, expected status): one or more per endpoint.
BAD: list[tuple[str, str, object, int]] = [
    ("POST", "/v1/users", {"name": "Bad Name"}, 422),
    ("POST", "/v1/users", {"name": "ok", "admin": "yes"}, 422),
    ("POST", "/v1/users", {"name": "ok", "extra": 1}, 422),
    ("POST", "/v1/users", b"{not json", 422),
    ("PATCH", "/v1/users/root", {"quotas": {"workspaces": -1}}, 422),
    ("GET", "/v1/users/UPPER", None, 422),
    ("DELETE", "/v1/users/nobody", None, 404),
    ("DELETE", "/v1/users/root", None, 409),
    ("POST", "/v1/tokens", {"name": "x" * 65}, 422),
    ("DELETE", "/v1/tokens/zzz", None, 422),
    ("POST", "/v1/workspaces", {"name": "-bad-"}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "size": "16G"}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "size": 1}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "runtime": "docker"}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "limits": {"cpus": 0}}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "env": {"packages": ["a b"]}}, 422),
    ("POST", "/v1/workspaces", {"name": "x", "env": {"packages": ["vim"], "spec": ""}}, 400),
    ("POST", "/v1/workspaces", {"name": "x", "metadata": {"k": 1}}, 422),
    ("POST", "/v1/workspaces", {"name": "w"}, 409),
    ("GET", "/v1/workspaces?state=sleeping", None, 422),
    ("GET", "/v1/workspaces?label=novalue", None, 422),
    ("GET", "/v1/workspaces/UPPER", None, 422),
    ("GET", "/v1/workspaces/none", None, 404),
    ("PATCH", W, {"idle_timeout": -1}, 422),
    ("DELETE", "/v1/workspaces/none", None, 404),
    ("POST", W + "/start?owner=Bad", None, 422),
    ("POST", "/v1/workspaces/none/stop", None, 404),
    ("POST", W + "/restore", {}, 422),
    ("POST", W + "/restore", {"snapshot": "nope"}, 404),
    ("POST", W + "/fork", {"name": "w"}, 409),
    ("POST", W + "/fork", {"name": "f", "snapshot": "nope"}, 404),
    ("GET", "/v1/workspaces/none/snapshots", None, 404),
    ("POST", W + "/snapshots", {"name": "../x"}, 422),
    ("POST", W + "/snapshots", {"name": "s1"}, 409),
    ("DELETE", W + "/snapshots/nope", None, 404),
    ("POST", W + "/exec", {"command": []}, 422),
    ("POST", W + "/exec", {"command": ["true"], "timeout": 0}, 422),
    ("POST", W + "/exec", {"command": ["true"], "cwd": "relative"}, 422),
    ("GET", W + "/files", None, 422),
    ("GET", W + "/files?path=relative", None, 422),
    ("GET", W + "/files?path=/missing", None, 404),
    ("PUT", W + "/files?path=", b"x", 422),
    ("DELETE", W + "/files?path=/missing", None, 404),
    ("GET", "/v1/workspaces/none/env", None, 404),
    ("POST", W + "/env", {"packages": "vim"}, 422),
    ("POST", W + "/env/rollback", {"generation": 0}, 422),
    ("POST", W + "/env/rollback", {"generation": 99}, 404),
    ("GET", "/v1/nothing-here", None, 404),
    ("PUT", "/v1/me", None, 405),
]


@pytest.fixture(scope="module")
def control(shared_control: Harness) -> Harness:
    h = shared_control
    h.workspace(h.admin(), "w")
    h.admin().snapshot("w", "s1")
    return h


@pytest.mark.parametrize(("method", "path", "body", "status"), BAD, ids=lambda v: str(v)[:40])
def test_errors_bad_input_is_4xx_with_a_hint(
    control: Harness, method: str, path: str, body: object, status: int
) -> None:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = control.raw(method, path, control.admin_token, **kw)
    assert r.status_code == status, r.text
    answer = r.json()
    assert set(answer) == {"error", "hint"} and answer["error"] and answer["hint"]


def test_errors_exec_in_a_stopped_workspace_is_409(control: Harness) -> None:
    admin = control.admin()
    control.workspace(admin, "stopped", start=False)
    r = control.raw(
        "POST", "/v1/workspaces/stopped/exec", control.admin_token, json={"command": ["true"]}
    )
    assert r.status_code == 409 and r.json()["hint"] == "start it first"


@pytest.mark.parametrize("path", ["/v1/workspaces", W + "/files?path=/big"])
def test_errors_body_over_the_limit_is_413(control: Harness, path: str) -> None:
    """Refused on its declared length, before the body is read: the client sends only the
    start of it and reads the answer (a client still sending 16 MiB may see the
    connection reset before it reads the 413, as with any server that refuses early)."""
    import http.client
    import json

    port = int(control.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("PUT" if "files" in path else "POST", path)
        conn.putheader("Authorization", f"Bearer {control.admin_token}")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str((16 << 20) + 1))
        conn.endheaders(b"x" * 65536)
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["hint"]
    finally:
        conn.close()


def test_errors_body_over_the_limit_without_a_length_is_413(control: Harness) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * (1 << 20)

    r = control.raw("PUT", W + "/files?path=/big", control.admin_token, content=chunks())
    assert r.status_code == 413
    with pytest.raises(Exception, match="no such file"):
        control.admin().read_file("w", "/big")


@pytest.mark.parametrize("mode", ["down", "hang"])
def test_errors_dead_or_wedged_node_is_503_in_bounded_time(control: Harness, mode: str) -> None:
    control.state.node_timeout = 0.5
    setattr(control.node, mode, True)
    try:
        for method, path, body in [
            ("GET", W, None),
            ("GET", "/v1/workspaces", None),
            ("POST", W + "/exec", {"command": ["true"]}),
            ("POST", W + "/snapshots", {}),
            ("GET", W + "/files?path=/a", None),
        ]:
            start = time.monotonic()
            r = control.raw(method, path, control.admin_token, json=body)
            assert r.status_code == 503, (path, r.text)
            assert r.json()["hint"]
            assert time.monotonic() - start < 3.0
        health = control.raw("GET", "/healthz").json()
        assert health == {"status": "ok", "node": "unavailable"}
    finally:
        setattr(control.node, mode, False)
        control.state.node_timeout = 5.0
    assert control.raw("GET", W, control.admin_token).status_code == 200

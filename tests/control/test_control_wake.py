"""Sleep and wake end to end: a workspace whose ``[run] command`` is ``python3 -m
http.server`` goes idle, the reaper snapshots and stops it, and the next preview request
wakes it and gets the page; wake latency shows in /metrics. An unauthorized request
wakes nothing; wakes are rate-limited; a server that never listens is a 504 in bounded
time. Also the run command's logs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from controltool import Harness
from previewtool import free_port, preview_control, request

from loft.api import CreateWorkspace, EnvSpec
from loft.client import Client, Invalid
from loft.control.wake import WakeLimits

pytestmark = pytest.mark.timeout(120)


def _spec(command: str) -> EnvSpec:
    return EnvSpec(spec=f'[env]\ndebian = ["python3"]\n\n[run]\ncommand = "{command}"\n')


@pytest.fixture
def site(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("<h1>hello from the workspace</h1>\n")
    return www


@pytest.fixture
def wake(catalog_url: str, tmp_path: Path) -> Iterator[Harness]:
    with preview_control(tmp_path, catalog_url, reap_every=0.2, wake_wait=10.0) as h:
        yield h


def _state(client: Client, name: str) -> str:
    return client.workspace(name).state


def _wait_state(client: Client, name: str, want: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _state(client, name) != want:
        assert time.monotonic() < deadline, f"{name} never became {want}"
        time.sleep(0.05)


def _serve(site: Path, port: int) -> EnvSpec:
    return _spec(f"exec python3 -m http.server {port} --bind 127.0.0.1 --directory {site}")


def _until_listening(h: Harness, port: int, wid: str, token: str) -> None:
    deadline = time.monotonic() + 20
    while request(h, port, wid, token=token).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_wake_on_request_end_to_end(wake: Harness, site: Path) -> None:
    admin = wake.admin()
    alice_made, bob_made = admin.create_user("alice"), admin.create_user("bob")
    alice = wake.client(alice_made.token)
    port = free_port()
    ws = alice.create_workspace(
        CreateWorkspace("web", env=_serve(site, port), size=1 << 30, idle_timeout=1.0)
    )
    _until_listening(wake, port, ws.id, alice_made.token)
    # idle: the reaper snapshots and stops it
    _wait_state(alice, "web", "stopped")
    assert any(s.name.startswith("idle-") for s in alice.snapshots("web"))
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)  # its server is really gone
    metrics = wake.raw("GET", "/metrics", wake.admin_token).text
    assert "loft_workspace_idle_stops_total 1.0" in metrics
    # strangers wake nothing
    starts = wake.node.calls.get("start", 0)
    assert request(wake, port, ws.id).status_code == 401
    assert request(wake, port, ws.id, token=bob_made.token).status_code == 403
    assert wake.node.calls.get("start", 0) == starts
    assert _state(alice, "web") == "stopped"
    # the owner's request wakes it and gets the page
    began = time.monotonic()
    r = request(wake, port, ws.id, token=alice_made.token)
    took = time.monotonic() - began
    assert r.status_code == 200, r.text
    assert "hello from the workspace" in r.text
    assert wake.node.calls["start"] == starts + 1
    assert took < 10
    metrics = wake.raw("GET", "/metrics", wake.admin_token).text
    m = re.search(r"loft_workspace_wake_to_first_byte_seconds_count (\S+)", metrics)
    assert m and float(m.group(1)) == 1.0
    s = re.search(r"loft_workspace_wake_to_first_byte_seconds_sum (\S+)", metrics)
    assert s and 0 < float(s.group(1)) <= took
    assert 'loft_preview_requests_total{outcome="woke"} 1.0' in metrics
    # its log kept both starts of its run command
    log = b"".join(alice.logs("web"))
    assert log.count(b"start: exec python3 -m http.server") == 2
    assert b"GET / HTTP/1.1" in log  # http.server's own access log, as it wrote it


def test_wake_is_rate_limited(tmp_path: Path, site: Path) -> None:
    with preview_control(tmp_path, reap_every=None, wake_wait=10.0) as h:
        assert h.server.proxy is not None
        h.server.proxy.waker.limits = WakeLimits(burst=2, every=3600)
        made = h.admin().create_user("alice")
        alice = h.client(made.token)
        port = free_port()
        ws = alice.create_workspace(
            CreateWorkspace("web", env=_serve(site, port), size=1 << 30, start=False)
        )
        for _ in range(2):
            assert request(h, port, ws.id, token=made.token).status_code == 200
            alice.stop("web")
        r = request(h, port, ws.id, token=made.token)
        assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
        assert _state(alice, "web") == "stopped"


def test_wake_of_a_server_that_never_listens_is_a_504(tmp_path: Path) -> None:
    with preview_control(tmp_path, reap_every=None, wake_wait=1.0) as h:
        made = h.admin().create_user("alice")
        alice = h.client(made.token)
        ws = alice.create_workspace(
            CreateWorkspace("web", env=_spec("sleep 600"), size=1 << 30, start=False)
        )
        began = time.monotonic()
        r = request(h, free_port(), ws.id, token=made.token)
        assert r.status_code == 504 and "loft logs" in r.text
        assert time.monotonic() - began < 5
        assert 'outcome="timeout"' in h.raw("GET", "/metrics", h.admin_token).text


def test_wake_follows_logs(tmp_path: Path) -> None:
    with preview_control(tmp_path, reap_every=None) as h:
        made = h.admin().create_user("alice")
        alice = h.client(made.token)
        env = _spec("for i in 1 2 3 4 5 6 7 8 9; do echo line-$i; sleep 0.2; done")
        alice.create_workspace(CreateWorkspace("job", env=env, size=1 << 30))
        seen = []
        for line in alice.logs("job", follow=True):
            seen.append(line)
            if b"line-9" in line:
                break
        assert [x.strip() for x in seen if x.startswith(b"line-")] == [
            f"line-{i}".encode() for i in range(1, 10)
        ]
        tail = b"".join(alice.logs("job", tail=20))
        assert len(tail) == 20


def test_wake_malformed_run_table_is_refused(control: Harness) -> None:
    alice = control.user("alice")
    for spec in ('[run]\ncommand = ""\n', "[run]\ncmd = 'x'\n", "run = 3\n", "[run\n"):
        with pytest.raises(Invalid) as e:
            alice.create_workspace(CreateWorkspace("w", env=EnvSpec(spec=spec), size=1 << 30))
        assert e.value.hint
    assert alice.workspaces() == []


def test_wake_cli_logs_through_the_api(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    with preview_control(tmp_path, reap_every=None) as h:
        made = h.admin().create_user("alice")
        alice = h.client(made.token)
        alice.create_workspace(
            CreateWorkspace("job", env=_spec("echo from-the-run-command"), size=1 << 30)
        )
        deadline = time.monotonic() + 10
        while b"exited" not in b"".join(alice.logs("job")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        env = {**os.environ, "LOFT_URL": h.url, "LOFT_TOKEN": made.token}
        out = subprocess.run(
            [str(Path(sys.executable).with_name("loft")), "logs", "job"],
            env=env,
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        assert b"from-the-run-command\n" in out and b"exited with status 0" in out

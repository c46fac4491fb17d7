"""Workspaces through the SDK, end to end on the fake node: every operation once, with
what the next one sees."""

from __future__ import annotations

import pytest
from controltool import Harness

from loft.api import CreateWorkspace, EnvSpec, ExecRequest, Limits
from loft.client import BadRequest, Client
from loft.telemetry import BUCKETS, ByteCount, MeterReport, OpLatency

pytestmark = pytest.mark.timeout(120)


def test_workspaces_lifecycle_round_trip(control: Harness) -> None:
    alice = control.user("alice")
    made = alice.create_workspace(
        CreateWorkspace("dev", EnvSpec(["python3"]), 2 << 30, metadata={"team": "a"})
    )
    assert (made.state, made.owner, made.node, made.env.packages) == (
        "running",
        "alice",
        "fake",
        ["python3"],
    )
    assert [w.name for w in alice.workspaces(labels={"team": "a"})] == ["dev"]
    assert alice.workspaces(labels={"team": "b"}) == []
    assert alice.stop("dev").state == "stopped"
    assert [w.name for w in alice.workspaces(state="stopped")] == ["dev"]
    assert alice.start("dev").state == "running"
    changed = alice.update_workspace("dev", limits=Limits(2 << 30, 2.0), idle_timeout=60.0)
    assert (changed.limits.cpus, changed.idle_timeout) == (2.0, 60.0)

    alice.write_file("dev", "/root/a.txt", b"one")
    alice.snapshot("dev", "first")
    alice.write_file("dev", "/root/a.txt", b"two")
    restored = alice.restore("dev", "first")
    assert alice.read_file("dev", "/root/a.txt") == b"one"
    alice.restore("dev", restored.undo_snapshot)  # undo the restore
    assert alice.read_file("dev", "/root/a.txt") == b"two"

    forked = alice.fork("dev", "dev2")  # a running workspace, as it is now
    assert forked.state == "running" and forked.metadata == {"team": "a"}
    assert alice.read_file("dev2", "/root/a.txt") == b"two"
    alice.delete_file("dev2", "/root/a.txt")
    assert alice.read_file("dev", "/root/a.txt") == b"two"

    env = alice.env_switch("dev", EnvSpec(["python3", "git"]))
    assert env.current == 2 and len(env.generations) == 2
    assert alice.env_rollback("dev").current == 1

    assert next(s.name for s in alice.snapshots("dev")) == "first"
    alice.delete_snapshot("dev", "first")
    assert alice.delete_workspace("dev2").deleted == "dev2"
    assert [w.name for w in alice.workspaces()] == ["dev"]


def test_workspaces_exec_streams_output_and_exit_code(control: Harness) -> None:
    alice = control.user("alice")
    control.workspace(alice, "dev")
    alice.write_file("dev", "/etc/motd", b"hello\x00\xff")
    result = alice.exec("dev", ["cat", "/etc/motd"])
    assert (result.code, result.stdout) == (0, b"hello\x00\xff")
    missing = alice.exec("dev", ["cat", "/nope"])
    assert missing.code == 1 and b"No such file" in missing.stderr
    assert alice.exec("dev", ["exit", "3"]).code == 3
    assert alice.exec("dev", ["env"], env={"A": "1"}).stdout == b"A=1\n"
    events = list(alice.exec_stream("dev", ExecRequest(["echo", "hi"])))
    assert [e.type for e in events] == ["stdout", "exit"]
    slow = alice.exec("dev", ["sleep", "5"], timeout=0.2)
    assert slow.code == 124


def test_workspaces_light_client_speaks_the_same(control: Harness) -> None:
    alice = control.user("alice")
    control.workspace(alice, "dev")
    token = alice._token
    for light in (Client.light(control.url, token), Client.light(f"unix://{control.socket}")):
        owner = None if light.url.startswith("http") else "alice"
        assert light.exec("dev", ["echo", "x"], owner=owner).stdout == b"x\n"
        assert light.write_file("dev", "/f", b"1", owner=owner).size == 1
        assert [w.name for w in light.workspaces(owner=owner)] == ["dev"]


def test_workspaces_metrics_are_for_admins(control: Harness) -> None:
    alice = control.user("alice")
    control.workspace(alice, "dev")
    assert control.raw("GET", "/metrics").status_code == 401
    assert control.raw("GET", "/metrics", alice._token).status_code == 403
    text = control.raw("GET", "/metrics", control.admin_token).text
    assert 'loft_workspaces{state="running"} 1.0' in text
    assert 'loft_workspace_operation_seconds_count{operation="create"} 1.0' in text
    assert 'loft_api_requests_total{method="POST",route="/v1/workspaces",status="201"}' in text
    for hook in (
        "loft_nbd_request_seconds",
        "loft_commit_lag_seconds",
        "loft_workspace_idle_stops",
    ):
        assert f"# TYPE {hook}" in text


def test_workspaces_metrics_show_the_disk_services_counts(control: Harness) -> None:
    """The node's totals become Prometheus histograms (cumulative buckets) and counters."""
    latency = [0] * (len(BUCKETS) + 1)
    latency[0], latency[-1] = 2, 1
    control.node.disk_counts = (
        MeterReport([OpLatency("read", latency, 12.5, 3)], [ByteCount("read", 8192)]),
        MeterReport([], [ByteCount("up", 1 << 20)]),
    )
    text = control.raw("GET", "/metrics", control.admin_token).text
    first = f'loft_nbd_request_seconds_bucket{{le="{BUCKETS[0]}",op="read"}} 2.0'
    assert first in text
    assert 'loft_nbd_request_seconds_bucket{le="+Inf",op="read"} 3.0' in text
    assert 'loft_nbd_request_seconds_sum{op="read"} 12.5' in text
    assert 'loft_nbd_bytes_total{direction="read"} 8192.0' in text
    assert 'loft_chunk_store_bytes_total{direction="up"} 1.048576e+06' in text


def test_workspaces_vm_stop_cold_and_fork_live(control: Harness) -> None:
    alice = control.user("alice")
    control.workspace(alice, "dev")  # a sandbox
    with pytest.raises(BadRequest, match="--live forks a running VM; 'dev' is a sandbox") as e:
        alice.fork("dev", "dev2", live=True)
    assert e.value.hint == "fork it without --live: loft fork dev dev2"
    assert [w.name for w in alice.workspaces()] == ["dev"]  # no record made
    assert "fork" not in control.node.calls
    assert alice.stop("dev", cold=True).state == "stopped"  # a sandbox's stop is cold

    box = alice.create_workspace(CreateWorkspace("box", runtime="vm"))
    assert box.runtime == "vm" and alice.workspace("box").runtime == "vm"
    with pytest.raises(BadRequest, match="a new machine-id is for a live fork") as e:
        alice.fork("box", "box2", new_machine_id=True)
    assert e.value.hint == "add --live: loft fork box box2 --live --new-machine-id"
    forked = alice.fork("box", "box2", live=True, new_machine_id=True)
    assert (forked.runtime, forked.state) == ("vm", "running")
    for body in ({"cold": "yes"}, {"cold": True, "hot": True}):
        r = control.raw("POST", "/v1/workspaces/box/stop", alice._token, json=body)
        assert r.status_code == 422, r.text
    r = control.raw("POST", "/v1/workspaces/box/fork", alice._token,
                    json={"name": "box3", "live": 1})  # fmt: skip
    assert r.status_code == 422, r.text
    assert alice.workspace("box").state == "running"

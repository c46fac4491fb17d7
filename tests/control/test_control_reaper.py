"""The idle reaper: its policy (pure, given the time), and the loop against a control
plane: node-reported use keeps a workspace up, a command in flight keeps it up, an
attached terminal is warned before the stop, ``0`` is never."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from controltool import Harness
from wsclient import WebSocket

from loft.api import DEFAULT_IDLE_TIMEOUT, CreateWorkspace
from loft.control.activity import Activity
from loft.control.ratelimit import Buckets
from loft.control.reaper import IdlePolicy, Stop, Warn, warn_before

pytestmark = pytest.mark.timeout(120)


def test_reaper_policy_warns_once_then_stops() -> None:
    p = IdlePolicy()
    timeouts = {"a": 900.0, "never": 0.0}
    last = {"a": 0.0, "never": 0.0}
    assert p.plan(100.0, timeouts, last) == []
    assert p.plan(840.0, timeouts, last) == [Warn("a", 60.0)]
    assert p.plan(850.0, timeouts, last) == []  # once per idle spell
    assert p.plan(900.0, timeouts, last) == [Stop("a", 0.0)]
    last["a"] = 880.0  # used again: a new spell, warned again
    assert p.plan(1720.0, timeouts, last) == [Warn("a", 60.0)]
    assert p.plan(10**9, {"never": 0.0}, {"never": 0.0}) == []


def test_reaper_warning_point_is_proportional_for_short_timeouts() -> None:
    assert warn_before(DEFAULT_IDLE_TIMEOUT) == 60.0
    assert warn_before(8.0) == 2.0
    assert DEFAULT_IDLE_TIMEOUT == 15 * 60


def test_reaper_activity_busy_blocks_a_stop() -> None:
    a = Activity(clock=lambda: 5.0)
    with a.busy("w"):
        assert not a.begin_stop("w")
    assert a.begin_stop("w")
    assert not a.begin_stop("w")  # one stop at a time
    a.end_stop("w")
    assert a.last("w") == 5.0


def test_reaper_rate_buckets() -> None:
    b = Buckets(burst=2, rate=0.5)
    for _ in range(2):
        assert b.wait("k", 0.0) == 0
        b.take("k", 0.0)
    assert b.wait("k", 0.0) == pytest.approx(2.0)
    assert b.wait("other", 0.0) == 0
    assert b.wait("k", 2.0) == 0


@pytest.fixture
def reaping(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path, reap_every=0.1)
    try:
        yield h
    finally:
        h.close()


def _state(h: Harness, name: str) -> str:
    return h.admin().workspace(name).state


def test_reaper_stops_idle_and_spares_the_rest(reaping: Harness) -> None:
    admin = reaping.admin()
    for name, timeout in (("idle", 0.5), ("never", 0.0), ("forwarded", 0.5)):
        admin.create_workspace(CreateWorkspace(name, size=1 << 30, idle_timeout=timeout))
    ids = {w.name: w.id for w in admin.workspaces()}
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # a forward the node serves keeps this one up
        reaping.node.touch(ids["forwarded"])
        time.sleep(0.05)
    assert _state(reaping, "idle") == "stopped"
    assert _state(reaping, "forwarded") == "running"
    assert _state(reaping, "never") == "running"
    # a command running (quiet, longer than the timeout) keeps its workspace up
    admin.create_workspace(CreateWorkspace("busy", size=1 << 30, idle_timeout=0.5))
    assert admin.exec("busy", ["sleep", "1.5"]).code == 0
    assert _state(reaping, "busy") == "running"
    snaps = [s.name for s in admin.snapshots("idle")]
    assert len(snaps) == 1 and snaps[0].startswith("idle-")
    text = reaping.raw("GET", "/metrics", reaping.admin_token).text
    stops = re.search(r"^loft_workspace_idle_stops_total (\S+)", text, re.M)
    assert stops and float(stops.group(1)) >= 1  # "busy" may be idle again by now


def test_reaper_warns_an_attached_terminal_then_stops(reaping: Harness) -> None:
    admin = reaping.admin()
    admin.create_workspace(CreateWorkspace("w", size=1 << 30, idle_timeout=2.0))
    port = int(reaping.url.rsplit(":", 1)[1])
    headers = {"authorization": f"Bearer {reaping.admin_token}"}
    ws = WebSocket(port, "/v1/workspaces/w/terminal", headers=headers)
    seen = []
    while True:
        msg = ws.recv(timeout=10)
        if isinstance(msg, dict):
            seen.append(msg)
            if msg["type"] == "exit":
                break
    kinds = [m["type"] for m in seen]
    assert kinds[0] == "session" and "idle" in kinds and kinds[-1] == "exit"
    warning = next(m for m in seen if m["type"] == "idle")
    assert 0 < warning["stop_in"] <= warn_before(2.0)
    # the shell's exit is the stop under way (it ends every terminal first), not its end
    deadline = time.monotonic() + 10
    while _state(reaping, "w") != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.05)

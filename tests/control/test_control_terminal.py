"""The terminal WebSocket: a real shell under a real PTY (the fake node's), its
protocol, resizes, and re-attaching within the grace period."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from controltool import Harness
from wsclient import Closed, Rejected, WebSocket

from loft.client import Client

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def term_control(tmp_path: Path) -> Iterator[Harness]:
    """A control plane (SQLite) whose terminals wait 2 s for their client."""
    h = Harness(f"sqlite:///{tmp_path / 'catalog.db'}", tmp_path, terminal_grace=2.0)
    try:
        yield h
    finally:
        h.close()


def _open(h: Harness, token: str, query: str = "") -> WebSocket:
    path = "/v1/workspaces/w/terminal" + (f"?{query}" if query else "")
    port = int(h.url.rsplit(":", 1)[1])
    return WebSocket(port, path, headers={"authorization": f"Bearer {token}"})


def _session(ws: WebSocket) -> dict[str, object]:
    first = ws.recv()
    assert isinstance(first, dict) and first["type"] == "session", first
    return first


@pytest.fixture
def alice(term_control: Harness) -> tuple[Client, str]:
    admin = term_control.admin()
    made = admin.create_user("alice")
    client = term_control.client(made.token)
    term_control.workspace(client, "w")
    return client, made.token


def test_terminal_echo_hi(term_control: Harness, alice: tuple[Client, str]) -> None:
    ws = _open(term_control, alice[1])
    _session(ws)
    ws.send_bytes(b"echo hi\n")
    # a line that is just "hi" (the terminal's echo of what was typed is another line)
    ws.read_until(re.compile(rb"[\r\n]hi\r\n"))
    ws.send_bytes(b"exit 3\n")
    while True:
        msg = ws.recv()
        if isinstance(msg, dict) and msg["type"] == "exit":
            assert msg["code"] == 3
            break
    assert isinstance(ws.recv(), Closed)


def test_terminal_resize_changes_stty_size(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    ws = _open(term_control, alice[1], "rows=30&cols=100")
    _session(ws)
    ws.send_bytes(b"stty size\n")
    ws.read_until(b"30 100\r\n")
    ws.send_json({"type": "resize", "rows": 50, "cols": 132})
    ws.send_bytes(b"stty size\n")
    ws.read_until(b"50 132\r\n")


def test_terminal_reconnect_within_grace_is_the_same_shell(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    ws = _open(term_control, alice[1])
    sid = _session(ws)["id"]
    ws.send_bytes(b"SECRET_OF_THIS_SHELL=42; echo set-$((1000+1))-$$\n")
    pid = ws.read_until(re.compile(rb"set-1001-([0-9]+)\r\n"))
    pid = pid.rsplit(b"-", 1)[1].removesuffix(b"\r\n")
    ws.close()  # the client goes away without a word
    time.sleep(0.3)
    again = _open(term_control, alice[1], f"session={sid}")
    assert _session(again)["id"] == sid
    again.send_bytes(b"echo value-$((SECRET_OF_THIS_SHELL+1))-$$\n")
    again.read_until(b"value-43-" + pid + b"\r\n")


def test_terminal_output_while_detached_is_kept(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    ws = _open(term_control, alice[1])
    sid = _session(ws)["id"]
    ws.send_bytes(b"sleep 0.5; echo written-$((1+1))-while-away\n")
    ws.close()
    time.sleep(1.0)
    again = _open(term_control, alice[1], f"session={sid}")
    _session(again)
    again.read_until(b"written-2-while-away\r\n")


def test_terminal_session_ends_after_its_grace(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    ws = _open(term_control, alice[1])
    sid = _session(ws)["id"]
    ws.close()
    deadline = time.monotonic() + 10
    while term_control.state.terminals.find(str(sid), _wid(term_control), _uid(term_control)):
        assert time.monotonic() < deadline, "the session outlived its grace"
        time.sleep(0.1)
    with pytest.raises(Rejected) as e:
        _open(term_control, alice[1], f"session={sid}")
    assert e.value.status == 404


def test_terminal_session_is_its_users_only(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    ws = _open(term_control, alice[1])
    sid = _session(ws)["id"]
    # the admin may open alice's workspace, but not take over alice's session
    with pytest.raises(Rejected) as e:
        _open(term_control, term_control.admin_token, f"owner=alice&session={sid}")
    assert e.value.status == 404
    ws.send_bytes(b"echo still-$((2+2))-mine\n")
    ws.read_until(b"still-4-mine\r\n")


def test_terminal_bad_messages(term_control: Harness, alice: tuple[Client, str]) -> None:
    ws = _open(term_control, alice[1])
    _session(ws)
    for bad in ({"type": "resize", "rows": 0, "cols": 80}, {"type": "resize", "rows": "9"}, [1]):
        ws.send_json(bad)
        msg = ws.recv()
        while isinstance(msg, bytes):  # the prompt
            msg = ws.recv()
        assert isinstance(msg, dict) and msg["type"] == "error" and msg["hint"], msg
    ws.send_bytes(b"x" * (64 * 1024 + 1))
    closed = None
    while not isinstance(closed, Closed):
        closed = ws.recv()
    assert closed.code == 1009
    for query in ("rows=0", "cols=1001", "rows=abc"):
        with pytest.raises(Rejected) as e:
            _open(term_control, alice[1], query)
        assert e.value.status == 422


def test_terminal_of_a_stopped_workspace_is_a_409(
    term_control: Harness, alice: tuple[Client, str]
) -> None:
    alice[0].stop("w")
    with pytest.raises(Rejected) as e:
        _open(term_control, alice[1])
    assert e.value.status == 409


def _wid(h: Harness) -> str:
    return h.admin().workspace("w", owner="alice").id


def _uid(h: Harness) -> int:
    return h.state.accounts.principal("alice").id

"""The preview proxy end to end: authorization before anything reaches the workspace,
credentials stripped, the login ticket and cookie, public previews, WebSockets, and
attacks on its parsing (it is an untrusted boundary: docs/security.md)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from controltool import Harness
from previewtool import EchoServer, host, preview_control, raw_request, request

from loft.client import Client

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pv(catalog_url: str, tmp_path: Path) -> Iterator[Harness]:
    with preview_control(tmp_path, catalog_url) as h:
        yield h


@pytest.fixture
def people(pv: Harness) -> dict[str, Any]:
    admin = pv.admin()
    a, b = admin.create_user("alice"), admin.create_user("bob")
    alice = pv.client(a.token)
    pv.workspace(alice, "w")
    return {"alice": alice, "bob": pv.client(b.token), "a": a.token, "b": b.token}


def _wid(client: Client) -> str:
    return client.workspace("w").id


def test_preview_owner_token_reaches_the_port_and_is_stripped(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    wid = _wid(people["alice"])
    r = request(
        pv,
        echo.port,
        wid,
        "/some/path?q=1",
        token=people["a"],
        headers={"cookie": "app=1; loft_preview=x; other=2", "x-forwarded-for": "6.6.6.6"},
    )
    assert r.status_code == 200, r.text
    seen = r.json()
    headers = dict(seen["headers"])
    assert seen["path"] == "/some/path?q=1"
    assert "authorization" not in headers  # the API token never reaches the workspace
    assert headers["cookie"] == "app=1; other=2"  # nor the preview cookie
    assert headers["x-forwarded-for"] == "127.0.0.1"  # made up ones are replaced
    assert headers["host"] == host(pv, echo.port, wid)
    assert r.headers["set-cookie"] == "app=1"


def test_preview_keeps_the_applications_own_authorization(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    wid = _wid(people["alice"])
    pv.admin().update_workspace("w", preview_public=True, owner="alice")
    r = request(pv, echo.port, wid, headers={"authorization": "Basic dXNlcjpwYXNz"})
    assert dict(r.json()["headers"])["authorization"] == "Basic dXNlcjpwYXNz"


def test_preview_private_refuses_strangers_before_the_node_hears_of_it(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    wid = _wid(people["alice"])
    before = dict(pv.node.calls)
    assert request(pv, echo.port, wid).status_code == 401
    assert request(pv, echo.port, wid, token="loft_0000000000000000_" + "A" * 43).status_code == 401
    r = request(pv, echo.port, wid, token=people["b"])
    assert r.status_code == 403 and "not yours" in r.text
    # bob's token and an unknown id answer alike: no oracle of who has what
    assert request(pv, echo.port, "f" * 10, token=people["b"]).status_code == 403
    assert request(pv, echo.port, "f" * 10).status_code == 401
    assert pv.node.calls == before  # nothing reached the node: no connect, no start
    # the admin may
    assert request(pv, echo.port, wid, token=pv.admin_token).status_code == 200


def test_preview_public_is_open_to_all(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    alice = people["alice"]
    wid = _wid(alice)
    assert request(pv, echo.port, wid).status_code == 401
    changed = alice.update_workspace("w", preview_public=True)
    assert changed.preview_public
    assert request(pv, echo.port, wid).status_code == 200
    alice.update_workspace("w", preview_public=False)
    assert request(pv, echo.port, wid).status_code == 401


def _login(pv: Harness, access_url: str) -> httpx.Response:
    parts = urlsplit(access_url)
    return httpx.get(
        f"http://127.0.0.1:{pv.preview_port}{parts.path}?{parts.query}",
        headers={"host": parts.netloc},
        timeout=10,
    )


def test_preview_login_ticket_becomes_a_host_only_cookie(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    alice = people["alice"]
    wid = _wid(alice)
    access = alice.preview("w", echo.port)
    assert access.url == f"http://{host(pv, echo.port, wid)}/"
    assert not access.public
    r = _login(pv, access.login_url)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert r.headers["referrer-policy"] == "no-referrer"
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert "domain=" not in set_cookie.lower()  # host-only: no other preview gets it
    cookie = re.match(r"loft_preview=([^;]+)", set_cookie)
    assert cookie
    jar = {"cookie": f"loft_preview={cookie.group(1)}"}
    seen = request(pv, echo.port, wid, headers=jar)
    assert seen.status_code == 200
    assert "cookie" not in dict(seen.json()["headers"])
    # the ticket works once
    assert _login(pv, access.login_url).status_code == 401
    # the cookie is for this port's host only
    assert request(pv, echo.port + 1, wid, headers=jar).status_code == 401
    # another site's page cannot use it (nor another tenant's preview)
    other = {"origin": f"http://{host(pv, 80, 'e' * 10)}"}
    assert request(pv, echo.port, wid, headers={**jar, **other}).status_code == 403
    fetch = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "cors"}
    assert request(pv, echo.port, wid, headers={**jar, **fetch}).status_code == 403
    nav = {"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"}
    assert request(pv, echo.port, wid, headers={**jar, **nav}).status_code == 200
    same = {"origin": f"http://{host(pv, 3000, wid)}"}  # the same workspace's other port
    assert request(pv, echo.port, wid, headers={**jar, **same}).status_code == 200
    # a forged or altered cookie is nothing
    forged = {"cookie": "loft_preview=" + cookie.group(1)[:-2] + "AA"}
    assert request(pv, echo.port, wid, headers=forged).status_code == 401


def test_preview_cookie_dies_with_its_token(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    alice = people["alice"]
    wid = _wid(alice)
    extra = alice.create_token("browser")
    mine = pv.client(extra.token)
    r = _login(pv, mine.preview("w", echo.port).login_url)
    jar = {"cookie": r.headers["set-cookie"].split(";")[0]}
    assert request(pv, echo.port, wid, headers=jar).status_code == 200
    alice.revoke_token(extra.id)
    assert request(pv, echo.port, wid, headers=jar).status_code == 401


def test_preview_ticket_of_someone_else_is_useless(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    wid = _wid(people["alice"])
    with pytest.raises(Exception, match="no workspace"):
        people["bob"].preview("w", echo.port)
    access = people["alice"].preview("w", echo.port)
    # a ticket is bound to its host: moved to another port's host it is refused
    moved = access.login_url.replace(f"{echo.port}--{wid}", f"{echo.port + 1}--{wid}")
    assert _login(pv, moved).status_code == 401


def test_preview_keepalive_requests_are_each_authorized(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    """A second request on the same connection for someone else's workspace is refused
    (each request is parsed and checked: no smuggling past the first one's check)."""
    wid = _wid(people["alice"])
    pv.workspace(people["bob"], "w")
    bobs = people["bob"].workspace("w").id
    token = people["a"]
    auth = f"Authorization: Bearer {token}\r\n"
    first = f"GET /1 HTTP/1.1\r\nHost: {host(pv, echo.port, wid)}\r\n{auth}\r\n"
    second = (
        f"GET /2 HTTP/1.1\r\nHost: {host(pv, echo.port, bobs)}\r\n{auth}Connection: close\r\n\r\n"
    )
    out = raw_request(pv, (first + second).encode())
    statuses = re.findall(rb"HTTP/1.1 (\d{3})", out)
    assert statuses == [b"200", b"403"], out[:400]


def test_preview_websocket_is_relayed(pv: Harness, people: dict[str, Any]) -> None:
    """An upgrade is forwarded, answered 101 by the workspace's server, and bytes flow
    both ways after it."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    seen: dict[str, bytes] = {}

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            seen["head"] = head
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n"
            )
            while data := conn.recv(4096):
                conn.sendall(data.upper())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    wid = _wid(people["alice"])
    req = (
        f"GET /ws HTTP/1.1\r\nHost: {host(pv, port, wid)}\r\n"
        f"Authorization: Bearer {people['a']}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", pv.preview_port), timeout=10) as c:
        c.sendall(req.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += c.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101")
        c.sendall(b"hello through the proxy")
        got = b""
        while len(got) < 23:
            got += c.recv(4096)
        assert got == b"HELLO THROUGH THE PROXY"
    assert b"authorization" not in seen["head"].lower()
    assert b"upgrade: websocket" in seen["head"].lower()
    srv.close()


def test_preview_nothing_listening_is_a_502(pv: Harness, people: dict[str, Any]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening
        r = request(pv, port, _wid(people["alice"]), token=people["a"])
    assert r.status_code == 502 and "nothing listens" in r.text


def test_preview_large_bodies_stream_both_ways(
    pv: Harness, people: dict[str, Any], echo: EchoServer
) -> None:
    wid = _wid(people["alice"])
    r = request(pv, echo.port, wid, "/big/5000000", token=people["a"])
    assert r.status_code == 200 and len(r.content) == 5_000_000
    assert "set-cookie" not in r.headers  # the app may not set the proxy's cookie
    body = b"y" * 300_000

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 50_000):
            yield body[i : i + 50_000]

    r = request(pv, echo.port, wid, "/up", method="POST", token=people["a"], content=chunks())
    assert r.json()["body"] == body.decode()
    r = request(pv, echo.port, wid, "/up", method="PUT", token=people["a"], content=body)
    assert r.json()["body"] == body.decode()


def _one_answer_server(answer: bytes) -> tuple[socket.socket, int]:
    """A server on the host's loopback that reads a request head and sends ``answer``
    as is, then closes (for each connection)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (more := conn.recv(65536)):
                    head += more
                # A HEAD's relay stops reading after the head: the rest meets a reset.
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_preview_sized_bodies_keep_their_framing(pv: Harness, people: dict[str, Any]) -> None:
    """A body whose length the head gives is relayed past h11 on the workspace's side:
    the client still gets exactly that length, a HEAD no body, the next request on the
    connection its own answer, and a body cut short a cut connection, never a longer or
    shorter message that a keep-alive client would misread."""
    wid = _wid(people["alice"])
    body = bytes(range(256)) * 8192  # 2 MiB, more than one read
    whole = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    server, port = _one_answer_server(whole)
    try:
        with httpx.Client(timeout=30) as c:
            url = f"http://127.0.0.1:{pv.preview_port}/"
            headers = {"host": host(pv, port, wid), "authorization": f"Bearer {people['a']}"}
            for _ in range(2):  # one kept-alive connection, two answers
                r = c.get(url, headers=headers)
                assert r.status_code == 200 and r.content == body
            r = c.head(url, headers=headers)
            assert r.status_code == 200 and r.content == b""
    finally:
        server.close()
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"z" * 10
    server, port = _one_answer_server(short)
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            request(pv, port, wid, token=people["a"])
    finally:
        server.close()


# --- attacks on the parser (SQLite only: nothing here touches the catalog's kind) -------


@pytest.fixture
def attacked(tmp_path: Path) -> Iterator[Harness]:
    with preview_control(tmp_path) as h:
        yield h


def _status(out: bytes) -> int:
    m = re.match(rb"HTTP/1.1 (\d{3})", out)
    assert m, out[:200]
    return int(m.group(1))


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"Host: x\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"BLAH\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: 80--" + b"a" * 10 + b".preview.localhost\r\nX: \x00\r\n\r\n",
            400,
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400),
        (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: 99999--" + b"a" * 10 + b".preview.localhost\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: 080--" + b"a" * 10 + b".preview.localhost\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: 80--a_b" + b"a" * 9 + b".preview.localhost\r\n\r\n", 404),
        (b"GET / HTTP/1.1\r\nHost: x.80--" + b"a" * 10 + b".preview.localhost\r\n\r\n", 404),
        (
            b"GET / HTTP/1.1\r\nHost: 80--" + b"a" * 10 + b".preview.localhost\r\n"
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
    ],
)
def test_preview_attack_malformed_requests(attacked: Harness, data: bytes, status: int) -> None:
    out = raw_request(attacked, data)
    assert _status(out) == status
    assert attacked.node.calls.get("connect", 0) == 0


def test_preview_attack_slow_head_is_cut_off(tmp_path: Path) -> None:
    from loft.control.preview.proxy import ProxyLimits

    with preview_control(tmp_path) as h:
        h.server.proxy.limits = ProxyLimits(head_timeout=0.5)  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", h.preview_port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x")
            s.settimeout(5)
            assert s.recv(100) == b""  # closed, not held


def test_preview_attack_connection_flood_is_capped(tmp_path: Path) -> None:
    from loft.control.preview.proxy import ProxyLimits

    with preview_control(tmp_path) as h:
        h.server.proxy.limits = ProxyLimits(max_connections=5)  # type: ignore[union-attr]
        held = [
            socket.create_connection(("127.0.0.1", h.preview_port), timeout=5) for _ in range(5)
        ]
        try:
            extra = socket.create_connection(("127.0.0.1", h.preview_port), timeout=5)
            try:
                extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert extra.recv(100) == b""  # closed at once
            except ConnectionResetError:
                pass  # closed at once, before it read what was sent
            extra.close()
        finally:
            for s in held:
                s.close()


def test_preview_listener_is_not_the_apis(attacked: Harness) -> None:
    """The API is not served on the preview origin, nor previews on the API's."""
    assert attacked.preview_port != int(attacked.url.rsplit(":", 1)[1])
    out = raw_request(
        attacked,
        f"GET /v1/workspaces HTTP/1.1\r\nHost: 127.0.0.1:{attacked.preview_port}\r\n"
        f"Authorization: Bearer {attacked.admin_token}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert _status(out) == 404 and b"not a preview address" in out


def test_preview_without_a_proxy_is_a_501(control: Harness) -> None:
    control.workspace(control.admin(), "w")
    r = control.raw("POST", "/v1/workspaces/w/preview", control.admin_token, json={"port": 80})
    assert r.status_code == 501 and r.json()["hint"]

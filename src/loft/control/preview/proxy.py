"""The preview proxy: its own listener; every request is parsed (bounded), routed by its
``Host`` (``PORT--ID.DOMAIN``), authorized, and only then may it wake the workspace;
then it is relayed to that port in the workspace, HTTP or WebSocket.

Per request, in this order:

1. **Parse** (h11, the head at most :attr:`ProxyLimits.max_head` bytes and
   :attr:`~ProxyLimits.max_headers` fields, within :attr:`~ProxyLimits.head_timeout`):
   a malformed request is 400, an oversized head 431, and the connection closes.
   ``CONNECT`` and absolute-form targets are refused (this is no forward proxy).
2. **Route**: a host not on the preview domain is 404; ``/__loft/login`` is the proxy's
   own (a ticket from the API becomes the preview cookie).
3. **Authorize**, before any wake: a public workspace is open to all; otherwise the
   owner's (or an admin's) token in ``Authorization: Bearer``, or the preview cookie of
   this very host. None is 401, someone else's (or no such workspace) 403. A cookie is
   refused on a request another site's page made (``Origin`` of another host,
   ``Sec-Fetch-Site`` cross- or same-site for anything but a navigation), so one
   tenant's preview cannot use a visitor's cookie for another's.
4. **Wake** if it sleeps (:mod:`loft.control.wake`: rate-limited, 429; bounded, 504).
5. **Relay**, the loft credentials stripped (:mod:`loft.control.preview.headers`); the
   request is *busy* in :mod:`loft.control.activity` until its answer ends, a
   WebSocket's traffic counts as use.

Each upstream connection carries one request (no pool: what reaches a workspace is
always exactly what was authorized).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from urllib.parse import parse_qs, urlsplit

import h11

from loft.control.accounts import Principal
from loft.control.deps import in_thread
from loft.control.errors import (
    ApiError,
    Conflict,
    NodeUnavailable,
    NotFound,
    NotListening,
    TooManyRequests,
    WakeTimeout,
)
from loft.control.preview.grants import COOKIE_NAME, TICKET_TTL, Grant, GrantSigner
from loft.control.preview.headers import Header, Split, clean_response, split_request, upgrade_of
from loft.control.preview.host import PreviewTarget, check_domain, parse_host
from loft.control.preview.pages import Page, page
from loft.control.preview.relay import (
    Closed,
    Peer,
    relay_body,
    relay_sized_body,
    sized_body,
    splice,
)
from loft.control.preview.site import LOGIN_PATH, PreviewSite
from loft.control.records import Record
from loft.control.state import ControlState
from loft.control.wake import Waker

__all__ = ["PreviewProxy", "ProxyLimits"]

log = logging.getLogger("loft.control.preview")


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """What one client may make the proxy hold."""

    #: connections at once (more are closed on accept)
    max_connections: int = 1024
    #: bytes of a request's head (request line and headers): over it, 431
    max_head: int = 16 * 1024
    #: header fields of a request: over it, 431
    max_headers: int = 128
    #: seconds a request head may take to arrive (a slow client holds nothing longer)
    head_timeout: float = 10.0
    #: seconds a kept-alive connection may sit between requests
    idle_timeout: float = 60.0
    #: seconds of silence within a request body
    body_timeout: float = 60.0
    #: seconds of silence from the workspace's server (a long poll may wait this long)
    upstream_timeout: float = 300.0


class _After(Enum):
    KEEP = "keep"
    CLOSE = "close"
    UPGRADED = "upgraded"


class _Denied(Exception):
    def __init__(self, answer: Page, outcome: str) -> None:
        self.answer = answer
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class _Allowed:
    record: Record
    principal: Principal | None


class PreviewProxy:
    """The proxy of one control plane, bound when made (:attr:`port` is known before
    :meth:`serve`); it sets ``state.preview`` to where it is."""

    def __init__(
        self,
        state: ControlState,
        listen: tuple[str, int],
        *,
        domain: str,
        tls: ssl.SSLContext | None = None,
        waker: Waker | None = None,
        limits: ProxyLimits | None = None,
        cookie_ttl: float | None = None,
    ) -> None:
        self.state = state
        self.domain = check_domain(domain)
        self.tls = tls
        self.waker = waker or Waker(state)
        self.limits = limits or ProxyLimits()
        self.signer = GrantSigner(state.accounts.preview_key)
        family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self._sock = socket.create_server(listen, family=family, backlog=1024)
        self.port: int = self._sock.getsockname()[1]
        site = PreviewSite(self.domain, "https" if tls else "http", self.port)
        if cookie_ttl is not None:
            site = PreviewSite(site.domain, site.scheme, site.port, cookie_ttl)
        self.site = state.preview = site
        self._open = 0
        self._used_tickets: dict[str, float] = {}
        self._server: asyncio.Server | None = None

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set."""
        self._server = await asyncio.start_server(
            self._connection, sock=self._sock, ssl=self.tls, limit=self.limits.max_head
        )
        async with self._server:
            await stop.wait()
            self._server.close()

    @property
    def serving(self) -> bool:
        """True once the listener accepts connections."""
        return self._server is not None and self._server.is_serving()

    # --- one connection ----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.limits.max_connections:
            writer.close()
            return
        self._open += 1
        peer = writer.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) else "local"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head)
        client = Peer(conn, reader, writer)
        try:
            timeout = self.limits.head_timeout
            while True:
                try:
                    event = await client.next(timeout)
                except h11.RemoteProtocolError as e:
                    self.state.metrics.preview_requests.labels("bad").inc()
                    if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                        status = e.error_status_hint if e.error_status_hint in (400, 431) else 400
                        await self._answer(client, page(status, "malformed request"), close=True)
                    return
                if not isinstance(event, h11.Request):
                    return
                after = await self._request(client, event, address)
                if after is not _After.KEEP or conn.our_state is not h11.DONE:
                    return
                if conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
                timeout = self.limits.idle_timeout
        except (Closed, OSError, h11.LocalProtocolError, h11.RemoteProtocolError):
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _answer(self, client: Peer, answer: Page, *, close: bool = False) -> None:
        status, headers, body = answer
        if close:
            headers = [*headers, (b"connection", b"close")]
        await client.send(h11.Response(status_code=status, headers=headers))
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())

    async def _request(self, client: Peer, req: h11.Request, address: str) -> _After:
        start = time.perf_counter()
        metrics = self.state.metrics.preview_requests
        try:
            target, host = self._route(req)
            if req.target.split(b"?", 1)[0] == LOGIN_PATH.encode():
                return await self._login(client, req, target)
            split = split_request(list(req.headers))
            allowed = await self._authorize(target, split, list(req.headers))
        except _Denied as d:
            metrics.labels(d.outcome).inc()
            await self._answer(client, d.answer, close=d.outcome == "bad")
            return _After.CLOSE if d.outcome == "bad" else _After.KEEP
        who = allowed.principal
        key = f"user:{who.id}" if who is not None else f"address:{address}"
        wid = allowed.record.id
        with self.state.activity.busy(wid):
            try:
                up = await self.waker.connect(wid, target.port, key)
            except ApiError as e:
                outcome, answer = _upstream_failure(e, target.port)
                metrics.labels(outcome).inc()
                await self._answer(client, answer)
                return _After.KEEP
            upstream = Peer(h11.Connection(h11.CLIENT), up.reader, up.writer)
            try:
                after, first_byte = await self._exchange(
                    client, upstream, req, split, host, address
                )
            except (Closed, h11.RemoteProtocolError, h11.LocalProtocolError, OSError) as e:
                upstream.close()
                metrics.labels("failed").inc()
                if client.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    msg = f"the server on port {target.port} broke off its answer"
                    log.info("preview.upstream_failed workspace=%s error=%s", wid, e)
                    await self._answer(client, page(502, msg), close=True)
                return _After.CLOSE
            if up.woke:
                self.state.metrics.wake_seconds.observe(first_byte - start)
            metrics.labels("woke" if up.woke else "forwarded").inc()
        if after is _After.UPGRADED:
            await self._spliced(client, upstream, wid)
        else:
            upstream.close()
        return after

    # --- routing and authorization -----------------------------------------------------

    def _route(self, req: h11.Request) -> tuple[PreviewTarget, str]:
        headers = list(req.headers)
        if len(headers) > self.limits.max_headers:
            raise _Denied(page(431, f"over {self.limits.max_headers} header fields"), "bad")
        # h11 bounds a head that arrives in pieces; one that arrived whole is measured here
        size = len(req.method) + len(req.target) + sum(len(k) + len(v) + 4 for k, v in headers)
        if size > self.limits.max_head:
            raise _Denied(
                page(431, f"a request head is at most {self.limits.max_head} bytes"), "bad"
            )
        if req.method == b"CONNECT" or not req.target.startswith(b"/"):
            raise _Denied(page(400, "only origin-form requests are served here"), "bad")
        names = {k for k, _ in headers}
        if b"transfer-encoding" in names and b"content-length" in names:
            # two framings: whichever the workspace's server believed, one could smuggle
            raise _Denied(page(400, "Content-Length and Transfer-Encoding together"), "bad")
        host = next((v for k, v in headers if k == b"host"), b"").decode("latin-1")
        target = parse_host(host, self.domain)
        if target is None:
            raise _Denied(
                page(404, "this is not a preview address", f"previews are PORT--ID.{self.domain}"),
                "denied",
            )
        return target, host

    async def _authorize(
        self, target: PreviewTarget, split: Split, headers: list[Header]
    ) -> _Allowed:
        now = time.time()

        def lookup() -> tuple[Record | None, Principal | None]:
            rec = self.state.records.by_id(target.workspace)
            if split.token is not None:
                return rec, self.state.accounts.authenticate(split.token)
            if split.cookie is not None:
                grant = self.signer.verify(split.cookie, "cookie", target.label, now)
                if grant is not None:
                    return rec, self.state.accounts.grantee(grant.user, grant.token)
            return rec, None

        rec, who = await in_thread(lookup)
        if rec is not None and rec.preview_public:
            return _Allowed(rec, who)
        if who is None:
            raise _Denied(
                page(
                    401,
                    "this preview is private",
                    "send Authorization: Bearer TOKEN, or open the login_url that "
                    f'POST /v1/workspaces/NAME/preview {{"port": {target.port}}} returns',
                ),
                "denied",
            )
        if rec is None or not (who.admin or rec.owner == who.name):
            raise _Denied(page(403, "this preview is not yours"), "denied")
        if split.token is None and _cross_site(headers, target, self.domain):
            raise _Denied(
                page(403, "a preview's cookie is not accepted from another site's page"),
                "denied",
            )
        return _Allowed(rec, who)

    async def _login(self, client: Peer, req: h11.Request, target: PreviewTarget) -> _After:
        """Exchange a login ticket for the preview cookie, once."""
        now = time.time()
        query = urlsplit(req.target.decode("ascii", "replace")).query
        values = parse_qs(query[:2048]).get("ticket", [])
        ticket = values[0] if len(values) == 1 else ""
        grant = self.signer.verify(ticket, "ticket", target.label, now)
        self._used_tickets = {t: e for t, e in self._used_tickets.items() if e > now}
        who = None
        if grant is not None and ticket not in self._used_tickets:
            self._used_tickets[ticket] = grant.expires + 1
            g = grant

            def lookup() -> Principal | None:
                who = self.state.accounts.grantee(g.user, g.token)
                rec = self.state.records.find(target.workspace, who) if who else None
                return who if rec is not None else None

            who = await in_thread(lookup)
        if grant is None or who is None:
            self.state.metrics.preview_requests.labels("denied").inc()
            await self._answer(
                client,
                page(
                    401,
                    "this login link is invalid, used or expired",
                    f"ask the API for a new one (it works once, within {TICKET_TTL:g} s)",
                ),
            )
            return _After.KEEP
        ttl = int(self.site.cookie_ttl)
        cookie = self.signer.sign(
            Grant("cookie", target.label, grant.user, grant.token, int(now) + ttl)
        )
        attrs = f"{COOKIE_NAME}={cookie}; Path=/; Max-Age={ttl}; HttpOnly; SameSite=Lax"
        if self.tls is not None:
            attrs += "; Secure"
        headers = [
            (b"location", b"/"),
            (b"set-cookie", attrs.encode()),
            (b"cache-control", b"no-store"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-length", b"0"),
        ]
        await client.send(h11.Response(status_code=303, headers=headers))
        await client.send(h11.EndOfMessage())
        return _After.KEEP

    # --- relaying -----------------------------------------------------------------------

    async def _exchange(
        self,
        client: Peer,
        upstream: Peer,
        req: h11.Request,
        split: Split,
        host: str,
        address: str,
    ) -> tuple[_After, float]:
        """Relay one request and its answer; how the connection goes on, and when the
        answer's first byte went out."""
        headers = list(req.headers)
        forward = [
            *split.forward,
            (b"x-forwarded-for", address.encode()),
            (b"x-forwarded-host", host.encode("latin-1")),
            (b"x-forwarded-proto", self.site.scheme.encode()),
        ]
        if any(k == b"transfer-encoding" for k, _ in headers):
            forward.append((b"transfer-encoding", b"chunked"))
        upgrade = upgrade_of(headers)
        if upgrade is not None:
            forward += [(b"connection", b"upgrade"), (b"upgrade", upgrade)]
        else:
            forward.append((b"connection", b"close"))
        await upstream.send(h11.Request(method=req.method, target=req.target, headers=forward))
        if client.conn.they_are_waiting_for_100_continue:
            await client.send(h11.InformationalResponse(status_code=100, headers=[]))
        limits = self.limits
        await relay_body(client, upstream, limits.body_timeout)
        while True:
            event = await upstream.next(limits.upstream_timeout)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    if upgrade is None or upstream.conn.our_state is not h11.SWITCHED_PROTOCOL:
                        raise Closed("a switch of protocols nobody asked for")
                    switched = [
                        *clean_response(list(event.headers)),
                        (b"connection", b"upgrade"),
                        (b"upgrade", upgrade),
                    ]
                    await client.send(h11.InformationalResponse(status_code=101, headers=switched))
                    return _After.UPGRADED, time.perf_counter()
                if event.status_code != 100:
                    await client.send(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=clean_response(list(event.headers)),
                        )
                    )
                continue
            if not isinstance(event, h11.Response):
                raise Closed(f"no answer ({type(event).__name__})")
            await client.send(
                h11.Response(
                    status_code=event.status_code,
                    headers=clean_response(list(event.headers)),
                    reason=event.reason,
                )
            )
            first_byte = time.perf_counter()
            length = sized_body(req.method, event)
            if length is None:
                await relay_body(upstream, client, limits.upstream_timeout)
            else:
                await relay_sized_body(upstream, client, length, limits.upstream_timeout)
            return _After.KEEP, first_byte

    async def _spliced(self, client: Peer, upstream: Peer, wid: str) -> None:
        """Relay a switched connection byte for byte; its traffic is use."""
        their, _ = client.conn.trailing_data
        ours, _ = upstream.conn.trailing_data
        if their:
            upstream.writer.write(their)
        if ours:
            client.writer.write(ours)
        activity = self.state.activity
        await splice(
            (client.reader, client.writer),
            (upstream.reader, upstream.writer),
            lambda: activity.touch(wid),
        )


def _upstream_failure(e: ApiError, port: int) -> tuple[str, Page]:
    """The outcome and page of a failure to reach the workspace's port."""
    if isinstance(e, TooManyRequests):
        retry = str(max(1, round(e.retry_after)))
        return "limited", page(429, e.message, e.hint, retry_after=retry)
    if isinstance(e, WakeTimeout):
        return "timeout", page(504, e.message, e.hint)
    if isinstance(e, NotListening):
        return "failed", page(502, f"nothing listens on port {port} in the workspace", e.hint)
    if isinstance(e, NodeUnavailable):
        return "failed", page(503, e.message, e.hint)
    if isinstance(e, NotFound | Conflict):
        return "failed", page(502, e.message, e.hint)
    return "failed", page(502, e.message, e.hint)


def _origin_host(headers: list[Header]) -> str | None:
    for k, v in headers:
        if k == b"origin":
            return urlsplit(v.decode("latin-1")).netloc
    return None


def _cross_site(headers: list[Header], target: PreviewTarget, domain: str) -> bool:
    """Whether another site's page made this request (a preview of another workspace
    counts: previews of different tenants share a site)."""
    origin = _origin_host(headers)
    if origin is not None:
        other = parse_host(origin, domain)
        return other is None or other.workspace != target.workspace
    fetch = {k: v for k, v in headers if k in (b"sec-fetch-site", b"sec-fetch-mode")}
    site = fetch.get(b"sec-fetch-site", b"none")
    return site in (b"cross-site", b"same-site") and fetch.get(b"sec-fetch-mode") != b"navigate"

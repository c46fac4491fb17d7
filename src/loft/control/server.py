"""Serving the API: uvicorn on a TCP address and on the root-only local socket.

Rules:

- **TLS off loopback.** Plain HTTP is served only on a loopback address; any other
  listen address needs a certificate and key (bearer tokens must never cross a network in
  clear), as NBD over TCP needs TLS.
- **The local socket is root-only.** It is created mode 0600 in a 0700 directory of the
  data dir, so only root (the service's user) can connect; the kernel checks that at
  ``connect``. Whoever connects is the first admin, without a token: root on the node
  owns the node anyway, and this way every workspace still has an owner and passes
  quotas. (Peer credentials, ``SO_PEERCRED``, would let other local accounts in as their
  own users; nothing needs that yet.)
- **The first admin.** At start, when no admin exists, one is made (``root``) and its
  token is printed once and written 0600 to ``control/admin.token`` under the data dir.

Two uvicorn servers share one event loop and the one app state: the TCP one (with TLS
when given) and the local one (plain, its app marked local). Beside them, on the same
loop and state: the preview proxy on its own listener (the same TLS rule: plain only on
loopback), ``/metrics`` without a token on a separate loopback address when asked, and
the idle reaper. Signals stop them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from loft.control.app import create_app, local_admin
from loft.control.errors import ApiError
from loft.control.preview.host import DEFAULT_DOMAIN
from loft.control.preview.proxy import PreviewProxy
from loft.control.reaper import DEFAULT_SWEEP, Reaper
from loft.control.routes.metrics import metrics_app
from loft.control.state import ControlState
from loft.control.wake import DEFAULT_WAKE_WAIT, Waker

__all__ = [
    "DEFAULT_LISTEN",
    "TLS",
    "ControlServer",
    "ServeError",
    "is_loopback",
    "parse_listen",
    "write_admin_token",
    "write_api_url",
    "write_preview_url",
]

#: Where the API listens unless told.
DEFAULT_LISTEN = "127.0.0.1:7070"


class ServeError(ApiError):
    """The API cannot be served as asked."""


@dataclass(frozen=True, slots=True)
class TLS:
    """A certificate chain and its key (PEM files)."""

    cert: Path
    key: Path


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ServeError(f"--listen {text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:7070")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (only those may serve plain HTTP)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def write_admin_token(data_dir: Path, token: str) -> Path:
    """Keep the first admin's token where root can read it back (0600, in a 0700 dir)."""
    folder = data_dir / "control"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "admin.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path


def write_api_url(data_dir: Path, url: str, name: str = "api.url") -> Path:
    """Say where the API listens (its port may have been chosen at bind time), in
    ``run/api.url``: what ``loft up`` prints."""
    path = data_dir / "run" / name
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)
    return path


def write_preview_url(data_dir: Path, url: str) -> Path:
    """Say where previews are (``run/preview.url``), as :func:`write_api_url` does."""
    return write_api_url(data_dir, url, "preview.url")


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :class:`ControlServer` (two servers
    share one process; each would take the handlers from the other)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ControlServer:
    """The API on its sockets, bound when this is made (so a port of 0 is known before
    serving: :attr:`port`)."""

    def __init__(
        self,
        state: ControlState,
        *,
        listen: tuple[str, int] | None = None,
        unix: Path | None = None,
        tls: TLS | None = None,
        preview_listen: tuple[str, int] | None = None,
        preview_domain: str = DEFAULT_DOMAIN,
        metrics_listen: tuple[str, int] | None = None,
        reap_every: float | None = DEFAULT_SWEEP,
        wake_wait: float = DEFAULT_WAKE_WAIT,
    ) -> None:
        for what, where in (("API", listen), ("preview proxy", preview_listen)):
            if where is not None and tls is None and not is_loopback(where[0]):
                raise ServeError(
                    f"refusing to serve the {what} in plain HTTP on {where[0]}: tokens and"
                    " cookies would cross the network in clear",
                    hint="give --tls-cert and --tls-key, or listen on 127.0.0.1",
                )
        if metrics_listen is not None and not is_loopback(metrics_listen[0]):
            raise ServeError(
                f"refusing to serve /metrics without a token on {metrics_listen[0]}",
                hint="listen on 127.0.0.1, or scrape the API's /metrics with an admin token",
            )
        if listen is None and unix is None:
            raise ServeError("nothing to listen on", hint="give --listen or --unix")
        self.state = state
        self.app = create_app(state)
        self._plan: list[tuple[_Server, socket.socket]] = []
        self.port = 0
        self.unix = unix
        self.proxy: PreviewProxy | None = None
        if preview_listen is not None:
            context = None
            if tls is not None:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(tls.cert, tls.key)
            waker = Waker(state, wait=wake_wait)
            self.proxy = PreviewProxy(
                state, preview_listen, domain=preview_domain, tls=context, waker=waker
            )
        self.reaper = Reaper(state, state.terminals.warn, every=reap_every) if reap_every else None
        self.metrics_port = 0
        common = {"access_log": False, "lifespan": "off", "ws": "wsproto", "log_config": None}
        common |= {"proxy_headers": False, "server_header": False, "timeout_graceful_shutdown": 5}
        common |= {"ws_max_size": 1 << 20}
        if listen is not None:
            sock = socket.create_server(listen, family=_family(listen[0]))
            self.port = sock.getsockname()[1]
            tls_args = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)} if tls else {}
            config = uvicorn.Config(self.app, **common, **tls_args)  # type: ignore[arg-type]
            self._plan.append((_Server(config), sock))
        if unix is not None:
            config = uvicorn.Config(local_admin(self.app), **common)  # type: ignore[arg-type]
            self._plan.append((_Server(config), _unix_socket(unix)))
        if metrics_listen is not None:
            sock = socket.create_server(metrics_listen, family=_family(metrics_listen[0]))
            self.metrics_port = sock.getsockname()[1]
            config = uvicorn.Config(metrics_app(state), **common)  # type: ignore[arg-type]
            self._plan.append((_Server(config), sock))

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set (or, in the main thread, SIGINT/SIGTERM)."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(srv.serve(sockets=[sock])) for srv, sock in self._plan]
        if self.proxy is not None:
            tasks.append(asyncio.create_task(self.proxy.serve(stop)))
        reaper = asyncio.create_task(self.reaper.run()) if self.reaper is not None else None
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        if reaper is not None:
            reaper.cancel()
        for srv, _ in self._plan:
            srv.should_exit = True
        await self.state.terminals.close_all()
        await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
        for _, sock in self._plan:
            sock.close()
        if self.unix is not None:
            self.unix.unlink(missing_ok=True)

    @property
    def started(self) -> bool:
        """True once every listener accepts connections."""
        proxy = self.proxy is None or self.proxy.serving
        return proxy and all(srv.started for srv, _ in self._plan)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600, in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.is_socket():
            path.unlink()  # a stale socket of a previous run
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock

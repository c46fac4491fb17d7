"""A control plane for tests: the real app under uvicorn, on a loopback port and a Unix
socket of the test's own, in a thread, over a real catalog (SQLite or PostgreSQL) and
an in-memory node (:class:`~loft.control.fakenode.FakeNode`)."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from loft.api import CreateWorkspace
from loft.catalog import Catalog
from loft.client import Client
from loft.control.fakenode import FakeNode
from loft.control.server import ControlServer
from loft.control.state import ControlState

__all__ = ["Harness"]


class Harness:
    """One running control plane: ``url`` (TCP), ``socket`` (local, admin), the
    ``admin_token``, the ``node`` and ``state`` to poke at."""

    def __init__(
        self,
        catalog_url: str,
        tmp: Path,
        *,
        node_timeout: float = 5.0,
        terminal_grace: float = 60.0,
        **server: Any,
    ) -> None:
        self.catalog = Catalog(catalog_url)
        self.node = FakeNode(root=tmp / "node")
        self.node.root.mkdir(mode=0o700)  # type: ignore[union-attr]
        self.state = ControlState(
            self.catalog, self.node, node_timeout=node_timeout, terminal_grace=terminal_grace
        )
        token = self.state.accounts.ensure_first_admin()
        assert token is not None
        self.admin_token = token
        self.socket = tmp / "run" / "api.sock"
        server.setdefault("reap_every", None)
        self.server = ControlServer(self.state, listen=("127.0.0.1", 0), unix=self.socket, **server)
        self.url = f"http://127.0.0.1:{self.server.port}"
        proxy = self.server.proxy
        #: the preview proxy's port (0 without one)
        self.preview_port = proxy.port if proxy is not None else 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="control-test", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the control plane did not start"
            assert self._thread.is_alive(), "the control plane died at start"
            time.sleep(0.01)
        self._clients: list[Client] = []

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the control plane's loop (the fake node lives there)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            await self.server.serve(self._stop)

        self._loop.run_until_complete(main())

    def close(self) -> None:
        """Stop the server, close clients and the catalog."""
        for c in self._clients:
            c.close()
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.run_until_complete(self.node.close())
        self._loop.close()
        self.catalog.close()

    def client(self, token: str | None) -> Client:
        """An SDK client (httpx) with ``token``."""
        c = Client(self.url, token, timeout=30)
        self._clients.append(c)
        return c

    def admin(self) -> Client:
        """The first admin's client."""
        return self.client(self.admin_token)

    def user(self, name: str, **quotas: Any) -> Client:
        """A new user's client (with these quotas, if any)."""
        from loft.api import Quotas

        made = self.admin().create_user(name, quotas=Quotas(**quotas) if quotas else None)
        return self.client(made.token)

    def raw(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """One request without the SDK (for malformed ones)."""
        headers = dict(kw.pop("headers", {}))
        if token:
            headers["authorization"] = f"Bearer {token}"
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    def workspace(self, client: Client, name: str, **fields: Any) -> None:
        """Create a workspace as ``client`` (small, so quotas do not get in the way)."""
        client.create_workspace(CreateWorkspace(name, size=1 << 30, **fields))

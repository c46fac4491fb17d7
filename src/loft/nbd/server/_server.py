"""The NBD server: listeners, the worker pool, and the set of live connections."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loft.nbd.protocol import NBDError
from loft.nbd.server._connection import NBDConnection
from loft.nbd.server._exports import Authorizer, ExportLookup
from loft.nbd.server._memory import tune_allocator

__all__ = ["DEFAULT_WORKERS", "NBDServer"]

log = logging.getLogger("loft.nbd")

#: Worker threads for FLUSH, FUA writes and ranges that must be fetched first.
DEFAULT_WORKERS = 16


class NBDServer:
    """Serve ``exports`` over NBD on Unix sockets and (TLS-only) TCP listeners.

    Unix-socket clients are trusted (the socket lives in a directory only its owner may
    enter) and may open every export. TCP clients must STARTTLS with a client
    certificate, and see and open only the exports ``authorizer`` grants their
    certificate's common name.
    """

    def __init__(
        self,
        exports: ExportLookup,
        *,
        authorizer: Authorizer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.exports = exports
        self.authorizer = authorizer
        self.ssl_context = ssl_context
        tune_allocator()  # big request buffers without a page fault per 4 KiB (_memory.py)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loft-nbd")
        self._listeners: list[asyncio.base_events.Server] = []
        self._connections: set[NBDConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unix_paths: list[Path] = []

    # --- listeners ------------------------------------------------------------------

    async def serve_unix(self, path: str | os.PathLike[str]) -> Path:
        """Listen on a Unix socket. Its directory is created 0700 (and must not be open
        to others when it already exists): whoever can reach the socket is trusted."""
        sock = Path(path)
        parent = sock.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
            os.chmod(parent, 0o700)
        else:
            st = parent.stat()
            if st.st_uid != os.geteuid():  # its owner could replace our socket
                raise NBDError(
                    f"socket directory {parent} is owned by uid {st.st_uid}, not by this server",
                    hint="use a directory this user owns, or another --socket path",
                )
            if st.st_mode & 0o077:
                raise NBDError(
                    f"socket directory {parent} is accessible to other users",
                    hint=f"use a private directory (chmod 700 {parent}) or another --socket path",
                )
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(sock.lstat().st_mode):
                sock.unlink()
        listener = await asyncio.get_running_loop().create_unix_server(
            lambda: NBDConnection(self, trusted=True, tls_required=False), str(sock)
        )
        os.chmod(sock, 0o600)
        self._listeners.append(listener)
        self._unix_paths.append(sock)
        log.info("nbd.listen unix=%s", sock)
        return sock

    async def serve_tcp(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on TCP. TLS (STARTTLS) is mandatory there; returns the bound address."""
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if self.ssl_context is None:
            raise NBDError(
                "a TCP listener requires TLS",
                hint="give --tls-cert, --tls-key and --tls-ca (client certificates)",
            )
        listener = await asyncio.get_running_loop().create_server(
            lambda: NBDConnection(self, trusted=False, tls_required=True), host, port
        )
        self._listeners.append(listener)
        addr = listener.sockets[0].getsockname()
        log.info("nbd.listen tcp=%s:%d", addr[0], addr[1])
        return str(addr[0]), int(addr[1])

    # --- connections ----------------------------------------------------------------

    def _register(self, conn: NBDConnection) -> None:
        self._connections.add(conn)

    def _unregister(self, conn: NBDConnection) -> None:
        self._connections.discard(conn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connections(self) -> list[dict[str, Any]]:
        """One dict per live connection: peer, identity, export, requests, in flight."""
        # A copy first: the event loop may add or drop connections meanwhile, and a
        # caller may be on another thread (the node API's operations are).
        return [c.info() for c in list(self._connections)]

    async def close(self, timeout: float = 10.0) -> None:
        """Stop listening, let connections finish what is in flight, then stop workers.

        Backends are not closed: they belong to the export registry.
        """
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn._client_closed()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._connections and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self._connections):
            conn._abort("server shutting down")
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), 1.0)
        self._listeners.clear()
        for path in self._unix_paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await loop.run_in_executor(None, self.executor.shutdown, True)

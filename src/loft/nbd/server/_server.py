"""The NBD server: listeners, the worker pool, and the set of live connections.

It also owns what bounds the memory its clients can make it hold: a cap on connections
(and on connections still in the handshake, which on TCP are not authenticated yet), the
byte budget every connection draws on (:mod:`._budget`), one bounded pool of spare WRITE
payload buffers, and a sweep that takes receive buffers from idle connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import stat
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loft.nbd.protocol import NBDError, PayloadPool
from loft.nbd.server._budget import DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTION_BYTES, ServerBudget
from loft.nbd.server._connection import NBDConnection
from loft.nbd.server._exports import Authorizer, ExportLookup
from loft.nbd.server._memory import tune_allocator

__all__ = ["DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_HANDSHAKES", "DEFAULT_WORKERS", "NBDServer"]

log = logging.getLogger("loft.nbd")

#: Worker threads for FLUSH, FUA writes and ranges that must be fetched first.
DEFAULT_WORKERS = 16
#: Connections served at once; more are accepted and closed at once. An idle connection
#: costs a few KiB (no receive buffer), so the cap is about file descriptors and about
#: what many busy clients may hold (see _budget.py), not about idle ones.
DEFAULT_MAX_CONNECTIONS = 1024
#: Connections not yet in transmission. On TCP these have not shown a certificate yet;
#: each may hold an option of up to 64 KiB for HANDSHAKE_TIMEOUT, and a real client needs
#: a few milliseconds here.
DEFAULT_MAX_HANDSHAKES = 128
#: Bytes of spare WRITE payload buffers kept for reuse, for all connections together.
PAYLOAD_POOL_BYTES = 64 * 1024 * 1024
#: Seconds between sweeps of idle connections' receive buffers.
SWEEP_INTERVAL = 5.0
#: At most one refusal is logged per this many seconds; the others are counted in it.
REFUSAL_LOG_INTERVAL = 1.0


class NBDServer:
    """Serve ``exports`` over NBD on Unix sockets and (TLS-only) TCP listeners.

    Unix-socket clients are trusted (the socket lives in a directory only its owner may
    enter) and may open every export. TCP clients must STARTTLS with a client
    certificate, and see and open only the exports ``authorizer`` grants their
    certificate's common name.

    Limits: ``max_connections`` served at once, ``max_handshakes`` of them not yet in
    transmission (a client over either is closed at once, with a log line);
    ``max_bytes_in_flight`` of requests and replies held for all clients together, and
    ``max_connection_bytes`` for each (see :mod:`._budget`).
    """

    def __init__(
        self,
        exports: ExportLookup,
        *,
        authorizer: Authorizer | None = None,
        ssl_context: ssl.SSLContext | None = None,
        workers: int = DEFAULT_WORKERS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_bytes_in_flight: int = DEFAULT_MAX_BYTES,
        max_connection_bytes: int = DEFAULT_MAX_CONNECTION_BYTES,
    ) -> None:
        if max_connections < 1 or max_handshakes < 1:
            raise ValueError("max_connections and max_handshakes must be at least 1")
        self.exports = exports
        self.authorizer = authorizer
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        tune_allocator()  # big request buffers without a page fault per 4 KiB (_memory.py)
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="loft-nbd")
        self.budget = ServerBudget(max_bytes_in_flight, max_connection_bytes, schedule=_call_soon)
        self.payload_pool = PayloadPool(PAYLOAD_POOL_BYTES)
        #: connections refused since the server started (over a cap)
        self.refused = 0
        self._listeners: list[asyncio.base_events.Server] = []
        self._connections: set[NBDConnection] = set()
        self._handshakes = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unix_paths: list[Path] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._refusal_logged_at = float("-inf")
        self._refusals_unlogged = 0
        self._refusal_summary: asyncio.TimerHandle | None = None

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

    def _register(self, conn: NBDConnection) -> bool:
        """Count a new connection in, or refuse it (False) when it is over a cap."""
        if len(self._connections) >= self.max_connections:
            self._refuse(conn, "max_connections", self.max_connections)
            return False
        if self._handshakes >= self.max_handshakes:
            self._refuse(conn, "max_handshakes", self.max_handshakes)
            return False
        self._connections.add(conn)
        self._handshakes += 1
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)
        return True

    def _handshake_done(self) -> None:
        self._handshakes -= 1

    def _unregister(self, conn: NBDConnection, handshaking: bool) -> None:
        self._connections.discard(conn)
        if handshaking:
            self._handshakes -= 1

    def _refuse(self, conn: NBDConnection, reason: str, limit: int) -> None:
        """Log a refusal: the first one in each REFUSAL_LOG_INTERVAL, with the count of
        those left out since the previous line, so a flood cannot flood the log."""
        self.refused += 1
        now = time.monotonic()
        if now - self._refusal_logged_at < REFUSAL_LOG_INTERVAL:
            self._refusals_unlogged += 1
            if self._refusal_summary is None:
                delay = self._refusal_logged_at + REFUSAL_LOG_INTERVAL - now
                self._refusal_summary = asyncio.get_running_loop().call_later(
                    delay, self._log_unlogged_refusals, reason, limit
                )
            return
        self._refusal_logged_at = now
        log.warning(
            "nbd.refuse peer=%s reason=%s limit=%d connections=%d not_logged=%d",
            conn.peer,
            reason,
            limit,
            len(self._connections),
            self._refusals_unlogged,
        )
        self._refusals_unlogged = 0

    def _log_unlogged_refusals(self, reason: str, limit: int) -> None:
        self._refusal_summary = None
        if self._refusals_unlogged:
            log.warning(
                "nbd.refuse peer=* reason=%s limit=%d connections=%d not_logged=%d",
                reason,
                limit,
                len(self._connections),
                self._refusals_unlogged,
            )
            self._refusals_unlogged = 0
            self._refusal_logged_at = time.monotonic()

    def _sweep(self) -> None:
        """Take the receive buffers of idle connections, and the spare payload buffers
        when no connection sent a request since the last sweep."""
        self._sweeper = None
        idle = True
        for conn in list(self._connections):
            idle &= conn.sweep()
        if idle:
            self.payload_pool.clear()
        if self._connections:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self._sweep)

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
        for handle in (self._sweeper, self._refusal_summary):
            if handle is not None:
                handle.cancel()
        self._sweeper = self._refusal_summary = None
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


def _call_soon(fn: Callable[[], None]) -> None:
    asyncio.get_running_loop().call_soon(fn)

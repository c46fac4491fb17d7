"""How a client's requests travel. One interface, two implementations (httpx's habit:
the transport is a class, so the light one and the full one are interchangeable):

- :class:`StdlibTransport`: the standard library's ``http.client`` over a Unix socket or
  TCP (with TLS for ``https``). Nothing to import but what Python starts with, so a CLI
  command through the API stays quick.
- :class:`HttpxTransport`: httpx, for programs that import the SDK (connection pooling,
  HTTP/1.1 keep-alive, its timeouts). httpx is imported when one is made.

Both translate every failure of theirs into :class:`TransportError` here.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit

from loft.client._errors import TransportError

__all__ = [
    "DEFAULT_TIMEOUT",
    "HttpxTransport",
    "Reply",
    "StdlibTransport",
    "Transport",
    "parse_url",
]

#: Seconds to wait for the API to connect or say anything (a stream may wait longer).
DEFAULT_TIMEOUT = 60.0
#: Largest answer read whole (files are at most 16 MiB).
MAX_ANSWER = 32 << 20


class Reply(Protocol):
    """An answer being read."""

    status: int

    def read(self) -> bytes:
        """The whole body (bounded)."""
        ...

    def lines(self) -> Iterator[bytes]:
        """The body, a line at a time, as it arrives."""
        ...

    def close(self) -> None:
        """Give the connection back."""
        ...


class Transport(Protocol):
    """Sends one request and returns its reply, unread."""

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send ``method path?params`` with ``body``; raise :class:`TransportError` when
        nothing comes back."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str  # http, https or unix
    host: str
    port: int
    socket_path: str


def parse_url(url: str) -> _Target:
    """``http://HOST:PORT``, ``https://HOST:PORT`` or ``unix:///path/to/api.sock``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise TransportError(f"{url}: a unix URL needs a socket path (unix:///path)")
        return _Target("unix", "localhost", 0, parts.path)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TransportError(
            f"{url}: not an API URL",
            hint="use https://HOST:PORT, http://127.0.0.1:PORT or unix:///PATH",
        )
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return _Target(parts.scheme, parts.hostname, port, "")


def _target_of(path: str, params: Mapping[str, str | list[str]] | None) -> str:
    query = urlencode(params or {}, doseq=True, quote_via=quote)
    return f"{path}?{query}" if query else path


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _StdlibReply:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp
        self.status = resp.status

    def read(self) -> bytes:
        try:
            data = self._resp.read(MAX_ANSWER + 1)
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(f"the API broke off its answer: {e}") from e
        finally:
            self.close()
        if len(data) > MAX_ANSWER:
            raise TransportError("the API sent an oversized answer")
        return data

    def lines(self) -> Iterator[bytes]:
        try:
            while line := self._resp.readline(MAX_ANSWER):
                yield line
        except (OSError, http.client.HTTPException) as e:
            raise TransportError(f"the API broke off its answer: {e}") from e
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()


class StdlibTransport:
    """``http.client``: one connection per request (a CLI command makes one or two)."""

    def __init__(self, url: str, *, ca: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = url
        self._target = parse_url(url)
        self._timeout = timeout
        self._ca = ca

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        t = self._target
        if t.scheme == "unix":
            return _UnixConnection(t.socket_path, timeout)
        if t.scheme == "https":
            context = ssl.create_default_context(cafile=self._ca)
            return http.client.HTTPSConnection(t.host, t.port, timeout=timeout, context=context)
        return http.client.HTTPConnection(t.host, t.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        conn = self._connect(timeout or self._timeout)
        try:
            conn.request(method, _target_of(path, params), body=body, headers=dict(headers or {}))
            return _StdlibReply(conn, conn.getresponse())
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise TransportError(
                f"cannot reach the loft API at {self.url}: {getattr(e, 'strerror', None) or e}",
                hint="is the control plane running? `loft login URL --token T` sets where it is",
            ) from e

    def close(self) -> None:
        pass


class _HttpxReply:
    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status_code

    def read(self) -> bytes:
        import httpx

        try:
            data = bytearray()
            for chunk in self._resp.iter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise TransportError("the API sent an oversized answer")
            return bytes(data)
        except httpx.HTTPError as e:
            raise TransportError(f"the API broke off its answer: {e}") from e
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        import httpx

        try:
            for line in self._resp.iter_lines():
                yield line.encode() + b"\n"
        except httpx.HTTPError as e:
            raise TransportError(f"the API broke off its answer: {e}") from e
        finally:
            self.close()

    def close(self) -> None:
        self._resp.close()


class HttpxTransport:
    """httpx, with a pooled connection; ``transport`` may be any httpx transport (an
    ``httpx.ASGITransport`` runs the API in-process)."""

    def __init__(
        self,
        url: str,
        *,
        ca: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        transport: Any = None,
    ) -> None:
        import httpx

        self.url = url
        target = parse_url(url)
        if transport is None and target.scheme == "unix":
            transport = httpx.HTTPTransport(uds=target.socket_path)
        base = "http://localhost" if target.scheme == "unix" else url
        verify: Any = ssl.create_default_context(cafile=ca) if ca else True
        self._client = httpx.Client(
            base_url=base, transport=transport, timeout=timeout, verify=verify
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        import httpx

        try:
            req = self._client.build_request(
                method,
                path,
                params=dict(params) if params else None,
                content=body,
                headers=dict(headers or {}),
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            return _HttpxReply(self._client.send(req, stream=True))
        except httpx.HTTPError as e:
            raise TransportError(
                f"cannot reach the loft API at {self.url}: {e}",
                hint="is the control plane running? `loft login URL --token T` sets where it is",
            ) from e

    def close(self) -> None:
        self._client.close()

"""How a client's requests travel. One interface, two implementations (httpx's habit:
the transport is a class, so the light one and the full one are interchangeable):

- :class:`StdlibTransport`: HTTP/1.1 by hand on a standard library socket (a Unix
  socket, TCP, or TLS for ``https``; ``ssl`` is imported only then): one request per
  connection, a bounded head, a body by its length, chunks or the connection's end.
  ``http.client`` would bring the ``email`` package (~10 ms of a CLI command's
  ~100), so a CLI command through the API imports nothing but what Python starts with.
- :class:`HttpxTransport`: httpx, for programs that import the SDK (connection pooling,
  HTTP/1.1 keep-alive, its timeouts). httpx is imported when one is made.

Both translate every failure of theirs into :class:`TransportError` here.
"""

from __future__ import annotations

import socket
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


#: The largest answer head (status line and header fields).
_MAX_HEAD = 64 << 10
_READ = 65536


def _connect(target: _Target, ca: str | None, timeout: float) -> socket.socket:
    if target.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target.socket_path)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((target.host, target.port), timeout)
    if target.scheme == "https":
        import ssl

        context = ssl.create_default_context(cafile=ca)
        try:
            return context.wrap_socket(sock, server_hostname=target.host)
        except OSError:
            sock.close()
            raise
    return sock


class _RawReply:
    """An answer read from its socket: the head at once, the body as asked."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()
        head = self._until(b"\r\n\r\n", _MAX_HEAD, "head")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"the API sent a malformed status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise TransportError("the API sent a malformed header field")
            fields[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        length = fields.get("content-length")
        self._left: int | None = None
        if not self._chunked and length is not None:
            if not length.isdigit():
                raise TransportError("the API sent a malformed Content-Length")
            self._left = int(length)
        self._chunk_left = 0
        self._done = False

    def _fill(self) -> bool:
        try:
            data = self._sock.recv(_READ)
        except OSError as e:
            raise TransportError(f"the API broke off its answer: {e}") from e
        self._buf += data
        return bool(data)

    def _until(self, mark: bytes, limit: int, what: str) -> bytes:
        while (at := self._buf.find(mark)) < 0:
            if len(self._buf) > limit:
                raise TransportError(f"the API sent an oversized {what}")
            if not self._fill():
                raise TransportError(f"the API closed the connection in the answer's {what}")
        out = bytes(self._buf[:at])
        del self._buf[: at + len(mark)]
        return out

    def _chunk(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                size = self._until(b"\r\n", 1024, "chunk size").split(b";", 1)[0].strip()
                try:
                    self._chunk_left = int(size, 16)
                except ValueError:
                    raise TransportError("the API sent a malformed chunk") from None
                if self._chunk_left == 0:
                    while self._until(b"\r\n", _MAX_HEAD, "trailer"):
                        pass
                    self._done = True
                    return b""
            if not self._buf and not self._fill():
                raise TransportError("the API broke off its answer")
            out = bytes(self._buf[: self._chunk_left])
            del self._buf[: len(out)]
            self._chunk_left -= len(out)
            if self._chunk_left == 0:
                self._until(b"\r\n", 2, "chunk end")
            return out
        if self._left is not None and self._left <= 0:
            self._done = True
            return b""
        if not self._buf and not self._fill():
            if self._left is not None:
                raise TransportError("the API broke off its answer")
            self._done = True
            return b""
        n = len(self._buf) if self._left is None else min(len(self._buf), self._left)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if self._left is not None:
            self._left -= n
        return out

    def read(self) -> bytes:
        try:
            data = bytearray()
            while piece := self._chunk():
                data += piece
                if len(data) > MAX_ANSWER:
                    raise TransportError("the API sent an oversized answer")
            return bytes(data)
        finally:
            self.close()

    def lines(self) -> Iterator[bytes]:
        try:
            pending = b""
            while piece := self._chunk():
                pending += piece
                *whole, pending = pending.split(b"\n")
                for line in whole:
                    yield line + b"\n"
                if len(pending) > MAX_ANSWER:
                    raise TransportError("the API sent an oversized line")
            if pending:
                yield pending
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()


class StdlibTransport:
    """HTTP/1.1 on a standard library socket: one connection per request (a CLI command
    makes one or two)."""

    def __init__(self, url: str, *, ca: str | None = None, timeout: float = DEFAULT_TIMEOUT):
        self.url = url
        self._target = parse_url(url)
        self._timeout = timeout
        self._ca = ca

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
        t = self._target
        host = t.host if t.scheme == "unix" or t.port in (80, 443) else f"{t.host}:{t.port}"
        fields = {
            "host": host,
            "connection": "close",
            **{k.lower(): v for k, v in (headers or {}).items()},
        }
        if body is not None or method in ("POST", "PUT", "PATCH"):
            fields["content-length"] = str(len(body or b""))
        head = f"{method} {_target_of(path, params)} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fields.items()
        )
        try:
            sock = _connect(t, self._ca, timeout or self._timeout)
        except OSError as e:
            raise TransportError(
                f"cannot reach the loft API at {self.url}: {e.strerror or e}",
                hint="is the control plane running? `loft login URL --token T` sets where it is",
            ) from e
        try:
            sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
            return _RawReply(sock)
        except OSError as e:
            sock.close()
            raise TransportError(f"the API broke off: {e.strerror or e}") from e
        except BaseException:
            sock.close()
            raise

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
        import ssl

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

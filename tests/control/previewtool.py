"""Helpers of the preview tests: a control plane with its preview proxy, an HTTP server
standing for a workspace's (it answers with what it received), requests by host name."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from controltool import Harness

__all__ = ["EchoServer", "free_port", "preview_control", "raw_request", "request"]


def free_port() -> int:
    """A loopback port free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self.rfile.readline().strip(), 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(length)
        if self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-length", str(size))
            self.send_header("set-cookie", "loft_preview=from-the-app")
            self.end_headers()
            chunk = b"x" * 65536
            while size > 0:
                self.wfile.write(chunk[:size])
                size -= len(chunk)
            return
        answer = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("latin-1"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.send_header("set-cookie", "app=1")
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


class EchoServer:
    """A threaded HTTP server on a loopback port, answering every request with JSON of
    what it received (or ``/big/N``: N bytes)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def preview_control(tmp: Path, url: str | None = None, **server: Any) -> Iterator[Harness]:
    """A control plane (SQLite unless ``url``) with a preview proxy on a loopback port."""
    server.setdefault("preview_listen", ("127.0.0.1", 0))
    h = Harness(url or f"sqlite:///{tmp / 'catalog.db'}", tmp, **server)
    try:
        yield h
    finally:
        h.close()


def host(h: Harness, port: int, wid: str) -> str:
    """The preview host of ``port`` of workspace ``wid``."""
    return f"{port}--{wid}.preview.localhost:{h.preview_port}"


def request(
    h: Harness,
    port: int,
    wid: str,
    path: str = "/",
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    """One request to the preview proxy for ``port`` of ``wid``."""
    hdrs = {"host": host(h, port, wid), **(headers or {})}
    if token:
        hdrs["authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{h.preview_port}{path}"
    return httpx.request(method, url, headers=hdrs, timeout=30, **kw)


def raw_request(h: Harness, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` to the proxy as is; everything it answers until it closes (or
    ``timeout``)."""
    with socket.create_connection(("127.0.0.1", h.preview_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
        return out

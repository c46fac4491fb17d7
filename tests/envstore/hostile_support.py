"""Hostile artefacts and servers, all local: a loopback HTTP server of in-memory documents,
npm tarballs and .debs built in memory, and locks made from them."""

from __future__ import annotations

import base64
import hashlib
import http.server
import os
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tar_support import member, tar_bytes

from loft.envstore.build import Builder, Pin
from loft.envstore.lock import Lock, LockedPath
from loft.envstore.spec import Spec
from loft.envstore.store import Store

#: An environment path no build makes: hostile builds fail before they could match it.
NO_ENV = LockedPath("/nix/store/" + "0" * 32 + "-loft-env", "sha256:" + "0" * 52, 0, "loft-env")


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes = b""
    repeat: int = 1  # the body is sent this many times (a large answer costs no memory)
    announce: bool = True  # send a Content-Length (else the body ends with the connection)
    status: int = 200
    location: str = ""  # for a redirect


@dataclass
class Server:
    """A loopback HTTP server; ``sent`` counts the body bytes it managed to write."""

    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, route: Route | bytes) -> str:
        """Serve ``route`` at ``/name``; its URL."""
        self.routes["/" + name] = route if isinstance(route, Route) else Route(route)
        return f"{self.base}/{name}"


@contextmanager
def serve() -> Iterator[Server]:
    """A :class:`Server` running for the duration of the block."""
    server = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            r = server.routes.get(self.path)
            if r is None:
                self.send_error(404)
                return
            self.send_response(r.status)
            if r.location:
                self.send_header("Location", r.location)
            if r.announce:
                self.send_header("Content-Length", str(len(r.body) * r.repeat))
            self.end_headers()
            server.sent[self.path] = 0
            try:
                for _ in range(r.repeat):
                    self.wfile.write(r.body)
                    server.sent[self.path] += len(r.body)
            except OSError:
                pass  # the client stopped reading: what the size tests expect

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield server
    finally:
        srv.shutdown()
        srv.server_close()


def npm_tarball(files: dict[str, bytes | str]) -> bytes:
    """An npm tarball (``package/...``): bytes are files, str values symlink targets."""
    members = [(member("package/package.json"), b'{"name": "x"}')]
    for rel, v in files.items():
        if isinstance(v, str):
            members.append((member(f"package/{rel}", tarfile.SYMTYPE, link=v), b""))
        else:
            members.append((member(f"package/{rel}"), v))
    return tar_bytes(members, mode="w:gz")


def data_members(files: dict[str, bytes | str]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """.deb data members: bytes are files (executable), str values symlink targets."""
    out = []
    for rel, v in files.items():
        if isinstance(v, str):
            out.append((member(f"./{rel}", tarfile.SYMTYPE, link=v), b""))
        else:
            out.append((member(f"./{rel}", mode=0o755), v))
    return out


def npm_pin(server: Server, name: str, location: str, tgz: bytes) -> Pin:
    """A pin for an npm tarball served by ``server``."""
    sri = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    url = server.add(f"{name}-1.0.0.tgz", tgz)
    return Pin(kind="npm", name=name, version="1.0.0", url=url, registry_hash=sri,
               integrity=sri, file_name=f"{name}-1.0.0.tgz", out_name=f"npm-{name}-1.0.0",
               location=location)  # fmt: skip


def deb_pin(server: Server, name: str, deb: bytes) -> Pin:
    """A pin for a .deb served by ``server``."""
    sha = hashlib.sha256(deb).hexdigest()
    url = server.add(f"{name}_1_all.deb", deb)
    return Pin(kind="deb", name=name, version="1", url=url, registry_hash=f"sha256:{sha}",
               file_sha256=sha, file_name=f"{name}_1_all.deb", out_name=f"{name}-1",
               size=len(deb))  # fmt: skip


def lock_of(store: Store, pins: list[Pin]) -> Lock:
    """A lock pinning exactly what ``pins`` unpack to (realised in ``store``): a lock a
    repository could hold, whose environment no build will reach."""
    artefacts = Builder(store, progress=False).realise(pins)
    return Lock(Spec(debian=("x",)), {"python": "3.11"}, tuple(artefacts), (), NO_ENV)


def entries(root: Path) -> list[str]:
    """Everything under ``root`` (relative paths), to show it stayed empty."""
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )

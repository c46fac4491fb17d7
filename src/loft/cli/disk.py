"""``loft disk``: the disk service (NBD server).

``loft disk serve-file`` serves raw image files; it is how the NBD server is tested
and benchmarked on its own. Serving volumes from the catalog is ``loft disk serve``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from loft.errors import LoftError
from loft.units import parse_size

_F = TypeVar("_F", bound=Callable[..., object])


@click.group()
def disk() -> None:
    """The disk service: serve volumes and images over NBD."""


def server_tls(
    tls_cert: str | None, tls_key: str | None, tls_ca: str | None, listen: str | None
) -> ssl.SSLContext | None:
    """The server's TLS context from the --tls-* options; TCP (--listen) requires TLS with
    client certificates."""
    from loft.nbd.server import make_server_ssl_context

    ssl_ctx = None
    if tls_cert or tls_key:
        if not (tls_cert and tls_key):
            raise LoftError("--tls-cert and --tls-key go together")
        ssl_ctx = make_server_ssl_context(tls_cert, tls_key, tls_ca)
    if listen and (ssl_ctx is None or tls_ca is None):
        raise LoftError(
            "--listen requires TLS with client certificates",
            hint="add --tls-cert, --tls-key and --tls-ca",
        )
    return ssl_ctx


def limit_options(command: _F) -> _F:
    """``--max-connections`` and ``--max-inflight``, as every NBD-serving command has them
    (the defaults are the server's, ``loft.nbd.server``; a test keeps them equal)."""
    command = click.option(
        "--max-inflight",
        default="512M",
        show_default=True,
        help="Bytes of requests and replies held for all clients together (K/M/G); a "
        "client that does not read its replies stops being read from.",
    )(command)
    return click.option(
        "--max-connections",
        type=click.IntRange(min=1),
        default=1024,
        show_default=True,
        help="Clients served at once; more are closed at once, with a log line.",
    )(command)


def parse_max_inflight(value: str) -> int:
    """The --max-inflight option in bytes."""
    try:
        n = parse_size(value)
    except ValueError as e:
        raise LoftError(f"bad --max-inflight: {e}") from None
    if n < 1:
        raise LoftError("--max-inflight must be positive", hint="e.g. --max-inflight 512M")
    return n


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise LoftError(f"bad --listen {value!r}", hint="use HOST:PORT, e.g. 127.0.0.1:10809")
    return host.strip("[]") or "127.0.0.1", int(port)


@disk.command("serve-file")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    required=True,
    help="Unix socket to listen on (its directory is created 0700).",
)
@click.option("--readonly", is_flag=True, help="Refuse writes on every export (EPERM).")
@click.option("--listen", help="Also listen on TCP HOST:PORT (requires --tls-*).")
@click.option("--tls-cert", type=click.Path(exists=True), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True), help="Server private key (PEM).")
@click.option(
    "--tls-ca",
    type=click.Path(exists=True),
    help="CA that signs client certificates (required for --listen).",
)
@click.option(
    "--authz",
    type=click.Path(exists=True),
    help='JSON/TOML file {"clients": {"CN": ["export", ...]}} for TCP clients.',
)
@click.option("--workers", default=16, show_default=True, help="Worker threads.")
@limit_options
@click.option("-v", "--verbose", is_flag=True, help="Log every connection event.")
def serve_file(
    images: tuple[str, ...],
    socket_path: Path,
    readonly: bool,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    authz: str | None,
    workers: int,
    max_connections: int,
    max_inflight: str,
    verbose: bool,
) -> None:
    """Serve raw image files over NBD in the foreground.

    Each IMAGE is NAME=PATH or PATH (export named after the file); the first is also
    the default export (empty name). Stops cleanly (flushing) on SIGTERM or SIGINT.

    \b
    Example:
      loft disk serve-file --socket /run/loft/nbd.sock disk=/srv/disk.img
      nbdinfo 'nbd+unix:///disk?socket=/run/loft/nbd.sock'
    """
    import uvloop

    from loft.nbd.backends.file import FileBackend
    from loft.nbd.server import ExportRegistry, NBDServer, load_authz

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    registry = ExportRegistry()
    for spec in images:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        try:
            registry.add(name, FileBackend(path, readonly=readonly))
        except OSError as e:
            raise LoftError(f"cannot open {path}: {e.strerror}") from None
    ssl_ctx = server_tls(tls_cert, tls_key, tls_ca, listen)
    authorizer = load_authz(authz) if authz else None
    max_bytes = parse_max_inflight(max_inflight)

    async def run() -> None:
        server = NBDServer(
            registry,
            authorizer=authorizer,
            ssl_context=ssl_ctx,
            workers=workers,
            max_connections=max_connections,
            max_bytes_in_flight=max_bytes,
        )
        await server.serve_unix(socket_path)
        if listen:
            host, port = _parse_listen(listen)
            addr = await server.serve_tcp(host, port)
            click.echo(f"listening on {addr[0]}:{addr[1]} (TLS)", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"serving on {socket_path}", err=True)
        await stop.wait()
        await server.close()
        for export in registry.exports():
            if export.backend.can_flush():
                export.backend.flush()
        registry.close()

    uvloop.run(run())

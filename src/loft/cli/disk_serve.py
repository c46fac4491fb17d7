"""``loft disk serve`` and friends: the disk service over the catalog's volumes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from loft.cli import output
from loft.cli.disk import limit_options, parse_max_inflight
from loft.config import Settings
from loft.errors import redact


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and either the event and its fields
    (loft's ``event key=value ...`` lines, values JSON where they parse) or, for any other
    message (a library's sentence), the message whole. Secrets in URLs are redacted."""

    def format(self, record: logging.LogRecord) -> str:
        msg = redact(record.getMessage())
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event, _, rest = msg.partition(" ")
        fields = _fields(rest) if _EVENT.fullmatch(event) else None
        if fields is None:
            out["msg"] = msg
        else:
            out["event"] = event
            out.update(fields)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out)


#: An event name: ``disk.open``, ``nbd.request_failed``.
_EVENT = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)+")
#: One ``key=value`` field; a value is a JSON string (which may hold spaces) or a word.
_FIELD = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)')


def _fields(rest: str) -> dict[str, Any] | None:
    """The ``key=value`` fields of an event line, or None when it is not made of them."""
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(rest):
        m = _FIELD.match(rest, pos)
        if m is None or m.end() == pos:
            return None if rest[pos:].strip() else out
        key, value = m.groups()
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
        pos = m.end()
    return out


def setup_logging(verbose: bool) -> None:
    """JSON log lines on stderr (every long-running loft process logs this way)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def _control_path(socket_path: Path | None) -> Path:
    from loft.node.disk_service import default_socket

    sock = socket_path or default_socket(Settings.from_env().data_dir)
    return sock.with_name("control.sock")


def _become_io_flusher() -> None:
    """Mark this process as on the I/O path (see :mod:`loft.runtime.io_flusher`): the
    writeback of a mounted workspace goes through it."""
    from loft.runtime.io_flusher import set_io_flusher

    try:
        set_io_flusher()
    except OSError as e:
        logging.getLogger("loft.disk").warning(
            "disk.io_flusher ok=false error=%s hint=%s",
            json.dumps(e.strerror or str(e)),
            json.dumps(
                "needs CAP_SYS_RESOURCE; without it, writeback under memory pressure "
                "may deadlock through attached workspaces"
            ),
        )
    else:
        logging.getLogger("loft.disk").info("disk.io_flusher ok=true")


def run_disk_service(
    socket_path: Path | None,
    listen: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_ca: str | None = None,
    authz: str | None = None,
    verbose: bool = False,
    banner: str | None = None,
    max_connections: int | None = None,
    max_bytes_in_flight: int | None = None,
) -> None:
    """Run the disk service in the foreground until SIGTERM/SIGINT (the NBD server's
    limits are its defaults where not given)."""
    import uvloop

    from loft.blockstore import Blockstore
    from loft.cli.disk import _parse_listen, server_tls
    from loft.nbd.server import DEFAULT_MAX_BYTES, DEFAULT_MAX_CONNECTIONS, load_authz
    from loft.node.disk_service import DiskService, default_socket

    setup_logging(verbose)
    _become_io_flusher()  # before any thread starts: threads inherit the flag
    settings = Settings.from_env()
    sock = socket_path or default_socket(settings.data_dir)
    ssl_ctx = server_tls(tls_cert, tls_key, tls_ca, listen)
    authorizer = load_authz(authz) if authz else None
    address = _parse_listen(listen) if listen else None
    bs = Blockstore.from_settings(settings)
    bs.ctx.check_store()

    async def main() -> None:
        service = DiskService(
            bs,
            sock,
            authorizer=authorizer,
            ssl_context=ssl_ctx,
            max_connections=max_connections or DEFAULT_MAX_CONNECTIONS,
            max_bytes_in_flight=max_bytes_in_flight or DEFAULT_MAX_BYTES,
        )
        await service.start(address)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        if banner:
            click.echo(banner.format(socket=sock), err=True)
        await service.wait()
        await service.stop()

    try:
        uvloop.run(main())
    finally:
        bs.close()


@click.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Unix socket for NBD clients [default: $LOFT_DATA_DIR/run/nbd.sock]; its "
    "directory is root-only. The control socket sits beside it.",
)
@click.option("--listen", help="Also serve TCP on HOST:PORT (requires TLS + client certs).")
@click.option("--tls-cert", type=click.Path(exists=True), help="Server certificate (PEM).")
@click.option("--tls-key", type=click.Path(exists=True), help="Server private key (PEM).")
@click.option("--tls-ca", type=click.Path(exists=True), help="CA for client certificates.")
@click.option(
    "--authz",
    type=click.Path(exists=True),
    help='Which exports each TCP client may open: {"clients": {"CN": ["vol", "vol@*"]}}.',
)
@limit_options
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def serve(
    socket_path: Path | None,
    listen: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
    authz: str | None,
    max_connections: int,
    max_inflight: str,
    verbose: bool,
) -> None:
    """Serve every volume over NBD, in the foreground, with structured (JSON) logs.

    Export NAME is the volume read-write (its lease is taken on first use and kept while
    the service runs); NAME@SNAP is a read-only snapshot. SIGTERM or SIGINT flushes,
    commits and releases every volume, then exits.

    \b
    Example:
      loft disk serve --socket /run/loft/nbd.sock &
      qemu-img info 'nbd+unix:///myvol?socket=/run/loft/nbd.sock'
    """
    run_disk_service(
        socket_path,
        listen,
        tls_cert,
        tls_key,
        tls_ca,
        authz,
        verbose,
        max_connections=max_connections,
        max_bytes_in_flight=parse_max_inflight(max_inflight),
    )


@click.command("ls-connections")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="NBD socket.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_connections(socket_path: Path | None, as_json: bool) -> None:
    """Show who is connected to which export of the running disk service."""
    from loft.node import api
    from loft.node.client import call
    from loft.node.jsoncodec import encode

    path = str(_control_path(socket_path))
    conns = call(path, api.ConnectionsRequest(), api.ConnectionsAnswer).connections
    if as_json:
        output.echo_json([encode(c) for c in conns])
        return
    rows = []
    for c in conns:
        rows.append(
            [
                c.peer,
                c.identity or "-",
                c.export or "-",
                str(c.requests),
                str(c.inflight),
                time.strftime("%H:%M:%S", time.localtime(c.since)),
            ]
        )
    output.table(rows, ["PEER", "IDENTITY", "EXPORT", "REQUESTS", "IN FLIGHT", "SINCE"])


@click.command()
@click.argument("volume")
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), help="NBD socket.")
def release(volume: str, socket_path: Path | None) -> None:
    """Commit VOLUME and release its lease in the running disk service (so that it can be
    restored or removed); it is opened again when a client next uses it."""
    from loft.node import api
    from loft.node.client import call

    call(str(_control_path(socket_path)), api.ReleaseRequest(volume), api.ReleaseAnswer)
    click.echo(f"released {volume}")


def register(group: click.Group) -> None:
    """Add these commands to the ``disk`` group."""
    group.add_command(serve)
    group.add_command(ls_connections)
    group.add_command(release)

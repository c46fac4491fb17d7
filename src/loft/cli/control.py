"""``loft control serve``: the control plane's API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from loft.errors import LoftError


class ControlServeError(LoftError):
    """The API cannot start as asked."""


F = TypeVar("F", bound=Callable[..., Any])


def listeners(command: F) -> F:
    """The preview proxy's and the metrics page's options (``control serve``, ``up``)."""
    for option in reversed(
        [
            click.option(
                "--preview-listen",
                default="127.0.0.1:7071",
                show_default=True,
                help="The preview proxy's HOST:PORT (its own origin, never the API's; "
                "anything but loopback needs --tls-cert and --tls-key), or 'none'.",
            ),
            click.option(
                "--preview-domain",
                help="Previews are PORT--WORKSPACEID.DOMAIN "
                "[$LOFT_PREVIEW_DOMAIN or preview.localhost].",
            ),
            click.option(
                "--metrics-listen",
                default="none",
                show_default=True,
                help="A loopback HOST:PORT serving /metrics without a token (a local scraper).",
            ),
        ]
    ):
        command = option(command)
    return command


@click.group()
def control() -> None:
    """The control plane: the HTTP API users and tools talk to."""


@control.command()
@click.option("--listen", default="127.0.0.1:7070", show_default=True, help="HOST:PORT, or 'none'.")
@click.option(
    "--unix", type=click.Path(path_type=Path), help="Local socket [DATA_DIR/run/api.sock]."
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--fake-node",
    is_flag=True,
    help="Serve workspaces from an in-memory node (tests, benchmarks, demos) instead of "
    "this machine's node agent (DATA_DIR/run/agent.sock).",
)
@click.option("--node-timeout", default=30.0, show_default=True, help="Seconds a node has.")
@listeners
@click.option(
    "--reap-every",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="Seconds between the idle reaper's looks at running workspaces.",
)
def serve(
    listen: str,
    unix: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    fake_node: bool,
    node_timeout: float,
    preview_listen: str,
    preview_domain: str | None,
    metrics_listen: str,
    reap_every: float,
) -> None:
    """Serve the API on LISTEN (plain HTTP on loopback only; anywhere else with
    --tls-cert and --tls-key) and on the root-only local socket, where root is admin,
    the preview proxy on PREVIEW-LISTEN (the same rule), and the idle reaper. The first
    start makes the admin and prints its token once (also kept 0600 in
    DATA_DIR/control/admin.token)."""
    import asyncio

    from loft.catalog import Catalog
    from loft.config import Settings
    from loft.control.agentnode import AgentNode
    from loft.control.fakenode import FakeNode
    from loft.control.nodeclient import NodeClient
    from loft.control.server import (
        TLS,
        ControlServer,
        parse_listen,
        write_admin_token,
        write_api_url,
        write_preview_url,
    )
    from loft.control.state import ControlState
    from loft.datadir import private_data_dir

    if (tls_cert is None) != (tls_key is None):
        raise ControlServeError("give both --tls-cert and --tls-key, or neither")
    settings = Settings.from_env()
    data_dir = private_data_dir(settings.data_dir)
    node: NodeClient = FakeNode() if fake_node else AgentNode(data_dir / "run" / "agent.sock")
    catalog = Catalog.open(settings)
    state = ControlState(catalog, node, node_timeout=node_timeout)
    tls = TLS(tls_cert, tls_key) if tls_cert and tls_key else None
    domain = preview_domain or settings.preview_domain
    server = ControlServer(
        state,
        listen=None if listen == "none" else parse_listen(listen),
        unix=unix or settings.data_dir / "run" / "api.sock",
        tls=tls,
        preview_listen=None if preview_listen == "none" else parse_listen(preview_listen),
        preview_domain=domain,
        metrics_listen=None if metrics_listen == "none" else parse_listen(metrics_listen),
        reap_every=reap_every,
    )
    token = state.accounts.ensure_first_admin()
    if token is not None:
        path = write_admin_token(settings.data_dir, token)
        click.echo(f"first admin token (shown once, kept in {path}):\n{token}", err=True)
    where = "-"
    if listen != "none":
        host = parse_listen(listen)[0]
        where = f"{'https' if tls else 'http'}://{_host(host)}:{server.port}"
        write_api_url(settings.data_dir, where)
    click.echo(f"loft API on {where} and unix://{server.unix}", err=True)
    if server.proxy is not None:
        scheme = "https" if tls else "http"
        preview = f"{scheme}://PORT--WORKSPACEID.{domain}:{server.proxy.port}"
        write_preview_url(settings.data_dir, preview)
        click.echo(f"previews on {preview}", err=True)
    if server.metrics_port:
        click.echo(
            f"metrics on http://{metrics_listen.rsplit(':', 1)[0]}:{server.metrics_port}/metrics",
            err=True,
        )
    try:
        asyncio.run(server.serve())
    finally:
        catalog.close()


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host

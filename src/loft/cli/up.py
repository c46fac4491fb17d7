"""``loft up``: start loft on its embedded defaults (what ``make run`` runs): the disk
service, the node agent and the control plane, supervised as one process tree
(:mod:`loft.node.supervisor`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from loft.cli.control import listeners
from loft.config import Settings
from loft.datadir import private_data_dir
from loft.errors import LoftError, redact

_BANNER = """
loft is up.
  API          {url}   (root on this node: {run}/api.sock, as admin)
  preview      {preview}
  data dir     {data_dir}
  chunk store  {chunks}
  catalog      {catalog}
  node API     {run}/agent.sock (workspaces), {run}/control.sock (volumes)
{token}
Try, in another shell:
  loft new dev --packages python3,git          # a workspace: a computer of its own
  loft exec dev -- python3 -c 'print("hi")'
  loft shell dev
  loft snap dev first; loft fork dev@first dev2; loft ls
  loft user add alice                          # a user with a token of their own
  loft volume create demo --size 1G            # volumes over NBD: {run}/nbd.sock
Ctrl-C stops every workspace cleanly (the next `loft up` starts them again), then the
API, the agent and the disk service (committing every volume).
"""

_TOKEN = """
  admin token  {token}
               shown this once; kept 0600 in {path}
               (elsewhere: loft login {url} --token TOKEN)
"""


def _answers(path: Path, req: object, answer: type) -> bool:
    from loft.node.client import ControlError, call

    try:
        call(str(path), req, answer, timeout=5)
    except ControlError:
        return False
    return True


def _api_answers(path: Path) -> bool:
    from loft.client import Client, ClientError

    try:
        with Client.light(f"unix://{path}", timeout=5) as c:
            c.health()
    except (ClientError, OSError):
        return False
    return True


def _first_admin(settings: Settings) -> tuple[str, Path] | None:
    """The first admin's token and where it is kept, made now if the catalog has no
    admin (then, and only then, it is printed)."""
    from loft.catalog import Catalog
    from loft.control.accounts import Accounts
    from loft.control.server import write_admin_token

    catalog = Catalog.open(settings)
    try:
        token = Accounts(catalog).ensure_first_admin()
    finally:
        catalog.close()
    if token is None:
        return None
    return token, write_admin_token(settings.data_dir, token)


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:7070",
    show_default=True,
    help="The API's HOST:PORT (anything but loopback needs --tls-cert and --tls-key).",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@listeners
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def up(
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    preview_listen: str,
    preview_domain: str | None,
    metrics_listen: str,
    verbose: bool,
) -> None:
    """Start loft with its defaults, in the foreground: the disk service, the node agent
    and the control plane's API (each restarted if it dies), over a SQLite catalog and a
    chunk directory under $LOFT_DATA_DIR. The first start prints the admin's token."""
    from loft.cli.disk_serve import setup_logging
    from loft.control.server import is_loopback, parse_listen
    from loft.node import api
    from loft.node import workspace_api as wapi
    from loft.node.agent import agent_socket
    from loft.node.client import call
    from loft.node.supervisor import Child, Supervisor

    setup_logging(verbose)
    if (tls_cert is None) != (tls_key is None):
        raise LoftError("give both --tls-cert and --tls-key, or neither")
    for what, where in (("API", listen), ("preview proxy", preview_listen)):
        if where != "none" and tls_cert is None and not is_loopback(parse_listen(where)[0]):
            raise LoftError(
                f"refusing to serve the {what} in clear on {parse_listen(where)[0]}: tokens "
                "would cross the network",
                hint="give --tls-cert and --tls-key, or listen on 127.0.0.1",
            )
    if metrics_listen != "none" and not is_loopback(parse_listen(metrics_listen)[0]):
        raise LoftError(
            "refusing to serve /metrics without a token off loopback",
            hint="--metrics-listen 127.0.0.1:PORT, or scrape the API's /metrics as admin",
        )
    s = Settings.from_env()
    data_dir = private_data_dir(s.data_dir)
    run_dir = data_dir / "run"
    control, agent = run_dir / "control.sock", agent_socket(data_dir)
    api_sock = run_dir / "api.sock"
    loft = [sys.executable, "-m", "loft.cli"]
    debug = ["-v"] if verbose else []
    tls = ["--tls-cert", str(tls_cert), "--tls-key", str(tls_key)] if tls_cert and tls_key else []
    first = _first_admin(s)
    (run_dir / "api.url").unlink(missing_ok=True)
    (run_dir / "preview.url").unlink(missing_ok=True)
    serve_flags = ["--preview-listen", preview_listen, "--metrics-listen", metrics_listen]
    if preview_domain:
        serve_flags += ["--preview-domain", preview_domain]

    def banner() -> None:
        try:  # the port the API bound (--listen HOST:0 picks one)
            url = (run_dir / "api.url").read_text().strip()
        except OSError:
            url = f"{'https' if tls else 'http'}://{listen}"
        token = "" if first is None else _TOKEN.format(token=first[0], path=first[1], url=url)
        try:
            preview = (run_dir / "preview.url").read_text().strip()
        except OSError:
            preview = "- (--preview-listen none)"
        text = _BANNER.format(
            url=url,
            preview=preview,
            data_dir=data_dir,
            chunks=redact(s.chunks_url),
            catalog=redact(s.catalog_url),
            run=run_dir,
            token=token,
        )
        click.echo(text, err=True)

    def drain() -> None:
        call(str(agent), wapi.DrainRequest(), wapi.DrainAnswer, timeout=600)

    supervisor = Supervisor(
        run_dir,
        [
            Child(
                "disk",
                [*loft, "disk", "serve", *debug],
                lambda: _answers(control, api.PingRequest(), api.PingAnswer),
            ),
            Child(
                "agent",
                [*loft, "node", "agent", *debug],
                lambda: _answers(agent, wapi.NodeRequest(), wapi.NodeAnswer),
            ),
            Child(
                "control",
                [
                    *[*loft, "control", "serve", "--listen", listen, "--unix", str(api_sock)],
                    *serve_flags,
                    *tls,
                ],
                lambda: _api_answers(api_sock),
            ),
        ],
        on_ready=banner,
        before_stop=drain,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.request_stop())
    supervisor.run()

"""``loft up``: start loft on its embedded defaults (what ``make run`` runs): the disk
service and the node agent, supervised (:mod:`loft.node.supervisor`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from loft.config import Settings
from loft.datadir import private_data_dir
from loft.errors import redact

_BANNER = """
loft is up.
  data dir     {data_dir}
  chunk store  {chunks}
  catalog      {catalog}
  node API     {run}/agent.sock (workspaces), {run}/control.sock (volumes)

Try, in another shell:
  loft new dev --packages python3,git          # a workspace: a computer of its own
  loft exec dev -- python3 -c 'print("hi")'
  loft shell dev
  loft snap dev first; loft fork dev@first dev2; loft ls
  loft volume create demo --size 1G            # volumes over NBD: {run}/nbd.sock
Ctrl-C stops every workspace cleanly (the next `loft up` starts them again), then the
disk service (committing every volume).
"""


def _answers(path: Path, req: object, answer: type) -> bool:
    from loft.node.client import ControlError, call

    try:
        call(str(path), req, answer, timeout=5)
    except ControlError:
        return False
    return True


@click.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def up(verbose: bool) -> None:
    """Start loft with its defaults, in the foreground: the disk service and the node
    agent (each restarted if it dies), over a SQLite catalog and a chunk directory
    under $LOFT_DATA_DIR."""
    from loft.cli.disk_serve import setup_logging
    from loft.node import api
    from loft.node import workspace_api as wapi
    from loft.node.agent import agent_socket
    from loft.node.client import call
    from loft.node.supervisor import Child, Supervisor

    setup_logging(verbose)
    s = Settings.from_env()
    data_dir = private_data_dir(s.data_dir)
    run_dir = data_dir / "run"
    control, agent = run_dir / "control.sock", agent_socket(data_dir)
    loft = [sys.executable, "-m", "loft.cli"]
    debug = ["-v"] if verbose else []
    banner = _BANNER.format(
        data_dir=data_dir, chunks=redact(s.chunks_url), catalog=redact(s.catalog_url), run=run_dir
    )

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
        ],
        on_ready=lambda: click.echo(banner, err=True),
        before_stop=drain,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: supervisor.request_stop())
    supervisor.run()

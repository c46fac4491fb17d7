"""``loft node ...``: the node agent (what ``loft up`` runs beside the disk service), and
what the node has committed to its workspaces."""

from __future__ import annotations

from typing import TypeVar

import click

from loft.cli import output

A = TypeVar("A")


def agent_call(req: object, answer: type[A], *, timeout: float = 120.0) -> A:
    """One request to this node's agent (root only: its socket is the data dir's)."""
    from loft.config import Settings
    from loft.node.client import call

    path = Settings.from_env().data_dir / "run" / "agent.sock"
    return call(str(path), req, answer, timeout=timeout)


@click.group()
def node() -> None:
    """This node: its agent, capacity and commitments."""


@node.command()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def agent(verbose: bool) -> None:
    """Run the node agent in the foreground (workspaces, on run/agent.sock).

    `loft up` runs it beside the disk service and restarts it if it dies. SIGTERM or
    SIGINT ends the agent and leaves every workspace running (a restarted agent adopts
    them); `loft node drain` stops them first.
    """
    import uvloop

    from loft.cli.disk_serve import setup_logging
    from loft.config import Settings
    from loft.node.agent import Agent

    setup_logging(verbose)
    uvloop.run(Agent.open(Settings.from_env()).serve())


@node.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(as_json: bool) -> None:
    """Show the node's capacity, what it has committed to workspaces, and its disk."""
    from loft.node import workspace_api as wapi
    from loft.node.jsoncodec import encode

    ans = agent_call(wapi.NodeRequest(), wapi.NodeAnswer)
    if as_json:
        output.echo_json(encode(ans))
        return
    rows = [
        ["node", ans.node],
        ["workspaces", f"{ans.workspaces} ({ans.running} running)"],
        [
            "memory",
            f"{output.size(ans.memory_committed)} of {output.size(ans.memory_capacity)} committed",
        ],
        ["CPUs", f"{ans.cpus_committed:g} of {ans.cpus_capacity:g} committed"],
        [
            "data disk",
            f"{output.size(ans.disk_free)} free, reserve {output.size(ans.disk_reserve)}",
        ],
        ["disk service", "up" if ans.disk_service else "down"],
    ]
    output.table(rows, ["FIELD", "VALUE"], show_header=False)


@node.command()
def drain() -> None:
    """Stop every workspace cleanly; they start again when the agent next starts."""
    from loft.node import workspace_api as wapi

    stopped = agent_call(wapi.DrainRequest(), wapi.DrainAnswer, timeout=3600).stopped
    click.echo(f"stopped {len(stopped)} workspace(s){': ' if stopped else ''}{', '.join(stopped)}")

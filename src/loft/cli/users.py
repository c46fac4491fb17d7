"""``loft user``: manage users (admin)."""

from __future__ import annotations

import time

import click

from loft.api import Quotas
from loft.cli.apiclient import api
from loft.cli.output import echo_json, plain, size, table
from loft.units import parse_size


@click.group()
def user() -> None:
    """Users of the control plane (admin only)."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May manage users and see every workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print {name, token} as JSON.")
def add(name: str, admin: bool, as_json: bool) -> None:
    """Make user NAME and print their first token (shown this once only)."""
    made = api().create_user(name, admin=admin)
    if as_json:
        echo_json({"name": made.name, "token": made.token})
    else:
        click.echo(made.token)


@user.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """Every user, with what they use of their quotas."""
    users = api().users()
    if as_json:
        echo_json([plain(u) for u in users])
        return
    rows = [
        (
            u.name,
            "yes" if u.admin else "",
            f"{u.usage.workspaces}/{u.quotas.workspaces}",
            f"{size(u.usage.memory, compact=True)}/{size(u.quotas.memory, compact=True)}",
            f"{u.usage.cpus:g}/{u.quotas.cpus:g}",
            f"{size(u.usage.disk, compact=True)}/{size(u.quotas.disk, compact=True)}",
            time.strftime("%Y-%m-%d", time.localtime(u.created_at)),
        )
        for u in users
    ]
    table(rows, ["NAME", "ADMIN", "WORKSPACES", "MEMORY", "CPUS", "DISK", "SINCE"])


@user.command("rm")
@click.argument("name")
def rm(name: str) -> None:
    """Delete user NAME and their tokens (they must own no workspaces)."""
    api().delete_user(name)
    click.echo(f"deleted user {name}")


@user.command("quota")
@click.argument("name")
@click.option("--workspaces", type=click.IntRange(0), help="How many workspaces.")
@click.option("--memory", help="Memory limits added up (e.g. 32G).")
@click.option("--cpus", type=click.FloatRange(0), help="CPU limits added up.")
@click.option("--disk", help="Disk sizes added up (e.g. 1T).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quota(
    name: str,
    workspaces: int | None,
    memory: str | None,
    cpus: float | None,
    disk: str | None,
    as_json: bool,
) -> None:
    """Show or change user NAME's quotas (what is not given is kept)."""
    client = api()
    old = client.user(name).quotas
    new = Quotas(
        old.workspaces if workspaces is None else workspaces,
        old.memory if memory is None else parse_size(memory),
        old.cpus if cpus is None else cpus,
        old.disk if disk is None else parse_size(disk),
    )
    q = client.update_user(name, quotas=new).quotas if new != old else old
    if as_json:
        echo_json(plain(q))
    else:
        click.echo(
            f"{name}: {q.workspaces} workspaces, {size(q.memory)} memory, "
            f"{q.cpus:g} CPUs, {size(q.disk)} disk"
        )

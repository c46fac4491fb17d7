"""``loft token``: your API tokens."""

from __future__ import annotations

import time

import click

from loft.cli.apiclient import api
from loft.cli.output import echo_json, plain, table


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "never"


@click.group()
def token() -> None:
    """Your API tokens."""


@token.command("create")
@click.option("--name", default="", help="A note: where the token is used.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(name: str, as_json: bool) -> None:
    """Make a token and print it (shown this once only)."""
    made = api().create_token(name)
    if as_json:
        echo_json(plain(made))
    else:
        click.echo(made.token)


@token.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """Your tokens (their ids, never their secrets)."""
    tokens = api().tokens()
    if as_json:
        echo_json([plain(t) for t in tokens])
        return
    table(
        [(t.id, t.name, _when(t.created_at), _when(t.last_used_at)) for t in tokens],
        ["ID", "NAME", "CREATED", "LAST USED"],
    )


@token.command("revoke")
@click.argument("token_id")
def revoke(token_id: str) -> None:
    """Revoke token TOKEN_ID (it stops working at once)."""
    api().revoke_token(token_id)
    click.echo(f"revoked {token_id}")

"""``loft login URL --token T`` and ``loft logout``: where the control plane is."""

from __future__ import annotations

import click

from loft.client import Client, Endpoint, forget_login, save_login


@click.command()
@click.argument("url")
@click.option("--token", required=True, envvar="LOFT_TOKEN", help="A token of yours.")
@click.option(
    "--ca", type=click.Path(exists=True, dir_okay=False), help="CA file for a private cert."
)
def login(url: str, token: str, ca: str | None) -> None:
    """Check TOKEN against the API at URL and keep both for later commands (in a file
    only you can read). URL is https://HOST:PORT, http://127.0.0.1:PORT or
    unix:///PATH; LOFT_URL and LOFT_TOKEN override what is kept."""
    me = Client.light(url, token, ca=ca).me()
    path = save_login(Endpoint(url, token, ca))
    role = " (admin)" if me.admin else ""
    click.echo(f"logged in to {url} as {me.name}{role}; saved in {path}")


@click.command()
def logout() -> None:
    """Forget the endpoint and token ``loft login`` kept."""
    click.echo("logged out" if forget_login() else "not logged in")

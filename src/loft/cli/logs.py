"""``loft logs NAME [-f]``: what a workspace's ``[run] command`` wrote, through the API."""

from __future__ import annotations

import sys

import click

from loft.cli.apiclient import api


@click.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Go on printing what it writes.")
@click.option("--tail", default=65536, show_default=True, help="Bytes of kept output to print.")
def logs(name: str, follow: bool, tail: int) -> None:
    """Print the output of NAME's [run] command (kept across starts and wakes)."""
    out = sys.stdout.buffer
    try:
        for chunk in api().logs(name, tail=tail, follow=follow):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass

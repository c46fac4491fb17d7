"""``loft up``: start loft on its embedded defaults (what ``make run`` runs)."""

from __future__ import annotations

import click

from loft.config import Settings


@click.command()
def up() -> None:
    """Start loft with its defaults (SQLite catalog and chunk directory under the data dir)."""
    settings = Settings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"loft data dir: {settings.data_dir}")
    click.echo(f"chunk store:   {settings.chunks_url}")
    click.echo(f"catalog:       {settings.catalog_url}")
    click.echo(
        "\nVolumes:\n"
        "  loft volume create demo --size 1G\n"
        "  loft volume import demo disk.img\n"
        "  loft volume snapshot demo before-upgrade\n"
        "  loft volume fork demo@before-upgrade demo2\n"
        "  loft volume ls\n"
    )

"""``loft volume ...``: create, inspect, import/export, snapshot, fork, restore, delete, GC."""

from __future__ import annotations

import click


@click.group()
def volume() -> None:
    """Volumes: thin-provisioned disks stored as chunks, with snapshots and forks."""

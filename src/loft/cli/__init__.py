"""The ``loft`` command. Each command group lives in its own module under loft.cli."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from loft.datadir import PRIVATE_UMASK
from loft.errors import LoftError


class LoftGroup(click.Group):
    """A click group that turns :class:`LoftError` into one line on stderr and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoftError as e:
            click.echo(f"loft: error: {e.message}", err=True)
            if e.hint:
                click.echo(f"loft: hint: {e.hint}", err=True)
            sys.exit(1)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"loft: error: {e.strerror or e}{where}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("loft: interrupted", err=True)
            sys.exit(130)


@click.group(cls=LoftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="loft")
def main() -> None:
    """loft: a computer in the cloud for every user.

    Workspaces (loft new, ls, exec, shell, snap, fork...: computers of their own, run by
    the node agent that `loft up` starts), volumes (block storage on a chunk store,
    served over NBD) and environments (a Nix-format store). State lives under
    $LOFT_DATA_DIR (default /var/lib/loft); chunks in $LOFT_CHUNKS (file:///path or
    s3://bucket/prefix?endpoint=URL); the catalog in $LOFT_CATALOG_URL (SQLite under the
    data dir, or postgresql://...).
    """


def run() -> None:
    """The ``loft`` program: the command line, in a process whose every new file is its
    owner's alone (umask 077, see :mod:`loft.datadir`). Set here, not in :func:`main`,
    so code that calls the command group in-process (tests) keeps its own umask."""
    os.umask(PRIVATE_UMASK)
    main()


def _register() -> None:
    # Imported here, not at module top, so each group's module stays apart.
    from loft.cli import disk, disk_serve, env, node, up, volume, workspace

    main.add_command(volume.volume)
    main.add_command(env.env)
    disk_serve.register(disk.disk)
    main.add_command(disk.disk)
    main.add_command(node.node)
    main.add_command(up.up)
    workspace.register(main, env.env)


_register()

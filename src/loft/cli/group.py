"""The ``loft`` click group: every command group lives in its own module under loft.cli,
and is imported only when it runs (or when ``--help`` lists them): a command that talks
to the API must not pay for the storage stack's imports."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import click

from loft.cli import reported


class LoftGroup(click.Group):
    """A click group that turns :class:`LoftError` into one line on stderr and exit 1
    (:func:`loft.cli.reported`), and loads its commands' modules when they are first
    needed (:data:`LAZY`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY and cmd_name not in self.commands:
            self.add_command(LAZY[cmd_name](), cmd_name)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        with reported():
            return super().invoke(ctx)


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


def _command(module: str, name: str) -> Callable[[], click.Command]:
    def load() -> click.Command:
        command: click.Command = getattr(importlib.import_module(f"loft.cli.{module}"), name)
        return command

    return load


def _disk() -> click.Command:
    from loft.cli import disk, disk_serve

    disk_serve.register(disk.disk)
    return disk.disk


def _env() -> click.Command:
    from loft.cli import env, workspace

    workspace.register_env(env.env)
    return env.env


#: Every command of ``loft``: its name, and how to load it.
LAZY: dict[str, Callable[[], click.Command]] = {
    "volume": _command("volume", "volume"),
    "env": _env,
    "disk": _disk,
    "up": _command("up", "up"),
    "control": _command("control", "control"),
    "login": _command("login", "login"),
    "logout": _command("login", "logout"),
    "user": _command("users", "user"),
    "token": _command("tokens", "token"),
    "cp": _command("cp", "cp"),
    "logs": _command("logs", "logs"),
    "node": _command("node", "node"),
    **{
        name: _command("workspace", command)
        for name, command in (
            ("new", "new"),
            ("ls", "ls"),
            ("info", "info"),
            ("start", "start"),
            ("stop", "stop"),
            ("rm", "rm"),
            ("snap", "snap"),
            ("snaps", "snaps"),
            ("restore", "restore"),
            ("fork", "fork"),
        )
    },
    **{
        name: _command("workspace_stream", command)
        for name, command in (("exec", "exec_"), ("shell", "shell"), ("forward", "forward"))
    },
}

"""Workspace commands: ``loft new``, ``ls``, ``info``, ``start``, ``stop``, ``rm``,
``snap``, ``snaps``, ``restore``, ``fork``, and ``loft env switch`` / ``rollback``.

Every one is a request to the node agent (``run/agent.sock``, :mod:`loft.node.client`):
the CLI parses, sends, prints. It imports nothing heavy (the standard library, click and
the API's types), so a command costs its round trip, not an import of loft's storage.
Bad input is one line and a hint, exit 1 (never a usage dump).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from loft.cli import output
from loft.errors import LoftError

if TYPE_CHECKING:
    from loft.node.workspace_api import EnvAnswer, WorkspaceInfo

__all__ = ["agent_call", "agent_path", "register"]

A = TypeVar("A")
#: ``new``, ``fork`` and ``env switch`` may build an environment first: minutes, not hours.
_BUILD_TIMEOUT = 3600.0


def agent_path() -> str:
    """The node agent's socket for this data dir."""
    from loft.config import Settings

    return str(Settings.from_env().data_dir / "run" / "agent.sock")


def agent_call(req: object, answer: type[A], *, timeout: float = 120.0) -> A:
    """One request to the node agent, its typed answer."""
    from loft.node.client import call

    return call(agent_path(), req, answer, timeout=timeout)


def _size(option: str, value: str) -> int:
    from loft.units import parse_size

    try:
        return parse_size(value)
    except ValueError as e:
        raise LoftError(f"bad {option}: {e}", hint=f"e.g. {option} 1G") from None


def _spec(spec_file: Path | None, packages: str | None) -> tuple[list[str], str, str]:
    """(packages, spec text, its source) from ``--packages`` or ``--spec``."""
    if spec_file is not None and packages is not None:
        raise LoftError("give --spec or --packages, not both")
    if spec_file is None:
        names = [p.strip() for p in (packages or "").split(",") if p.strip()]
        if packages is not None and not names:
            raise LoftError("--packages is empty", hint="e.g. --packages python3,git")
        return names, "", ""
    try:
        return [], spec_file.read_text(), str(spec_file)
    except (OSError, UnicodeDecodeError) as e:
        raise LoftError(
            f"cannot read {spec_file}: {getattr(e, 'strerror', None) or e}",
            hint="--spec takes a loft.toml or a loft.lock",
        ) from None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _echo_info(ws: WorkspaceInfo, as_json: bool) -> None:
    from loft.node.jsoncodec import encode

    if as_json:
        output.echo_json(encode(ws))
        return
    shown = {
        **encode(ws),
        "size": output.size(ws.size, compact=True),
        "memory": output.size(ws.memory, compact=True),
        "cpus": f"{ws.cpus:g}",
        "created_at": _when(ws.created_at),
        "memory_used": None if ws.memory_used is None else output.size(ws.memory_used),
    }
    rows = [[k, "-" if v is None else str(v)] for k, v in shown.items()]
    output.table(rows, ["FIELD", "VALUE"], show_header=False)


def _summary(ws: WorkspaceInfo) -> str:
    return (
        f"{ws.name} (id {ws.id}, {output.size(ws.size, compact=True)} disk, "
        f"{output.size(ws.memory, compact=True)} memory, {ws.cpus:g} CPU, "
        f"network {ws.network}, {ws.phase})"
    )


_spec_options = [
    click.option(
        "--spec",
        "spec_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="A loft.toml (locked and built on the node) or a loft.lock (built).",
    ),
    click.option("--packages", help="Comma-separated Debian packages: python3,git."),
]


@click.command()
@click.argument("name")
@_spec_options[0]
@_spec_options[1]
@click.option("--size", default="16G", show_default=True, help="Disk size.")
@click.option("--memory", default="1G", show_default=True, help="Memory limit (no swap).")
@click.option("--cpus", default="1", show_default=True, help="CPU limit (fractions allowed).")
@click.option("--pids", default="1024", show_default=True, help="Processes and threads.")
@click.option("--net", default="none", show_default=True, help="none (loopback only) or nat.")
@click.option("--stopped", is_flag=True, help="Create it without starting it.")
@click.option("--json", "as_json", is_flag=True, help="Print the workspace as JSON.")
def new(
    name: str,
    spec_file: Path | None,
    packages: str | None,
    size: str,
    memory: str,
    cpus: str,
    pids: str,
    net: str,
    stopped: bool,
    as_json: bool,
) -> None:
    """Create workspace NAME and start it: its own disk (a fork of a pre-formatted
    template), an environment at /usr (built from --packages or --spec; default: bash),
    limits and a network. All or nothing: a failure leaves nothing behind."""
    from loft.node import workspace_api as wapi

    pkgs, text, source = _spec(spec_file, packages)
    try:
        n_cpus, n_pids = float(cpus), int(pids)
    except ValueError:
        raise LoftError(
            f"bad --cpus {cpus!r} or --pids {pids!r}: numbers please",
            hint="e.g. --cpus 0.5 --pids 512",
        ) from None
    if net not in ("none", "nat"):
        raise LoftError(f"bad --net {net!r}", hint="--net none (the default) or --net nat")
    req = wapi.CreateWorkspaceRequest(
        name=name,
        packages=pkgs,
        spec=text,
        spec_source=source,
        size=_size("--size", size),
        memory=_size("--memory", memory),
        cpus=n_cpus,
        pids=n_pids,
        network=net,
        start=not stopped,
    )
    ws = agent_call(req, wapi.WorkspaceInfo, timeout=_BUILD_TIMEOUT)
    if as_json:
        _echo_info(ws, True)
    else:
        click.echo(f"created {_summary(ws)}")


@click.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """List workspaces."""
    from loft.node import workspace_api as wapi
    from loft.node.jsoncodec import encode

    wss = agent_call(wapi.ListWorkspacesRequest(), wapi.WorkspacesAnswer).workspaces
    if as_json:
        output.echo_json([encode(w) for w in wss])
        return
    output.table(
        (
            [
                w.name,
                w.phase,
                w.id,
                str(w.env_generation or "-"),
                f"{w.cpus:g}",
                output.size(w.memory, compact=True),
                output.size(w.size, compact=True),
                w.network,
                _when(w.created_at),
            ]
            for w in wss
        ),
        ["NAME", "PHASE", "ID", "ENV", "CPUS", "MEMORY", "DISK", "NET", "CREATED"],
    )


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(name: str, as_json: bool) -> None:
    """Show workspace NAME: its record, phase, environment and live resource use."""
    from loft.node import workspace_api as wapi

    _echo_info(agent_call(wapi.GetWorkspaceRequest(name), wapi.WorkspaceInfo), as_json)


@click.command()
@click.argument("name")
def start(name: str) -> None:
    """Start workspace NAME (with its environment's current generation)."""
    from loft.node import workspace_api as wapi

    ws = agent_call(wapi.StartWorkspaceRequest(name), wapi.WorkspaceInfo)
    click.echo(f"started {ws.name}")


@click.command()
@click.argument("name")
def stop(name: str) -> None:
    """Stop workspace NAME: its processes end (TERM, then KILL after 5 s), its disk is
    unmounted and committed. Its files stay."""
    from loft.node import workspace_api as wapi

    ws = agent_call(wapi.StopWorkspaceRequest(name), wapi.WorkspaceInfo)
    click.echo(f"stopped {ws.name}")


@click.command()
@click.argument("name")
def rm(name: str) -> None:
    """Remove workspace NAME: it is stopped, and its disk, snapshots and environment
    profile are deleted."""
    from loft.node import workspace_api as wapi

    agent_call(wapi.RemoveWorkspaceRequest(name), wapi.RemovedAnswer)
    click.echo(f"removed {name}")


@click.command()
@click.argument("name")
@click.argument("snapshot", required=False, default="")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def snap(name: str, snapshot: str, as_json: bool) -> None:
    """Snapshot workspace NAME (as SNAPSHOT; default: the time). A running workspace's
    writers pause only while its disk is committed."""
    from loft.node import workspace_api as wapi
    from loft.node.jsoncodec import encode

    ans = agent_call(wapi.SnapWorkspaceRequest(name, snapshot), wapi.SnapAnswer)
    if as_json:
        output.echo_json(encode(ans))
        return
    paused = f"; writers paused {ans.pause_ms:.0f} ms" if ans.running else ""
    click.echo(f"snapshot {name}@{ans.snapshot} (version {ans.version}{paused})")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def snaps(name: str, as_json: bool) -> None:
    """List the snapshots of workspace NAME (automatic ones, such as a restore's undo,
    are marked)."""
    from loft.node import workspace_api as wapi
    from loft.node.jsoncodec import encode

    found = agent_call(wapi.ListSnapshotsRequest(name), wapi.SnapshotsAnswer).snapshots
    if as_json:
        output.echo_json([encode(s) for s in found])
        return
    output.table(
        (
            [
                s.name,
                str(s.version),
                _when(s.created_at),
                "yes" if s.auto else "",
                s.env_path or "-",
            ]
            for s in found
        ),
        ["SNAPSHOT", "VERSION", "CREATED", "AUTO", "ENVIRONMENT"],
    )


@click.command()
@click.argument("name")
@click.argument("snapshot")
def restore(name: str, snapshot: str) -> None:
    """Point workspace NAME back at SNAPSHOT, with the environment it had then. A
    running workspace is stopped and started again. Undoable: the replaced state is
    kept as a snapshot."""
    from loft.node import workspace_api as wapi

    ans = agent_call(wapi.RestoreWorkspaceRequest(name, snapshot), wapi.RestoreWorkspaceAnswer)
    again = " and started again" if ans.restarted else ""
    click.echo(
        f"restored {name} to {snapshot}{again}; undo with: loft restore {name} {ans.undo_snapshot}"
    )


@click.command()
@click.argument("ref", metavar="NAME[@SNAP]")
@click.argument("new_name", metavar="NEW")
@click.option("--stopped", is_flag=True, help="Create the fork without starting it.")
def fork(ref: str, new_name: str, stopped: bool) -> None:
    """Create workspace NEW from NAME: from its snapshot SNAP, or from a snapshot taken
    now (a running workspace pauses only for it). The two are independent."""
    from loft.node import workspace_api as wapi

    name, _, snapshot = ref.partition("@")
    req = wapi.ForkWorkspaceRequest(name, new_name, snapshot, start=not stopped)
    ws = agent_call(req, wapi.WorkspaceInfo, timeout=_BUILD_TIMEOUT)
    click.echo(f"forked {ref} as {_summary(ws)}")


@click.command("switch")
@click.argument("name")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
def env_switch(name: str, spec_file: Path) -> None:
    """Give workspace NAME the environment of SPEC (a loft.toml, locked and built on the
    node, or a loft.lock): a new generation of its profile, used from its next start."""
    from loft.node import workspace_api as wapi

    _pkgs, text, source = _spec(spec_file, None)
    ans = agent_call(
        wapi.SwitchEnvRequest(name, spec=text, spec_source=source),
        wapi.EnvAnswer,
        timeout=_BUILD_TIMEOUT,
    )
    _echo_env(name, ans)


@click.command("rollback")
@click.argument("name")
@click.option("--to", "to", type=int, default=None, help="Generation (default: the previous).")
def env_rollback(name: str, to: int | None) -> None:
    """Give workspace NAME its previous environment generation (or --to N) again, used
    from its next start."""
    from loft.node import workspace_api as wapi

    _echo_env(name, agent_call(wapi.RollbackEnvRequest(name, to), wapi.EnvAnswer))


def _echo_env(name: str, ans: EnvAnswer) -> None:
    when = (
        f"from its next start (loft stop {name} && loft start {name})"
        if ans.running
        else "when it starts"
    )
    click.echo(f"{name}: generation {ans.generation} -> {ans.env_path}, used {when}")


def register(main: click.Group, env: click.Group) -> None:
    """Add the workspace commands to ``loft`` and ``loft env``."""
    from loft.cli import workspace_stream

    for command in (new, ls, info, start, stop, rm, snap, snaps, restore, fork):
        main.add_command(command)
    workspace_stream.register(main)
    env.add_command(env_switch)
    env.add_command(env_rollback)

"""Workspace commands: ``loft new``, ``ls``, ``info``, ``start``, ``stop``, ``rm``,
``snap``, ``snaps``, ``restore``, ``fork``, and ``loft env switch`` / ``rollback``.

Every one is a request to the control plane's API (:mod:`loft.client`, at ``LOFT_URL``
and ``LOFT_TOKEN``, the ``loft login`` file, or, for root on the node, its root-only
local socket as admin): the CLI parses, sends, prints. Its request path imports the
standard library, click and the API's dataclasses only (HTTP by hand, not httpx), so
a command costs its round trip, not an import of loft's storage. ``ls`` and ``snap``
are declared in :mod:`loft.cli.quick`, which runs them without click. Bad input is one
line and a hint, exit 1 (never a usage dump).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from loft.cli import output, quick
from loft.cli.apiclient import api
from loft.errors import LoftError

if TYPE_CHECKING:
    from loft.api import EnvSpec, EnvState, Workspace

__all__ = ["register_env"]

#: ``new``, ``fork`` and ``env switch`` may build an environment first: minutes, not hours.
_BUILD_TIMEOUT = 3600.0


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


def _name(name: str) -> str:
    """``name`` if the API would take it as a workspace name (said here in the CLI's
    words rather than as the API's pattern)."""
    import re

    from loft.api import WORKSPACE_NAME_MAX, WORKSPACE_NAME_PATTERN

    if len(name) > WORKSPACE_NAME_MAX or not re.match(WORKSPACE_NAME_PATTERN, name):
        raise LoftError(
            f"bad workspace name {name!r}",
            hint=f"use 1-{WORKSPACE_NAME_MAX} lowercase letters, digits and single '-', "
            "starting with a letter and not ending with '-' (it may become part of a host "
            "name)",
        )
    return name


def _limits(size: int, memory: int, cpus: float, pids: int) -> None:
    """Refuse a size or limit outside what the API accepts, naming the option."""
    from loft.api import LIMIT_BOUNDS, MAX_SIZE, MIN_SIZE
    from loft.units import format_size

    def refuse(what: str, value: str, least: str, most: str, option: str) -> LoftError:
        return LoftError(
            f"{what} {value} is not between {least} and {most}",
            hint=f"see `loft new --help`; e.g. {option}",
        )

    if size < MIN_SIZE:
        raise LoftError(
            f"size {format_size(size)} is below {format_size(MIN_SIZE)}",
            hint="ask for --size 1G or more",
        )
    if size > MAX_SIZE:
        raise refuse("size", format_size(size), "64M", format_size(MAX_SIZE), "--size 16G")
    least, most = LIMIT_BOUNDS["memory"]
    if memory < least:
        raise LoftError(
            f"memory {format_size(memory)} is below {format_size(int(least))}",
            hint="ask for --memory 256M or more",
        )
    if memory > most:
        raise refuse("memory", format_size(memory), "16M", format_size(int(most)), "--memory 1G")
    least, most = LIMIT_BOUNDS["cpus"]
    if not least <= cpus <= most:
        raise refuse("cpus", f"{cpus:g}", f"{least:g}", f"{most:g}", "--cpus 0.5")
    least, most = LIMIT_BOUNDS["pids"]
    if pids < least:
        raise LoftError(f"pids limit {pids} is below {least:g}", hint="e.g. --pids 512")
    if pids > most:
        raise refuse("pids limit", str(pids), f"{least:g}", f"{most:g}", "--pids 512")


def _env(spec_file: Path | None, packages: str | None) -> EnvSpec:
    from loft.api import EnvSpec

    names, text, _source = _spec(spec_file, packages)
    return EnvSpec(packages=names, spec=text or None)


def _echo_info(ws: Workspace, as_json: bool) -> None:
    if as_json:
        output.echo_json(output.plain(ws))
        return
    shown = {
        "id": ws.id,
        "name": ws.name,
        "owner": ws.owner,
        "state": ws.state,
        "node": ws.node or None,
        "runtime": ws.runtime,
        "network": ws.network,
        "size": output.size(ws.size, compact=True),
        "memory": output.size(ws.limits.memory, compact=True),
        "cpus": f"{ws.limits.cpus:g}",
        "pids": ws.limits.pids,
        "env": ",".join(ws.env.packages) if ws.env.packages else ("spec" if ws.env.spec else None),
        "env_generation": ws.env_generation,
        "env_path": ws.env_path,
        "idle_timeout": f"{ws.idle_timeout:g} s" if ws.idle_timeout else "never",
        "created_at": output.when(ws.created_at),
        "memory_used": None if ws.memory_used is None else output.size(ws.memory_used),
        "pids_used": ws.pids_used,
    }
    rows = [[k, "-" if v is None else str(v)] for k, v in shown.items()]
    output.table(rows, ["FIELD", "VALUE"], show_header=False)


def _summary(ws: Workspace) -> str:
    return (
        f"{ws.name} (id {ws.id}, {output.size(ws.size, compact=True)} disk, "
        f"{output.size(ws.limits.memory, compact=True)} memory, {ws.limits.cpus:g} CPU, "
        f"network {ws.network}, {ws.runtime}, {ws.state})"
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
@click.option(
    "--runtime",
    default="sandbox",
    show_default=True,
    help="sandbox (a container) or vm (a QEMU microVM, its memory kept when it stops).",
)
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
    runtime: str,
    stopped: bool,
    as_json: bool,
) -> None:
    """Create workspace NAME and start it: its own disk (a fork of a pre-formatted
    template), an environment at /usr (built from --packages or --spec; default: bash),
    limits and a network. All or nothing: a failure leaves nothing behind."""
    from loft.api import CreateWorkspace, Limits

    env = _env(spec_file, packages)
    try:
        n_cpus, n_pids = float(cpus), int(pids)
    except ValueError:
        raise LoftError(
            f"bad --cpus {cpus!r} or --pids {pids!r}: numbers please",
            hint="e.g. --cpus 0.5 --pids 512",
        ) from None
    if net not in ("none", "nat"):
        raise LoftError(f"bad --net {net!r}", hint="--net none (the default) or --net nat")
    if runtime not in ("sandbox", "vm"):
        raise LoftError(
            f"bad --runtime {runtime!r}", hint="--runtime sandbox (the default) or --runtime vm"
        )
    n_size, n_memory = _size("--size", size), _size("--memory", memory)
    _limits(n_size, n_memory, n_cpus, n_pids)
    req = CreateWorkspace(
        _name(name),
        env=env,
        size=n_size,
        limits=Limits(n_memory, n_cpus, n_pids),
        network=net,  # type: ignore[arg-type]  # checked above
        runtime=runtime,  # type: ignore[arg-type]  # checked above
        start=not stopped,
    )
    with api(_BUILD_TIMEOUT) as c:
        ws = c.create_workspace(req)
    if as_json:
        _echo_info(ws, True)
    else:
        click.echo(f"created {_summary(ws)}")


ls = quick.LS.click_command()


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(name: str, as_json: bool) -> None:
    """Show workspace NAME: its record, state, environment and live resource use."""
    with api() as c:
        _echo_info(c.workspace(name), as_json)


@click.command()
@click.argument("name")
def start(name: str) -> None:
    """Start workspace NAME (with its environment's current generation)."""
    with api() as c:
        ws = c.start(name)
    click.echo(f"started {ws.name}")


@click.command()
@click.argument("name")
@click.option(
    "--cold", is_flag=True, help="A VM: shut it down (its memory is lost) instead of suspending."
)
def stop(name: str, cold: bool) -> None:
    """Stop workspace NAME: its processes end (TERM, then KILL after 5 s), its disk is
    unmounted and committed. Its files stay. A VM is suspended instead: its memory is
    kept and `loft start` resumes it where it was (--cold shuts it down)."""
    with api() as c:
        ws = c.stop(name, cold=cold)
    how = "suspended" if ws.runtime == "vm" and not cold else "stopped"
    click.echo(f"{how} {ws.name}")


@click.command()
@click.argument("ref", metavar="NAME|NAME@SNAP")
def rm(ref: str) -> None:
    """Remove workspace NAME, or its snapshot SNAP alone (NAME@SNAP). A workspace is
    stopped, and its disk, snapshots and environment profile are deleted; a snapshot
    goes with its memory image (a VM's), and forks made from it stay intact."""
    name, at, snapshot = ref.partition("@")
    if at:
        quick.snapshot_name(snapshot)
    with api() as c:
        if at:
            c.delete_snapshot(name, snapshot)
        else:
            c.delete_workspace(name)
    click.echo(f"removed {ref}")


snap = quick.SNAP.click_command()


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def snaps(name: str, as_json: bool) -> None:
    """List the snapshots of workspace NAME (automatic ones, such as a restore's undo,
    are marked)."""
    with api() as c:
        found = c.snapshots(name)
    if as_json:
        output.echo_json([output.plain(s) for s in found])
        return
    output.table(
        (
            [s.name, str(s.version or "-"), output.when(s.created_at), "yes" if s.auto else ""]
            for s in found
        ),
        ["SNAPSHOT", "VERSION", "CREATED", "AUTO"],
    )


@click.command()
@click.argument("name")
@click.argument("snapshot")
def restore(name: str, snapshot: str) -> None:
    """Point workspace NAME back at SNAPSHOT, with the environment it had then. A
    running workspace is stopped and started again. Undoable: the replaced state is
    kept as a snapshot."""
    with api() as c:
        ans = c.restore(name, snapshot)
    again = " and started again" if ans.restarted else ""
    click.echo(
        f"restored {name} to {snapshot}{again}; undo with: loft restore {name} {ans.undo_snapshot}"
    )


@click.command()
@click.argument("ref", metavar="NAME[@SNAP]")
@click.argument("new_name", metavar="NEW")
@click.option("--stopped", is_flag=True, help="Create the fork without starting it.")
@click.option(
    "--live", is_flag=True, help="A VM: the fork runs on from its memory (same processes)."
)
@click.option(
    "--new-machine-id", is_flag=True, help="With --live: a new /etc/machine-id in the fork."
)
def fork(ref: str, new_name: str, stopped: bool, live: bool, new_machine_id: bool) -> None:
    """Create workspace NEW from NAME: from its snapshot SNAP, or from a snapshot taken
    now (a running workspace pauses only for it). The two are independent. With
    --live (VMs), NEW goes on from NAME's memory: the same processes, then diverging."""
    name, _, snapshot = ref.partition("@")
    _name(new_name)
    if live and stopped:
        raise LoftError("a live fork runs: --live and --stopped do not go together",
                        hint="leave out --stopped")  # fmt: skip
    if new_machine_id and not live:
        raise LoftError("--new-machine-id is for a live fork (a booted fork keeps the file)",
                        hint="add --live")  # fmt: skip
    with api(_BUILD_TIMEOUT) as c:
        ws = c.fork(name, new_name, snapshot=snapshot or None, start=not stopped, live=live,
                    new_machine_id=new_machine_id)  # fmt: skip
    click.echo(f"forked {ref} as {_summary(ws)}")


@click.command("switch")
@click.argument("name")
@click.argument("spec_file", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
def env_switch(name: str, spec_file: Path) -> None:
    """Give workspace NAME the environment of SPEC (a loft.toml, locked and built on the
    node, or a loft.lock): a new generation of its profile, used from its next start."""
    with api(_BUILD_TIMEOUT) as c:
        _echo_env(name, c.env_switch(name, _env(spec_file, None)))


@click.command("rollback")
@click.argument("name")
@click.option("--to", "to", type=int, default=None, help="Generation (default: the previous).")
def env_rollback(name: str, to: int | None) -> None:
    """Give workspace NAME its previous environment generation (or --to N) again, used
    from its next start."""
    with api() as c:
        _echo_env(name, c.env_rollback(name, to))


def _echo_env(name: str, ans: EnvState) -> None:
    path = next((g.env_path for g in ans.generations if g.number == ans.current), None)
    click.echo(
        f"{name}: generation {ans.current} -> {path or '-'}, used from its next start "
        f"(loft stop {name} && loft start {name} if it runs)"
    )


def register_env(env: click.Group) -> None:
    """Add ``switch`` and ``rollback`` to ``loft env``."""
    env.add_command(env_switch)
    env.add_command(env_rollback)

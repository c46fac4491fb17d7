"""The commands users run most, without click: ``loft ls`` and ``loft snap``.

Importing click costs a CLI process ~20 ms here, a seventh of a snapshot's whole wall
time (bench/cli_latency.py). These commands take a few positional arguments and flags,
so :func:`run_quick` reads them by hand and runs the command. Each is declared once, as
a :class:`QuickCommand`: the same declaration builds its click command
(:meth:`QuickCommand.click_command`, what ``loft --help`` lists and the click group
runs), so the two paths cannot disagree on what a command takes. Anything the quick
path does not read plainly (``-h``/``--help``, an unknown option, a missing or extra
argument) goes to click, which explains it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loft.cli import output, reported
from loft.cli.apiclient import api
from loft.errors import LoftError

if TYPE_CHECKING:
    import click

__all__ = ["LS", "QUICK", "SNAP", "Arg", "Flag", "QuickCommand", "run_quick", "snapshot_name"]


@dataclass(frozen=True)
class Arg:
    """A positional argument; an optional one defaults to ``""``."""

    name: str
    required: bool = True


@dataclass(frozen=True)
class Flag:
    """A boolean option (``--json``) and the parameter it sets."""

    option: str
    dest: str
    help: str


@dataclass(frozen=True)
class QuickCommand:
    """A command runnable without click: ``run`` (its docstring is the help), called
    with one keyword per argument and flag."""

    name: str
    run: Callable[..., None]
    args: tuple[Arg, ...] = ()
    flags: tuple[Flag, ...] = ()

    def parse(self, argv: Sequence[str]) -> dict[str, object] | None:
        """The keywords for :attr:`run`, or None when ``argv`` is for click to read."""
        flags = {f.option: f.dest for f in self.flags}
        values: dict[str, object] = {f.dest: False for f in self.flags}
        positional: list[str] = []
        for word in argv:
            if word in flags:
                values[flags[word]] = True
            elif word.startswith("-"):
                return None
            else:
                positional.append(word)
        least = sum(a.required for a in self.args)
        if not least <= len(positional) <= len(self.args):
            return None
        for i, a in enumerate(self.args):
            values[a.name] = positional[i] if i < len(positional) else ""
        return values

    def click_command(self) -> click.Command:
        """The same command for the click group."""
        import inspect

        import click

        params: list[click.Parameter] = [
            click.Argument([a.name]) if a.required else click.Argument([a.name], default="")
            for a in self.args
        ]
        params += [click.Option([f.option, f.dest], is_flag=True, help=f.help) for f in self.flags]
        return click.Command(
            self.name, callback=self.run, params=params, help=inspect.getdoc(self.run)
        )


def run_quick(argv: Sequence[str]) -> bool:
    """Run ``loft ARGV`` here if it is a quick command whose arguments parse; False
    when click should take it."""
    if not argv or argv[0] not in QUICK:
        return False
    command = QUICK[argv[0]]
    values = command.parse(argv[1:])
    if values is None:
        return False
    with reported():
        command.run(**values)
    return True


def snapshot_name(snapshot: str) -> str:
    """``snapshot`` if the API would take it as a snapshot name (said in the CLI's
    words rather than as the API's pattern)."""
    import re

    from loft.api import SNAPSHOT_NAME_PATTERN

    if not re.match(SNAPSHOT_NAME_PATTERN, snapshot):
        raise LoftError(
            f"bad snapshot name {snapshot!r}",
            hint="use up to 128 letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return snapshot


_JSON = Flag("--json", "as_json", "Machine-readable output.")


def _ls(as_json: bool) -> None:
    """List workspaces (yours; an admin's, everyone's)."""
    with api() as c:
        wss = c.workspaces()
    if as_json:
        output.echo_json([output.plain(w) for w in wss])
        return
    # An admin's listing may hold several users' workspaces, whose names may repeat.
    owners = len({w.owner for w in wss}) > 1
    output.table(
        (
            [
                *([w.owner] if owners else []),
                w.name,
                w.state,
                w.runtime,
                w.id,
                str(w.env_generation or "-"),
                f"{w.limits.cpus:g}",
                output.size(w.limits.memory, compact=True),
                output.size(w.size, compact=True),
                w.network,
                output.when(w.created_at),
            ]
            for w in wss
        ),
        [
            *(["OWNER"] if owners else []),
            *("NAME", "PHASE", "RUNTIME", "ID", "ENV", "CPUS", "MEMORY", "DISK", "NET", "CREATED"),
        ],
    )


def _snap(name: str, snapshot: str, as_json: bool) -> None:
    """Snapshot workspace NAME (as SNAPSHOT; default: the time). A running workspace's
    writers pause only while its disk is committed."""
    if snapshot:
        snapshot_name(snapshot)
    with api() as c:
        ans = c.snapshot(name, snapshot or None)
    if as_json:
        output.echo_json(output.plain(ans))
        return
    paused = f"; writers paused {ans.pause_ms:.0f} ms" if ans.pause_ms is not None else ""
    output.echo(f"snapshot {name}@{ans.name} (version {ans.version}{paused})")


LS = QuickCommand("ls", _ls, flags=(_JSON,))
SNAP = QuickCommand(
    "snap",
    _snap,
    args=(Arg("name"), Arg("snapshot", required=False)),
    flags=(_JSON,),
)
#: The quick commands, by name.
QUICK = {c.name: c for c in (LS, SNAP)}

"""``loft env lock / build / run``: from a spec to a locked, built, runnable environment."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loft.cli.output import echo_json
from loft.config import Settings
from loft.envstore import EnvstoreError
from loft.envstore.progress import BytesFetched, TaskAdvanced, TasksFinished, TaskStarted

if TYPE_CHECKING:  # imported lazily: `loft --help` should not pay for the env builder
    from rich.console import Console
    from rich.progress import TaskID

    from loft.envstore.lock import Lock
    from loft.envstore.progress import BuildEvent, BuildProgress
    from loft.envstore.store import Store

__all__ = ["register"]


def _store() -> Store:
    from loft.envstore.store import Store

    return Store.open(Settings.from_env())


class _BuildBars:
    """The builder's tasks (:mod:`loft.envstore.progress`) as transient rich bars on
    stderr: name, bar, done/total, bytes fetched, elapsed time."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, event: BuildEvent) -> None:
        match event:
            case TaskStarted(task, total):
                if not self._tasks:
                    self._bars.start()
                self._tasks[task] = self._bars.add_task(task, total=total, info="")
            case TaskAdvanced(task):
                self._bars.advance(self._tasks[task])
            case BytesFetched(task, total):
                self._bars.update(self._tasks[task], info=f"{total / 1e6:.1f} MB")
            case TasksFinished() if self._tasks:
                self._bars.stop()
                for t in self._tasks.values():
                    self._bars.remove_task(t)
                self._tasks = {}


def _progress() -> BuildProgress | None:
    """Progress bars for a build when stderr is a terminal; nothing otherwise."""
    from rich.console import Console

    console = Console(stderr=True)
    return _BuildBars(console) if console.is_terminal else None


@click.command()
@click.argument("spec_file", required=False, default="loft.toml",
                type=click.Path(dir_okay=False, path_type=Path))  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the lock [default: loft.lock next to the spec].")  # fmt: skip
@click.option("-j", "--jobs", type=int, default=0, help="Parallel downloads/unpacks (default 8).")
@click.option("--refresh", is_flag=True,
              help="Download fresh Debian package indexes before resolving.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print a summary as JSON.")
def lock(spec_file: Path, output: Path | None, jobs: int, refresh: bool, as_json: bool) -> None:
    """Resolve SPEC_FILE (loft.toml) to a full closure and write loft.lock.

    Debian packages are resolved by apt against an empty system (plus the Essential set
    and ca-certificates, without recommends), PyPI requirements by pip (binary wheels for
    Debian's python3 only), npm packages by npm (nodejs comes from Debian). Every
    artefact is downloaded, verified, unpacked in a sandbox and added to the store, so the
    lock records each registry hash, store path and NAR hash, and the environment's path.
    """
    from loft.envstore.build import lock_spec
    from loft.envstore.lock import dumps
    from loft.envstore.spec import load_spec

    t0 = time.monotonic()
    spec = load_spec(spec_file)
    locked = lock_spec(spec, _store(), jobs=jobs, refresh=refresh, progress=_progress())
    out = output or spec_file.with_name("loft.lock")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dumps(locked))
    tmp.replace(out)
    summary = {"lock": str(out), "env": locked.env.path, "artefacts": len(locked.artefacts),
               "seconds": round(time.monotonic() - t0, 3)}  # fmt: skip
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"locked {len(locked.artefacts)} artefacts to {out}\n{locked.env.path}")


def _load_lock(lock_file: Path) -> Lock:
    from loft.envstore.lock import LockError, loads

    try:
        text = lock_file.read_text()
    except OSError as e:
        raise LockError(f"cannot read lock file {lock_file}: {e.strerror or e}") from None
    return loads(text, source=str(lock_file))


@click.command()
@click.argument("lock_file", required=False, default="loft.lock",
                type=click.Path(dir_okay=False, path_type=Path))  # fmt: skip
@click.option("-j", "--jobs", type=int, default=0, help="Parallel downloads/unpacks (default 8).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(lock_file: Path, jobs: int, as_json: bool) -> None:
    """Realise LOCK_FILE exactly: fetch, verify, unpack and compose what is missing.

    Artefacts already in the store are not touched; when the environment path is already
    valid nothing happens at all. Prints the environment's store path.
    """
    from loft.envstore.build import build_lock

    t0 = time.monotonic()
    env = build_lock(_load_lock(lock_file), _store(), jobs=jobs, progress=_progress())
    if as_json:
        echo_json({"env": env.path, "nar_hash": env.nar_hash,
                   "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
    else:
        click.echo(env.path)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("env_ref", metavar="ENV|LOCK")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-e", "--env", "setenv", multiple=True, metavar="NAME=VALUE",
              help="Set an environment variable in the sandbox (repeatable).")  # fmt: skip
def run(env_ref: str, command: tuple[str, ...], setenv: tuple[str, ...]) -> None:
    """Run COMMAND in a sandbox with the environment at /usr; exit with its status.

    ENV is a store path, a profile name, or a loft.lock (built first if needed). Only the
    environment's own closure of /nix/store is visible (read-only), home is a tmpfs, and
    there is no network. Example: loft env run loft.lock -- python3 -c 'import requests'
    """
    from loft.envstore.run import run_in_env

    store = _store()
    extra = {}
    for item in setenv:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise EnvstoreError(f"--env {item!r} is not NAME=VALUE")
        extra[name] = value
    if Path(env_ref).is_file():
        from loft.envstore.build import build_lock

        env_path = build_lock(_load_lock(Path(env_ref)), store, progress=_progress()).path
    else:
        from loft.cli.env import open_profiles
        from loft.envstore.env_ref import resolve_env

        env_path = resolve_env(store, env_ref, open_profiles)
    sys.exit(run_in_env(store, env_path, list(command), extra_env=extra))


def register(group: click.Group) -> None:
    """Add ``lock``, ``build`` and ``run`` to the ``loft env`` group."""
    group.add_command(lock)
    group.add_command(build)
    group.add_command(run)

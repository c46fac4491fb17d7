"""``loft volume ...``: create, inspect, import/export, snapshot, fork, restore, delete, GC."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from loft.cli import output
from loft.errors import LoftError
from loft.units import parse_size

if TYPE_CHECKING:
    from loft.blockstore import Blockstore

_err = Console(stderr=True)


def _size(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@contextmanager
def _blockstore() -> Iterator[Blockstore]:
    # Imported here so that `loft --help` and other command groups stay quick.
    from loft.blockstore import Blockstore

    bs = Blockstore.from_settings()
    try:
        yield bs
    finally:
        bs.close()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def _progress(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    if not _err.is_terminal:
        yield lambda _n: None
        return
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_err,
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda n: progress.advance(task, n)


@click.group()
def volume() -> None:
    """Volumes: thin-provisioned disks stored as chunks, with snapshots and forks.

    A volume's data lives as content-addressed chunks in the chunk store ($LOFT_CHUNKS);
    its head, snapshots and lease live in the catalog. Snapshots and forks take constant
    time whatever the volume's size.
    """


@volume.command()
@click.argument("name")
@click.option("--size", default="16G", callback=_size, show_default=True, help="Virtual size.")
@click.option(
    "--extent-size", default="4M", callback=_size, show_default=True, help="Chunk granularity."
)
@click.option(
    "--durability",
    type=click.Choice(["remote", "local"]),
    default="local",
    show_default=True,
    help="remote: a flush returns once committed to the chunk store; "
    "local: once durable on the node, committed within --commit-interval.",
)
@click.option("--commit-interval", default=5.0, show_default=True, help="Seconds (local mode).")
@click.option(
    "--max-dirty",
    default="1G",
    callback=_size,
    show_default=True,
    help="Uncommitted writes past which writers wait for a commit: a local volume loses "
    "at most --commit-interval plus one commit of this much with its node.",
)
def create(
    name: str,
    size: int,
    extent_size: int,
    durability: str,
    commit_interval: float,
    max_dirty: int,
) -> None:
    """Create an empty volume NAME."""
    with _blockstore() as bs:
        bs.ctx.check_store()
        rec = bs.create(
            name,
            size=size,
            extent_size=extent_size,
            durability=durability,
            commit_interval=commit_interval,
            max_dirty=max_dirty,
        )
    click.echo(f"created volume {rec.name} ({output.size(rec.size, compact=True)})")


@volume.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also loft's own (workspace templates).")
def ls(as_json: bool, show_all: bool) -> None:
    """List volumes (loft's own, named loft-*, only with --all)."""
    from loft.blockstore.names import RESERVED_PREFIX

    with _blockstore() as bs:
        rows: list[dict[str, Any]] = [
            {
                "name": v.name,
                "size": v.size,
                "extent_size": v.extent_size,
                "durability": v.durability,
                "version": v.version,
                "holder": v.holder,
                "created_at": v.created_at,
                "raw_written": v.raw_written,
            }
            for v in bs.volumes()
            if show_all or not v.name.startswith(RESERVED_PREFIX)
        ]

    if as_json:
        output.echo_json(rows)
        return
    output.table(
        (
            [
                r["name"],
                output.size(r["size"], compact=True),
                r["durability"],
                "yes" if r["raw_written"] else "",
                str(r["version"]),
                r["holder"] or "-",
                _when(r["created_at"]),
            ]
            for r in rows
        ),
        ["NAME", "SIZE", "DURABILITY", "RAW", "VERSION", "IN USE BY", "CREATED"],
    )


@volume.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(name: str, as_json: bool) -> None:
    """Show a volume: size, extents present/dirty, bytes stored, head version, parent."""
    with _blockstore() as bs:
        served = bs.served_at(name)
        if served:
            from loft.node import api
            from loft.node.client import call
            from loft.node.jsoncodec import encode

            data: dict[str, Any] = encode(call(served, api.InfoRequest(name), api.InfoAnswer))
        else:
            data = bs.info(name).as_dict()

    if as_json:
        output.echo_json(data)
        return
    fields = []
    for k, v in data.items():
        shown = output.size(v, compact=True) if k in ("size", "extent_size", "max_dirty") else v
        fields.append([k, "-" if v is None else str(shown)])
    output.table(fields, ["FIELD", "VALUE"], show_header=False)


@volume.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
def import_(name: str, file: str) -> None:
    """Write a raw image (FILE, or - for stdin) into volume NAME, then commit."""
    with _blockstore() as bs:
        bs.ctx.check_store()
        served = bs.served_at(name)
        if served:
            _import_served(served, name, file)
            return
        with _image(file) as (src, size), _progress(size, f"import {name}") as advance:
            rep = bs.import_image(name, src, size, advance)
    rate = rep.bytes / rep.seconds / (1 << 20) if rep.seconds else 0.0
    moved = output.size(rep.bytes, compact=True)
    _err.print(f"imported {moved} into {name} in {rep.seconds:.2f}s ({rate:.0f} MiB/s)")


@contextmanager
def _image(file: str) -> Iterator[tuple[BinaryIO, int | None]]:
    """The image to import and its size: stdin (size unknown), or a regular file."""
    if file == "-":
        yield sys.stdin.buffer, None
        return
    from loft.blockstore.api import open_image

    try:
        with open_image(file) as (f, size):
            yield f, size
    except OSError as e:
        raise LoftError(f"cannot read {file}: {e.strerror}") from e


def _import_served(control: str, name: str, file: str) -> None:
    """Import through the disk service serving the volume (it owns the working copy).
    Standard input is spooled to a file first, so a too-large image changes nothing."""
    import shutil
    import tempfile

    from loft.node import api
    from loft.node.client import call

    if file != "-":
        with _image(file):  # refused here already when it is not a regular file
            pass
        answer = call(control, api.ImportRequest(name, os.path.abspath(file)), api.ImportAnswer)
    else:
        with tempfile.NamedTemporaryFile(prefix="loft-import-") as spool:
            shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
            spool.flush()
            answer = call(control, api.ImportRequest(name, spool.name), api.ImportAnswer)
    moved = output.size(answer.bytes, compact=True)
    _err.print(f"imported {moved} into {name} through the disk service")


@volume.command()
@click.argument("ref", metavar="NAME[@SNAP]")
@click.argument("file", type=click.Path(allow_dash=True, dir_okay=False))
def export(ref: str, file: str) -> None:
    """Write volume NAME (or its snapshot SNAP) as a raw image to FILE (or - for stdout).

    Zero extents become holes in FILE, so the image is sparse."""
    from loft.blockstore.names import split_ref

    with _blockstore() as bs:
        bs.ctx.check_store()
        name, snap = split_ref(ref)
        served = bs.served_at(name)
        if served and snap is None:
            from loft.node import api
            from loft.node.client import call

            # export what clients wrote so far
            call(served, api.CommitRequest(name), api.CommitAnswer)
        view = bs.view(ref)
        dst: BinaryIO
        if file == "-":
            dst = sys.stdout.buffer
        else:
            try:
                dst = open(file, "wb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise LoftError(f"cannot write {file}: {e.strerror}") from e
        try:
            with _progress(view.size, f"export {ref}") as advance:
                rep = bs.export_image(ref, dst, advance)
        finally:
            if dst is not sys.stdout.buffer:
                dst.close()
    rate = rep.bytes / rep.seconds / (1 << 20) if rep.seconds else 0.0
    moved = output.size(rep.bytes, compact=True)
    _err.print(f"exported {moved} from {ref} in {rep.seconds:.2f}s ({rate:.0f} MiB/s)")


@volume.command()
@click.argument("name")
@click.argument("snap")
def snapshot(name: str, snap: str) -> None:
    """Commit volume NAME and record its state as snapshot SNAP."""
    with _blockstore() as bs:
        bs.ctx.check_store()
        served = bs.served_at(name)
        if served:
            from loft.node import api
            from loft.node.client import call

            answer = call(served, api.SnapshotRequest(name, snap), api.SnapshotAnswer)
            click.echo(f"snapshot {name}@{answer.snapshot} (version {answer.version})")
            return
        s = bs.snapshot(name, snap)
    click.echo(f"snapshot {name}@{s.name} (version {s.version})")


@volume.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def snapshots(name: str, as_json: bool) -> None:
    """List the snapshots of volume NAME (automatic ones are marked)."""
    with _blockstore() as bs:
        rows: list[dict[str, Any]] = [
            {"name": s.name, "version": s.version, "created_at": s.created_at, "auto": s.auto}
            for s in bs.snapshots(name)
        ]

    if as_json:
        output.echo_json(rows)
        return
    output.table(
        (
            [r["name"], str(r["version"]), _when(r["created_at"]), "yes" if r["auto"] else ""]
            for r in rows
        ),
        ["SNAPSHOT", "VERSION", "CREATED", "AUTO"],
    )


@volume.command()
@click.argument("ref", metavar="NAME@SNAP")
@click.argument("new")
def fork(ref: str, new: str) -> None:
    """Create volume NEW from snapshot NAME@SNAP (constant time; no data is copied)."""
    with _blockstore() as bs:
        rec = bs.fork(ref, new)
    click.echo(f"forked {ref} as {rec.name}")


@volume.command()
@click.argument("name")
@click.argument("snap")
def restore(name: str, snap: str) -> None:
    """Point volume NAME back at snapshot SNAP.

    Uncommitted data is committed first and the replaced state is kept as an automatic
    snapshot, so a restore can itself be undone."""
    with _blockstore() as bs:
        bs.ctx.check_store()
        served = bs.served_at(name)
        if served:  # the service owns the volume: it restores once no client uses it
            from loft.node import api
            from loft.node.client import call

            answer = call(served, api.RestoreRequest(name, snap), api.RestoreAnswer)
            version, auto = answer.version, answer.undo_snapshot
        else:
            rec, auto = bs.restore(name, snap)
            version = rec.version
    click.echo(
        f"restored {name} to {snap} (version {version}); previous state kept as {name}@{auto}"
    )


@volume.command()
@click.argument("ref", metavar="NAME|NAME@SNAP")
def rm(ref: str) -> None:
    """Delete a volume, or one of its snapshots. Forks stay intact."""
    from loft.blockstore.names import split_ref

    name, snap = split_ref(ref)
    with _blockstore() as bs:
        served = bs.served_at(name) if snap is None else None
        if served:  # the service owns the volume: it removes it once no client uses it
            from loft.node import api
            from loft.node.client import call

            call(served, api.RemoveRequest(name), api.RemoveAnswer)
        elif snap is None:
            bs.remove(name)
        else:
            bs.remove_snapshot(name, snap)
    click.echo(f"removed {ref}")


@volume.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--dry-run", is_flag=True, help="Report what would be freed, delete nothing.")
@click.option(
    "--grace",
    default=3600.0,
    show_default=True,
    help="Seconds: unreferenced chunks younger than this are kept.",
)
@click.option(
    "--max-fraction",
    default=0.5,
    show_default=True,
    help="Refuse to delete more than this fraction of all chunks.",
)
@click.option("--force", is_flag=True, help="Delete even when GC's safety checks object.")
def gc(as_json: bool, dry_run: bool, grace: float, max_fraction: float, force: bool) -> None:
    """Delete chunks no volume or snapshot references; reports chunks and bytes freed."""
    if force:
        _err.print("[bold red]loft: warning: --force overrides GC's safety checks[/]")
    with _blockstore() as bs:
        rep = bs.gc(grace=grace, max_fraction=max_fraction, force=force, dry_run=dry_run)
    if as_json:
        output.echo_json(rep.as_dict())
    else:
        verb = "would free" if dry_run else "freed"
        freed = output.size(rep.bytes_freed, compact=True)
        total = output.size(rep.bytes_total, compact=True)
        click.echo(f"{verb} {rep.chunks_freed} of {rep.chunks_total} chunks, {freed} of {total}")

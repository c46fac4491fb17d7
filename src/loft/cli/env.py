"""``loft env ...``: the environment store — keys, binary cache, profiles, GC, info.

``lock``, ``build`` and ``run`` live in :mod:`loft.cli.env_build` and are registered into
this group at the bottom of the module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from loft.cli.output import echo_json, size
from loft.config import Settings
from loft.envstore import EnvstoreError
from loft.envstore.env_ref import read_lock_paths, resolve_env
from loft.envstore.pathinfo import InvalidPath
from loft.envstore.store import Store

if TYPE_CHECKING:
    from loft.envstore.profiles import Profiles


def _store() -> Store:
    return Store.open(Settings.from_env())


def open_profiles() -> Profiles:
    """The catalog's profiles (opened only when a command needs them: the catalog is
    slower to open than the store)."""
    from loft.catalog import Catalog
    from loft.envstore.profiles import Profiles

    return Profiles(Catalog.open(Settings.from_env()))


@click.group()
def env() -> None:
    """Environments: Nix-format store paths built from Debian, PyPI and npm artefacts.

    The store lives under $LOFT_DATA_DIR/envstore with logical paths under /nix/store.
    ENV arguments accept a store path, a loft.lock file, or a profile name.
    """


# -- keys and the binary cache ------------------------------------------------------------


@env.command()
@click.argument("name")
@click.option(
    "-o",
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory for NAME.sec and NAME.pub.",
)
def keygen(name: str, out_dir: Path) -> None:
    """Create an ed25519 signing key pair NAME.sec / NAME.pub in Nix's key format.

    The public key (``NAME:<base64>``) is what consumers pass to --trust (or to Nix's
    trusted-public-keys); keep NAME.sec secret (it is written mode 0600).
    """
    from loft.envstore.signing import SecretKey

    key = SecretKey.generate(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    sec, pub = out_dir / f"{name}.sec", out_dir / f"{name}.pub"
    for p in (sec, pub):
        if p.exists():
            raise EnvstoreError(f"{p} already exists", hint="remove it or choose another -o")
    fd = os.open(sec, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.render())
    pub.write_text(key.public().render())
    click.echo(f"secret key: {sec}\npublic key: {pub}\n{key.public().render()}")


def _read_key_arg(value: str) -> str:
    return Path(value).read_text().strip() if os.path.isfile(value) else value


@env.command()
@click.argument("env_ref", metavar="ENV")
@click.option("--to", "to_url", required=True, help="file:///DIR or s3://bucket/prefix?endpoint=")
@click.option("--key", "key_file", required=True, type=click.Path(dir_okay=False, exists=True))
@click.option("-j", "--jobs", default=4, show_default=True, help="Parallel uploads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def push(env_ref: str, to_url: str, key_file: str, jobs: int, as_json: bool) -> None:
    """Upload ENV and its closure to a Nix binary cache, signed with the secret KEY file.

    For a loft.lock, every path the lock pins (packages, layers, env) is pushed, so
    `loft env pull` of the same lock finds them all. Writes nix-cache-info,
    <hash>.narinfo and nar/<filehash>.nar.zst; paths already in the cache are skipped.
    Real Nix can substitute from the result.
    """
    from loft.envstore.binary_cache import push as do_push
    from loft.envstore.signing import SecretKey

    store = _store()
    key = SecretKey.parse(Path(key_file).read_text())
    path = resolve_env(store, env_ref, open_profiles)
    paths = [path]
    if os.path.isfile(env_ref):
        paths += sorted(read_lock_paths(Path(env_ref))[1])
        for p in paths:
            if not store.is_valid(p):
                raise InvalidPath(p)
    r = do_push(store, paths, to_url, key, parallelism=jobs)
    if as_json:
        echo_json({"env": path, "to": to_url, **r.__dict__})
        return
    click.echo(
        f"pushed {len(r.pushed)} paths ({size(r.nar_bytes)} NAR, {size(r.file_bytes)} "
        f"compressed), {len(r.already_present)} already present, in {r.seconds:.2f}s"
    )


@env.command()
@click.argument("refs", nargs=-1, required=True, metavar="LOCK|PATH...")
@click.option("--from", "from_url", required=True, help="file:///DIR or s3://bucket/prefix?...")
@click.option(
    "--trust",
    "trusted",
    multiple=True,
    required=True,
    help="Trusted public key 'name:base64' or a .pub file (repeatable).",
)
@click.option("-j", "--jobs", default=4, show_default=True, help="Parallel downloads.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def pull(
    refs: tuple[str, ...], from_url: str, trusted: tuple[str, ...], jobs: int, as_json: bool
) -> None:
    """Realise a loft.lock (or store paths) by substitution from a binary cache.

    Every path must be signed by a --trust key and its NAR must match the narinfo's and
    the lock's NAR hash; nothing unverified is ever registered.
    """
    from loft.envstore.binary_cache import pull as do_pull
    from loft.envstore.signing import PublicKey

    store = _store()
    keys = [PublicKey.parse(_read_key_arg(t)) for t in trusted]
    wanted: dict[str, str | None] = {}
    for ref in refs:
        if ref.startswith(store.store_dir + "/"):
            wanted.setdefault(ref, None)
        else:
            wanted.update(read_lock_paths(Path(ref))[1])
    expected = {p: h for p, h in wanted.items() if h is not None}
    r = do_pull(store, list(wanted), from_url, keys, expected=expected, parallelism=jobs)
    if as_json:
        echo_json({"from": from_url, **r.__dict__})
        return
    click.echo(
        f"fetched {len(r.fetched)} paths ({size(r.file_bytes)} downloaded, "
        f"{size(r.nar_bytes)} unpacked), {len(r.already_valid)} already valid, "
        f"in {r.seconds:.2f}s"
    )


# -- inspection and GC --------------------------------------------------------------------


@env.command()
@click.argument("env_ref", metavar="ENV")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info(env_ref: str, as_json: bool) -> None:
    """Show ENV's packages (its direct references), closure size and NAR hash."""
    from loft.envstore.info import env_info

    store = _store()
    i = env_info(store, resolve_env(store, env_ref, open_profiles))
    if as_json:
        echo_json(i.to_json())
        return
    click.echo(f"{i.path}\n  NAR hash: {i.nar_hash}\n  NAR size: {size(i.nar_size)}")
    click.echo(f"  closure:  {i.closure_paths} paths, {size(i.closure_nar_size)}")
    click.echo(f"  references ({len(i.references)}):")
    for ref in i.references:
        click.echo(f"    {ref.name:50} {size(ref.nar_size):>10}  {ref.path}")


@env.command()
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option(
    "--keep-sources/--no-keep-sources",
    default=True,
    show_default=True,
    help="Keep the downloaded artefacts (.deb, wheel, tarball) live packages came from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def gc(dry_run: bool, keep_sources: bool, as_json: bool) -> None:
    """Delete store paths no root needs.

    Roots: every generation of every profile (a workspace's environments are its
    profile's), the environments workspace snapshots were taken with, paths marked in use
    (loft env root) and paths a running loft process added. A rooted path and its whole
    closure are never deleted; nor, by default, the artefacts its packages were unpacked
    from.
    """
    from loft.envstore.gc import collect
    from loft.node.records import Records

    store = _store()
    profiles = open_profiles()
    roots = profiles.all_env_paths() | Records(profiles.catalog).snapshot_env_paths()
    r = collect(store, roots, dry_run=dry_run, keep_sources=keep_sources)
    if as_json:
        echo_json(r.__dict__)
        return
    verb = "would delete" if dry_run else "deleted"
    for p in r.deleted:
        click.echo(f"{verb} {p}")
    click.echo(
        f"{verb} {len(r.deleted)} paths and {len(r.garbage)} leftovers, "
        f"{size(r.freed_bytes)} freed; {len(r.roots)} roots keep {r.live} paths"
    )


@env.command()
@click.argument("paths", nargs=-1, metavar="[ENV...]")
@click.option("--json", "as_json", is_flag=True, help="Print problems as JSON.")
def verify(paths: tuple[str, ...], as_json: bool) -> None:
    """Re-hash store paths (default: all; ENV: its closure) against the registered hashes.

    Exits 1 when a path is missing, modified or references an invalid path, like
    `nix-store --verify --check-contents`.
    """
    store = _store()
    targets = None
    if paths:
        targets = sorted(store.closure(resolve_env(store, p, open_profiles) for p in paths))
    problems = store.verify(targets)
    checked = len(targets) if targets is not None else len(store.all_paths())
    if as_json:
        echo_json({"checked": checked, "problems": problems})
    else:
        for p, why in problems.items():
            click.echo(f"{p}: {why}", err=True)
        click.echo(f"checked {checked} paths, {len(problems)} with problems")
    if problems:
        raise SystemExit(1)


@env.group()
def root() -> None:
    """Paths marked in use (e.g. by a running workspace); GC keeps their closures."""


@root.command("add")
@click.argument("name")
@click.argument("env_ref", metavar="ENV")
def root_add(name: str, env_ref: str) -> None:
    """Mark ENV in use under NAME (replacing NAME's previous path)."""
    store = _store()
    path = resolve_env(store, env_ref, open_profiles)
    store.add_root(name, path)
    click.echo(f"{name} -> {path}")


@root.command("remove")
@click.argument("name")
def root_remove(name: str) -> None:
    """Drop the in-use mark NAME."""
    if not _store().remove_root(name):
        raise EnvstoreError(f"no root named {name!r}")


@root.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def root_list(as_json: bool) -> None:
    """List in-use roots."""
    roots = _store().roots()
    if as_json:
        echo_json(roots)
        return
    for n, p in roots.items():
        click.echo(f"{n}\t{p}")


# -- profiles -----------------------------------------------------------------------------


@env.group(invoke_without_command=False)
@click.argument("name")
@click.pass_context
def profile(ctx: click.Context, name: str) -> None:
    """Profile NAME: a chain of environment generations (switch, generations, rollback)."""
    from loft.envstore.profiles import validate_profile_name

    validate_profile_name(name)
    ctx.obj = name


@profile.command()
@click.argument("env_ref", metavar="ENV")
@click.option("--json", "as_json", is_flag=True, help="Print the new generation as JSON.")
@click.pass_obj
def switch(name: str, env_ref: str, as_json: bool) -> None:
    """Make ENV the profile's new current generation."""
    store = _store()
    profiles = open_profiles()
    path = resolve_env(store, env_ref, lambda: profiles)
    g = profiles.switch(name, path)
    if as_json:
        echo_json(g.__dict__)
        return
    click.echo(f"{name}: generation {g.number} -> {g.env_path}")


@profile.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def generations(name: str, as_json: bool) -> None:
    """List the profile's generations; the current one is marked."""
    import time

    gens = open_profiles().generations(name)
    if as_json:
        echo_json([g.__dict__ for g in gens])
        return
    for g in gens:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g.created_at))
        mark = "  (current)" if g.current else ""
        click.echo(f"{g.number:5}   {when}   {g.env_path}{mark}")


@profile.command()
@click.option("--to", "to", type=int, default=None, help="Generation number (default: previous).")
@click.option("--json", "as_json", is_flag=True, help="Print the now-current generation as JSON.")
@click.pass_obj
def rollback(name: str, to: int | None, as_json: bool) -> None:
    """Make the previous generation (or --to N) current again. Instant: a pointer move."""
    g = open_profiles().rollback(name, to)
    if as_json:
        echo_json(g.__dict__)
        return
    click.echo(f"{name}: generation {g.number} -> {g.env_path}")


@profile.command()
@click.option("--keep", type=int, required=True, help="How many newest generations to keep.")
@click.option("--json", "as_json", is_flag=True, help="Print the deleted generations as JSON.")
@click.pass_obj
def prune(name: str, keep: int, as_json: bool) -> None:
    """Delete all but the newest --keep generations (never the current one).

    Their environments become garbage for `loft env gc` unless something else roots them.
    """
    if keep < 1:
        raise EnvstoreError("--keep must be at least 1")
    gone = open_profiles().delete_generations(name, keep)
    if as_json:
        echo_json([g.__dict__ for g in gone])
        return
    click.echo(f"{name}: deleted {len(gone)} generations")


@env.command("profiles")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def profiles_cmd(as_json: bool) -> None:
    """List profiles and their current generation."""
    rows = open_profiles().list()
    if as_json:
        echo_json(rows)
        return
    for n, g in rows.items():
        click.echo(f"{n}\t{g}")


try:
    from loft.cli import env_build  # type: ignore[attr-defined,unused-ignore]

    env_build.register(env)
except ImportError:
    pass

"""Environments: a symlink forest of package store paths, plus generated layers.

An environment is itself a store path, mounted at ``/usr`` in a sandbox. Its top level
mirrors ``/usr`` (``bin``, ``lib``, ``share``...) and ``etc`` holds what goes to ``/etc``.
Directories are real; every file is a symlink to the file in its package's store path
(so the scanner finds each package as a reference); symlinks a package ships are copied
verbatim. npm packages are placed at ``lib/<their node_modules location>``.

Debian maintainer scripts never run. What the few that matter would have produced is
generated here, each as its own small store path (a "layer"):

- ``ca-certificates``: the bundle ``/etc/ssl/certs/ca-certificates.crt``, concatenated from
  the package's certificates in sorted order, and the ``<subject-hash>.<n>`` links for
  OpenSSL's ``-CApath`` lookups, as ``update-ca-certificates`` (``c_rehash``) makes them;
- ``alternatives``: the ``update-alternatives --install`` links found in postinst
  scripts, highest priority wins (``/usr/bin/awk`` -> ``/etc/alternatives/awk`` -> mawk);
- ``passwd``: ``/etc/passwd`` and ``/etc/group`` from base-passwd's masters, plus the
  sandbox user.

Planning (:func:`plan_forest`) only reads trees and returns a dict; :func:`write_forest`
materialises it. Package trees are untrusted: every file read from one and every write of
a forest or layer goes through :class:`~loft.envstore.confined.Beneath`, so a symlink a
package ships is copied as a link but never followed, and a path that would lead through
one (an npm package placed below another's ``node_modules -> /elsewhere``) is refused.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from loft.envstore import EnvstoreError
from loft.envstore.confined import MAX_COMPONENT, Beneath, check_relative

__all__ = [
    "CA_SHARE",
    "AlternativesError",
    "ForestConflict",
    "Layer",
    "Placement",
    "alternatives_layer",
    "ca_bundle_layer",
    "ca_certificates",
    "maintainer_scripts",
    "parse_alternatives",
    "passwd_layer",
    "plan_forest",
    "provided_paths",
    "write_forest",
    "write_layer",
]

#: Top-level directories of a package tree that an environment carries, and where.
_ROOTS = {"usr": "", "etc": "etc"}
_RUNNER = "runner:x:1000:1000:loft workspace user:/home/runner:/bin/bash\n"
_RUNNER_GROUP = "runner:x:1000:\n"


class ForestConflict(EnvstoreError):
    """A package would be placed through a symlink or file another package ships."""


class AlternativesError(EnvstoreError):
    """A maintainer script names an alternative whose link or name is not a plain path."""


@dataclass(frozen=True)
class Placement:
    """A package tree to merge into the forest: its logical store path and where it lives.

    ``at`` is empty for rootfs-shaped trees (.deb, wheel, generated layers: ``usr/``,
    ``etc/``); for an npm package it is the directory the package itself becomes
    (``lib/node_modules/left-pad``).
    """

    store_path: str
    physical: Path
    at: str = ""


@dataclass(frozen=True)
class Layer:
    """A generated layer: a name and a function of nothing that writes its tree."""

    name: str
    files: dict[str, bytes]  # relative path -> contents
    links: dict[str, str]  # relative path -> symlink target


#: Where the ca-certificates package keeps its certificates.
CA_SHARE = "usr/share/ca-certificates"

#: A forest plan: relative path -> symlink target, or None for a real directory.
Forest = dict[str, str | None]


def plan_forest(placements: Iterable[Placement], reserved: Iterable[str] = ()) -> Forest:
    """Merge the trees in order; the first to claim a path keeps it.

    A directory only one package provides becomes a single link to that package's
    directory (as Nix's buildEnv does); when a second package brings the same directory,
    the link is split back into a real directory holding both packages' entries.
    ``reserved`` are files the caller writes itself (the manifest): no package may claim
    them, their directories are real, and they are not in the plan. A placement below a
    path a package claimed as a symlink or file is :class:`ForestConflict`.
    """
    planner = _Planner()
    reserved = list(reserved)
    for rel in reserved:
        planner.ensure_dirs(rel, rel)
        planner.forest[rel] = ""  # claimed: "first wins" keeps every package off it
    for pl in placements:
        if pl.at:
            check_relative(pl.at, f"where {pl.store_path} is placed")
            planner.ensure_dirs(pl.at, pl.store_path)
            planner.claim_dir(pl.at, pl.physical, pl.store_path)
            if pl.at not in planner.dir_links and planner.forest[pl.at] is not None:
                planner.conflict(pl.at, pl.store_path, pl.at)
            continue
        for top, dest in _ROOTS.items():
            src = pl.physical / top
            if src.is_dir() and not src.is_symlink():
                if dest:
                    planner.forest.setdefault(dest, None)
                planner.merge(src, f"{pl.store_path}/{top}", dest)
    for rel in reserved:
        del planner.forest[rel]
    return planner.forest


class _Planner:
    def __init__(self) -> None:
        self.forest: Forest = {}
        #: Entries that are links to a whole package directory: rel -> (physical, logical).
        self.dir_links: dict[str, tuple[Path, str]] = {}

    def ensure_dirs(self, rel: str, placing: str) -> None:
        """Make every parent of ``rel`` a real directory of the forest."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in self.dir_links:
                self.split(parent)
            if self.forest.setdefault(parent, None) is not None:
                # Written as planned, the placement would go through this link (out of
                # the environment when it points elsewhere) or fail on the file.
                self.conflict(rel, placing, parent)

    def conflict(self, rel: str, placing: str, claimed: str) -> NoReturn:
        raise ForestConflict(
            f"cannot place {placing} at {rel!r}: a package claims {claimed!r} "
            f"as {self.forest[claimed]!r}, not as a directory",
            hint="a package ships a symlink where another package goes; "
            "the lock or one of its packages is broken or hostile",
        )

    def split(self, rel: str) -> None:
        physical, logical = self.dir_links.pop(rel)
        self.forest[rel] = None
        self.merge(physical, logical, rel)

    def claim_dir(self, rel: str, physical: Path, logical: str) -> None:
        if rel not in self.forest:
            self.forest[rel] = logical
            self.dir_links[rel] = (physical, logical)
            return
        if rel in self.dir_links:
            self.split(rel)
        if self.forest[rel] is None:  # a real directory: merge into it
            self.merge(physical, logical, rel)
        # otherwise a file or a package's own symlink claimed it first: it wins

    def merge(self, src: Path, logical: str, dest: str) -> None:
        with os.scandir(src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = f"{dest}/{e.name}" if dest else e.name
            st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                self.claim_dir(rel, Path(e.path), f"{logical}/{e.name}")
            elif rel in self.forest:
                continue
            elif stat.S_ISLNK(st.st_mode):
                self.forest[rel] = os.readlink(e.path)  # package-internal links, verbatim
            else:
                self.forest[rel] = f"{logical}/{e.name}"


#: Directory of an environment holding one link per package path (see write_forest).
PACKAGES_DIR = ".p"


def write_forest(forest: Forest, dest: Path, store_paths: Iterable[str] = ()) -> None:
    """Create the planned directories and symlinks under ``dest`` (which must exist).

    Each of ``store_paths`` gets one link ``.p/<n> -> /nix/store/<hash>-<name>``, and a
    forest link into that path is written relative through it
    (``bin/git -> ../.p/1c/usr/bin/git``). Same resolution, but most targets now fit in
    the inode (ext4 stores symlinks under 60 bytes inline): a forest costs inodes, not a
    4 KiB block per link, so N environments stay close to the size of one.
    """
    short: dict[str, str] = {}
    paths = sorted(set(store_paths))
    with Beneath(dest) as out:
        for i, sp in enumerate(paths):
            short[sp] = f"{i:x}"
            out.symlink(f"{PACKAGES_DIR}/{short[sp]}", sp)
        for rel in sorted(forest):
            target = forest[rel]
            if target is None:
                out.mkdir(rel)
                continue
            store_path = "/" + "/".join(target.split("/")[1:4]) if target.startswith("/") else ""
            if store_path in short:
                up = "../" * rel.count("/")
                tail = target[len(store_path) :]
                target = f"{up}{PACKAGES_DIR}/{short[store_path]}{tail}"
            out.symlink(rel, target)


def ca_certificates(ca_certificates_tree: Path) -> list[str]:
    """The certificates (``mozilla/X.crt``...) under the package's
    ``usr/share/ca-certificates``, sorted; symlinks are neither followed nor listed."""
    with Beneath(ca_certificates_tree) as pkg:
        try:
            return sorted(rel for rel in pkg.files(CA_SHARE) if rel.endswith(".crt"))
        except FileNotFoundError:
            return []


def ca_bundle_layer(
    ca_certificates_tree: Path, hash_links: Mapping[str, str] | None = None
) -> Layer:
    """The CA directory ``update-ca-certificates`` builds from the package's certificates:
    the bundle, and the ``<subject-hash>.<n>`` links (``hash_links``, from
    :func:`loft.envstore.certs.ca_hash_links`) that OpenSSL's ``-CApath`` lookups use."""
    bundle = bytearray()
    with Beneath(ca_certificates_tree) as pkg:
        for rel in ca_certificates(ca_certificates_tree):
            data = pkg.read_bytes(f"{CA_SHARE}/{rel}")
            bundle += data if data.endswith(b"\n") else data + b"\n"
    links = {
        f"etc/ssl/certs/{name}": f"/{CA_SHARE}/{rel}" for name, rel in (hash_links or {}).items()
    }
    return Layer(
        name="ca-certificates-bundle",
        files={"etc/ssl/certs/ca-certificates.crt": bytes(bundle)},
        links=links,
    )


_UA = re.compile(r"update-alternatives\s+(?:--quiet\s+)?--install\b(?P<rest>.*)")


def parse_alternatives(
    script: str, source: str = "a postinst"
) -> list[tuple[str, str, str, int, list[tuple[str, str, str]]]]:
    """``(link, name, path, priority, slaves)`` for each literal ``--install`` in a script.

    Links and paths must be normal absolute paths and names plain file names
    (update-alternatives itself refuses relative links and names with ``/``; Debian's
    scripts have no ``..``); anything else is :class:`AlternativesError` naming ``source``:
    the links are written into a layer, so no ``..`` may reach it.
    """
    text = script.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        m = _UA.search(line)
        if not m or "$" in m.group("rest"):
            continue
        try:
            tok = shlex.split(m.group("rest"), comments=True)
        except ValueError:
            continue
        tok = [t for t in tok if t not in (";", "||", "&&", "true")]
        if len(tok) < 4 or not tok[3].isdigit():
            continue
        link, name, path, prio = tok[0], tok[1], tok[2], int(tok[3])
        slaves = []
        rest = tok[4:]
        while len(rest) >= 4 and rest[0] == "--slave":
            slaves.append((rest[1], rest[2], rest[3]))
            rest = rest[4:]
        for lk, nm, target in [(link, name, path), *slaves]:
            _check_alternative(lk, nm, target, source)
        found.append((link, name, path, prio, slaves))
    return found


def _check_alternative(link: str, name: str, path: str, source: str) -> None:
    for what, p in (("link", link), ("path", path)):
        if not p.startswith("/"):
            raise AlternativesError(f"{source}: alternative {what} {p[:200]!r} is not absolute")
        try:
            check_relative(p[1:], f"alternative {what}")
        except EnvstoreError as e:
            raise AlternativesError(f"{source}: {e.message}") from None
    if name in (".", "..") or not 0 < len(name) <= MAX_COMPONENT or "/" in name or "\0" in name:
        raise AlternativesError(f"{source}: alternative name {name[:200]!r} is not a file name")


def alternatives_layer(scripts: Mapping[str, str], provided: set[str]) -> Layer:
    """Links for every alternative whose chosen target the environment provides.

    ``scripts`` maps where each postinst came from (named in errors) to its text;
    ``provided`` holds absolute paths (``/usr/bin/mawk``) present in the forest.
    """
    best: dict[str, tuple[int, str, str, list[tuple[str, str, str]]]] = {}
    for source, script in sorted(scripts.items()):
        for link, name, path, prio, slaves in parse_alternatives(script, source):
            if _usr(path) not in provided:
                continue
            cur = best.get(name)
            if cur is None or (prio, path) > (cur[0], cur[2]):
                best[name] = (prio, link, path, slaves)
    links: dict[str, str] = {}
    for name, (_, link, path, slaves) in sorted(best.items()):
        for lk, nm, target in [(link, name, path), *slaves]:
            if _usr(target) not in provided:
                continue
            rel = _usr(lk).lstrip("/")
            links[rel] = f"/etc/alternatives/{nm}"
            links[f"etc/alternatives/{nm}"] = target
    return Layer(name="alternatives", files={}, links=links)


def _usr(path: str) -> str:
    """The usr-merged spelling of an absolute path."""
    for top in ("/bin/", "/sbin/", "/lib/", "/lib64/"):
        if path.startswith(top):
            return "/usr" + path
    return path


def passwd_layer(base_passwd_tree: Path | None) -> Layer:
    """/etc/passwd and /etc/group as base-passwd's postinst would write them, plus runner."""
    passwd = group = b""
    if base_passwd_tree is not None:
        share = "usr/share/base-passwd"
        with Beneath(base_passwd_tree) as pkg:
            try:
                passwd = pkg.read_bytes(f"{share}/passwd.master")
                group = pkg.read_bytes(f"{share}/group.master")
            except FileNotFoundError:
                passwd = group = b""
    return Layer(
        name="passwd",
        files={
            "etc/passwd": passwd + _RUNNER.encode(),
            "etc/group": group + _RUNNER_GROUP.encode(),
        },
        links={},
    )


def write_layer(layer: Layer, dest: Path) -> None:
    """Materialise a generated layer's tree in the empty directory ``dest``."""
    with Beneath(dest) as out:
        for rel, data in sorted(layer.files.items()):
            out.write_file(rel, data)
        for rel, target in sorted(layer.links.items()):
            out.symlink(rel, target)


def maintainer_scripts(package_tree: Path, suffix: str = ".postinst") -> dict[str, str]:
    """The kept maintainer scripts of an unpacked .deb (``var/lib/dpkg/info/<pkg>.postinst``)
    by file name, read without following any symlink the package ships."""
    info = "var/lib/dpkg/info"
    out: dict[str, str] = {}
    with Beneath(package_tree) as pkg:
        try:
            names = sorted(rel for rel in pkg.files(info) if rel.endswith(suffix))
        except FileNotFoundError:
            return out
        for rel in names:
            if "/" not in rel:
                out[rel] = pkg.read_bytes(f"{info}/{rel}").decode(errors="replace")
    return out


def provided_paths(placements: Iterable[Placement]) -> set[str]:
    """Absolute paths (as the sandbox sees them) of every non-directory the trees hold."""
    out: set[str] = set()
    for pl in placements:
        if pl.at:
            continue
        for top, dest in _ROOTS.items():
            base = pl.physical / top
            if base.is_symlink():
                continue  # as in plan_forest: a package's top-level link is not followed
            prefix = "/etc" if dest else "/usr"
            for dirpath, dirnames, filenames in os.walk(base):
                rel = os.path.relpath(dirpath, base)
                here = prefix if rel == "." else f"{prefix}/{rel}"
                out.update(f"{here}/{n}" for n in filenames)
                out.update(f"{here}/{n}" for n in dirnames if os.path.islink(f"{dirpath}/{n}"))
    return out

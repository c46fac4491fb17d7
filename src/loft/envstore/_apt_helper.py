"""Resolve a Debian package closure with libapt (python3-apt), against an empty status.

This file runs as a standalone script under Debian's own ``/usr/bin/python3`` (python3-apt
is a Debian package and is not importable from loft's venv), so it imports nothing from
loft. Input: a JSON object on stdin::

    {"config": {"Dir::State::Lists": "...", ...}, "packages": ["python3", "git"]}

Output: a JSON object on stdout, either ``{"packages": [...]}`` (one entry per package of
the closure, with the pool URL and the ``SHA256`` of the Packages index) or
``{"error": "...", "culprit": "..."}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _fail(message: str, culprit: str = "") -> None:
    json.dump({"error": message, "culprit": culprit}, sys.stdout)
    sys.exit(0)


def main() -> None:
    """Read the request from stdin, resolve, print the closure as JSON."""
    import apt_pkg  # type: ignore[import-not-found,unused-ignore]

    req = json.load(sys.stdin)
    apt_pkg.init_config()
    for key, value in req["config"].items():
        if isinstance(value, list):
            apt_pkg.config.clear(key)
            for v in value:
                apt_pkg.config.set(key + "::", v)
        else:
            apt_pkg.config.set(key, value)
    apt_pkg.init_system()

    cache = apt_pkg.Cache(None)
    depcache = apt_pkg.DepCache(cache)
    arch = apt_pkg.config.find("APT::Architecture")

    wanted: list[Any] = []
    for name in req["packages"]:
        pkg = _lookup(cache, depcache, name, arch)
        wanted.append(pkg)
    records = apt_pkg.PackageRecords(cache)
    if req.get("essential", True):
        for pkg in cache.packages:
            if not (pkg.essential and pkg.has_versions):
                continue
            ver = depcache.get_candidate_ver(pkg)
            if ver is None:
                continue
            # libapt also flags itself essential; only the archive's "Essential: yes" counts.
            records.lookup(ver.file_list[0])
            if "\nEssential: yes" in "\n" + records.record:
                wanted.append(pkg)

    with apt_pkg.ActionGroup(depcache):
        for pkg in wanted:
            depcache.mark_install(pkg, True, True)
    if depcache.broken_count:
        broken = [p.name for p in cache.packages if depcache.is_inst_broken(p)]
        _fail(f"cannot satisfy the dependencies of {', '.join(sorted(broken))}", broken[0])

    sources = apt_pkg.SourceList()
    sources.read_main_list()
    out = []
    for pkg in cache.packages:
        if not depcache.marked_install(pkg):
            continue
        ver = depcache.get_candidate_ver(pkg)
        pfile, index = ver.file_list[0]
        records.lookup((pfile, index))
        sha256 = records.hashes.find("sha256")
        meta = sources.find_index(pfile)
        if meta is None or not sha256:
            _fail(f"no archive entry with a SHA256 for {pkg.name}", pkg.name)
        out.append(
            {
                "name": pkg.name,
                "version": ver.ver_str,
                "arch": ver.arch,
                "filename": records.filename,
                "url": meta.archive_uri(records.filename),
                "sha256": str(sha256.hashvalue),
                "size": ver.size,
                "essential": bool(pkg.essential),
            }
        )
    out.sort(key=lambda p: p["name"])
    json.dump({"packages": out}, sys.stdout)


def _lookup(cache: Any, depcache: Any, name: str, arch: str) -> Any:
    """Find the package for a requested name, following a virtual name to its one provider."""
    try:
        pkg = cache[name, arch]
    except KeyError:
        try:
            pkg = cache[name]
        except KeyError:
            _fail(f"unknown Debian package {name!r}", name)
    if pkg.has_versions and depcache.get_candidate_ver(pkg) is not None:
        return pkg
    providers = sorted({p[2].parent_pkg.name for p in pkg.provides_list})
    if len(providers) == 1:
        return cache[providers[0], arch]
    if not providers:
        _fail(f"Debian package {name!r} has no installable version", name)
    _fail(f"{name!r} is virtual; pick one of: {', '.join(providers)}", name)
    return None


if __name__ == "__main__":
    main()

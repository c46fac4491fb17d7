"""npm resolution: npm's own resolver, lifecycle scripts never run.

``npm install --package-lock-only --ignore-scripts`` in a scratch directory resolves the
dependency tree and writes ``package-lock.json`` without downloading or running anything;
its ``packages`` map gives, per ``node_modules/...`` location, the version, the tarball
and the ``integrity`` (SRI) the registry published.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loft.envstore import EnvstoreError
from loft.envstore.bounded import read_file_bounded

__all__ = [
    "DEFAULT_REGISTRY",
    "MAX_NPM_LOCK_SIZE",
    "NpmArtefact",
    "NpmResolveError",
    "resolve_npm",
    "split_spec",
]

#: Override with LOFT_NPM_REGISTRY.
DEFAULT_REGISTRY = "https://registry.npmjs.org"
#: Largest package-lock.json read. npm fetches the registry's metadata itself; the lock
#: it writes is ~500 bytes per package, so even a 20,000-package tree is ~10 MB.
MAX_NPM_LOCK_SIZE = 64 << 20


class NpmResolveError(EnvstoreError):
    """npm could not resolve the requested packages."""


@dataclass(frozen=True)
class NpmArtefact:
    """One package tarball, placed at ``location`` (``node_modules/a/node_modules/b``)."""

    name: str
    version: str
    location: str
    url: str
    integrity: str
    bin: dict[str, str]


def split_spec(spec: str) -> tuple[str, str]:
    """``"left-pad@1.3.0"`` -> ``("left-pad", "1.3.0")``; scoped names keep their ``@``."""
    at = spec.rfind("@")
    if at > 0:
        return spec[:at], spec[at + 1 :]
    return spec, "latest"


def resolve_npm(specs: list[str]) -> list[NpmArtefact]:
    """Resolve ``specs`` with npm; one artefact per location of the tree, sorted."""
    if not specs:
        return []
    npm = shutil.which("npm")
    if npm is None:
        raise NpmResolveError("npm is not installed", hint="run `make deps`")
    registry = (os.environ.get("LOFT_NPM_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="loft-npm-") as tmp:
        Path(tmp, "package.json").write_text('{"name": "loft-env", "private": true}\n')
        argv = [
            npm, "install", "--package-lock-only", "--ignore-scripts", "--no-audit",
            "--no-fund", "--save-exact", "--registry", registry,
            "--omit-lockfile-registry-resolved=false", "--", *specs,
        ]  # fmt: skip
        r = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise NpmResolveError(_npm_error(r.stderr, specs), hint="check [env] npm in loft.toml")
        lock = json.loads(
            read_file_bounded(Path(tmp, "package-lock.json"), MAX_NPM_LOCK_SIZE, "npm's lock")
        )
    out = []
    for location, entry in lock.get("packages", {}).items():
        if not location:
            continue
        if entry.get("link") or "integrity" not in entry:
            raise NpmResolveError(f"{location}: not a registry tarball with an integrity hash")
        name = entry.get("name") or location.rsplit("node_modules/", 1)[1]
        version = entry["version"]
        url = entry.get("resolved") or _tarball_url(registry, name, version)
        out.append(
            NpmArtefact(
                name=name,
                version=version,
                location=location,
                url=url,
                integrity=entry["integrity"],
                bin=_bins(name, entry.get("bin")),
            )
        )
    return sorted(out, key=lambda a: a.location)


def _tarball_url(registry: str, name: str, version: str) -> str:
    return f"{registry}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def _bins(name: str, raw: object) -> dict[str, str]:
    if isinstance(raw, str):
        return {name.rsplit("/", 1)[-1]: raw}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {}


def _npm_error(stderr: str, specs: list[str]) -> str:
    """One line naming the culprit out of npm's multi-line error."""
    m = re.search(r"'([^']+)' could not be found", stderr) or re.search(
        r"404 Not Found - GET \S+/([^/\s]+)", stderr
    )
    if m:
        return f"npm package {m.group(1)!r} not found in the registry"
    m = re.search(r"No matching version found for (\S+?)\.?$", stderr, re.M)
    if m:
        return f"no npm version matches {m.group(1)!r}"
    lines = [ln for ln in stderr.splitlines() if ln.startswith("npm error") and ln[10:].strip()]
    return lines[0][10:].strip()[:300] if lines else f"npm failed to resolve {specs}"

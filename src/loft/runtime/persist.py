"""The state kept beside each bundle: a plain, versioned object (Firecracker's Persist).

``workspace.json`` holds the :class:`~loft.runtime.spec.WorkspaceSpec` a container was
started from, so an agent that restarts can adopt what runc still runs (it needs the
root filesystem's host path to freeze it, the id range to check the host view…). It is
written before ``runc create`` (a temporary file, fsync, rename) and read with a size
limit and a format check: a file of another format version is refused, not guessed at.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from loft.isolation.userns import IdRange
from loft.runtime.errors import WorkspaceError
from loft.runtime.spec import EnvironmentView, Limits, Network, WorkspaceSpec

__all__ = ["FORMAT", "load_spec", "save_spec", "spec_from_json", "spec_to_json", "write_private"]

#: The format version of ``workspace.json``, apart from loft's release version.
FORMAT = 1
_KIND = "loft-workspace"
_MAX_SIZE = 16 * 2**20  # a closure of ~100,000 paths; real ones hold hundreds
_FILE = "workspace.json"


def spec_to_json(spec: WorkspaceSpec) -> dict[str, Any]:
    """``spec`` as a plain JSON object, with its kind and format version."""
    return {
        "kind": _KIND,
        "format": FORMAT,
        "id": spec.id,
        "rootfs": str(spec.rootfs),
        "env": {
            "store_dir": str(spec.env.store_dir),
            "path": spec.env.path,
            "closure": list(spec.env.closure),
        },
        "ids": {"host": spec.ids.host, "size": spec.ids.size},
        "limits": {
            "memory": spec.limits.memory,
            "cpus": spec.limits.cpus,
            "pids": spec.limits.pids,
        },
        "network": spec.network.value,
        "hostname": spec.hostname,
        "deny": [str(n) for n in spec.deny],
    }


def spec_from_json(doc: dict[str, Any]) -> WorkspaceSpec:
    """The spec saved by :func:`spec_to_json`; refuses another kind or format."""
    if doc.get("kind") != _KIND or doc.get("format") != FORMAT:
        raise WorkspaceError(f"not a {_KIND} state of format {FORMAT}: "
                             f"{doc.get('kind')!r} format {doc.get('format')!r}")  # fmt: skip
    try:
        env = doc["env"]
        return WorkspaceSpec(
            id=doc["id"],
            rootfs=Path(doc["rootfs"]),
            env=EnvironmentView(Path(env["store_dir"]), env["path"], tuple(env["closure"])),
            ids=IdRange(doc["ids"]["host"], doc["ids"]["size"]),
            limits=Limits(**doc["limits"]),
            network=Network(doc["network"]),
            hostname=doc["hostname"],
            deny=tuple(ipaddress.ip_network(n) for n in doc["deny"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise WorkspaceError(f"damaged workspace state: {e}") from e


def save_spec(bundle: Path, spec: WorkspaceSpec) -> None:
    """Write ``workspace.json`` in ``bundle`` atomically."""
    write_private(bundle / _FILE, json.dumps(spec_to_json(spec), indent=1).encode())


def load_spec(bundle: Path) -> WorkspaceSpec:
    """Read ``workspace.json`` from ``bundle``."""
    path = bundle / _FILE
    with open(path, "rb") as f:
        data = f.read(_MAX_SIZE + 1)
    if len(data) > _MAX_SIZE:
        raise WorkspaceError(f"{path} is larger than {_MAX_SIZE} bytes")
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise WorkspaceError(f"damaged workspace state {path}: {e}") from e
    return spec_from_json(doc)


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) atomically: a temporary file, fsync, rename. For the bundle's
    ``config.json`` too."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

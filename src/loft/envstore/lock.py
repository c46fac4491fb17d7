"""The lock file: ``loft.lock`` (JSON, versioned), pure parse and serialise.

Every artefact is pinned twice: by the registry's own hash (Debian ``Packages`` SHA256,
PyPI sha256, npm SRI ``integrity``) and by what it produces here (its fixed-output store
path and the unpacked store path + NAR hash). The generated layers and the environment
itself are recorded the same way, so a lock can be realised from a binary cache without
resolving anything, and a rebuild proves itself reproducible by matching the lock.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loft.envstore import EnvstoreError
from loft.envstore.spec import Spec

__all__ = [
    "DEFAULT_LOCK_FILE",
    "LOCK_VERSION",
    "Lock",
    "LockError",
    "LockedArtefact",
    "LockedPath",
    "dumps",
    "loads",
]

DEFAULT_LOCK_FILE = "loft.lock"
LOCK_VERSION = 1
ArtefactKind = Literal["deb", "wheel", "npm"]


class LockError(EnvstoreError):
    """``loft.lock`` is not a lock this version of loft understands."""


@dataclass(frozen=True)
class LockedPath:
    """A store path with the NAR hash and size it must have."""

    path: str
    nar_hash: str
    nar_size: int
    name: str = ""


@dataclass(frozen=True)
class LockedArtefact:
    """One registry artefact: where it came from, its hashes, what it becomes."""

    kind: ArtefactKind
    name: str
    version: str
    url: str
    registry_hash: str  # "sha256:<hex>" (Debian, PyPI) or an SRI string (npm)
    file_sha256: str  # hex, names the fixed-output path
    file_name: str  # the fixed-output path's name
    fixed_path: str  # the store's copy of the artefact, kept as loft's mirror
    output: LockedPath  # the unpacked tree
    location: str = ""  # npm: node_modules/... ; empty otherwise
    bin: dict[str, str] = field(default_factory=dict)  # npm bin links

    @property
    def what(self) -> str:
        """How errors name it."""
        kind = {"deb": "Debian package", "wheel": "PyPI wheel", "npm": "npm package"}
        return f"{kind[self.kind]} {self.name} {self.version}"


@dataclass(frozen=True)
class Lock:
    """A fully resolved environment."""

    spec: Spec
    platform: dict[str, str]
    artefacts: tuple[LockedArtefact, ...]
    layers: tuple[LockedPath, ...]
    env: LockedPath

    def paths(self) -> list[str]:
        """Every store path this lock realises (artefacts, outputs, layers, env)."""
        out = [a.fixed_path for a in self.artefacts] + [a.output.path for a in self.artefacts]
        return out + [lp.path for lp in self.layers] + [self.env.path]


def dumps(lock: Lock) -> str:
    """Serialise deterministically (sorted keys, one artefact per block)."""
    doc = {
        "version": LOCK_VERSION,
        "spec": lock.spec.to_json(),
        "platform": lock.platform,
        "artefacts": [{**asdict(a), "output": _path_doc(a.output)} for a in lock.artefacts],
        "layers": [_path_doc(lp) for lp in lock.layers],
        "env": _path_doc(lock.env),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def loads(text: str, *, source: str = DEFAULT_LOCK_FILE) -> Lock:
    """Parse a lock; anything malformed is a :class:`LockError` naming ``source``."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise LockError(f"{source}: not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise LockError(f"{source}: not a lock file")
    if doc.get("version") != LOCK_VERSION:
        raise LockError(
            f"{source}: lock format version {doc.get('version')!r} is not {LOCK_VERSION}",
            hint="re-create it with `loft env lock`",
        )
    try:
        spec = Spec(**{k: tuple(v) for k, v in doc["spec"].items()})
        artefacts = tuple(_artefact(a) for a in doc["artefacts"])
        layers = tuple(_path(lp) for lp in doc["layers"])
        env = _path(doc["env"])
        platform = {str(k): str(v) for k, v in doc["platform"].items()}
    except (KeyError, TypeError, AttributeError) as e:
        raise LockError(f"{source}: malformed lock ({type(e).__name__}: {e})") from e
    return Lock(spec=spec, platform=platform, artefacts=artefacts, layers=layers, env=env)


def _artefact(raw: dict[str, Any]) -> LockedArtefact:
    raw = dict(raw)
    raw["output"] = _path(raw["output"])
    if raw["kind"] not in ("deb", "wheel", "npm"):
        raise TypeError(f"unknown artefact kind {raw['kind']!r}")
    return LockedArtefact(**raw)


def _path_doc(lp: LockedPath) -> dict[str, Any]:
    # "store_path" is the key every lock consumer (pull, gc roots) looks for.
    return {"store_path": lp.path, "nar_hash": lp.nar_hash, "nar_size": lp.nar_size,
            "name": lp.name}  # fmt: skip


def _path(raw: dict[str, Any]) -> LockedPath:
    return LockedPath(
        path=raw["store_path"], nar_hash=raw["nar_hash"], nar_size=int(raw["nar_size"]),
        name=raw.get("name", ""),
    )  # fmt: skip

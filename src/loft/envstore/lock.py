"""The lock file: ``loft.lock`` (JSON, versioned), pure parse and serialise.

Every artefact is pinned twice: by the registry's own hash (Debian ``Packages`` SHA256,
PyPI sha256, npm SRI ``integrity``) and by what it produces here (its fixed-output store
path and the unpacked store path + NAR hash). The generated layers and the environment
itself are recorded the same way, so a lock can be realised from a binary cache without
resolving anything, and a rebuild proves itself reproducible by matching the lock.

A lock is untrusted input (it comes from a repository): every field is checked when its
:class:`LockedArtefact` or :class:`LockedPath` is made (:mod:`loft.envstore.fields`), so
:func:`loads` refuses a hostile lock before anything is fetched or written.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from loft.envstore import EnvstoreError, nixbase32
from loft.envstore.fields import (
    MAX_ARTEFACT_SIZE,
    InvalidField,
    check_artefact,
    check_integrity,
    check_sha256_hex,
    check_size,
)
from loft.envstore.spec import Spec
from loft.envstore.store_path import fixed_output_path, name_part, parse, validate_name

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
#: Largest NAR size a lock may record (Nix's sizes are unsigned 64-bit; ours fit SQLite).
_MAX_NAR_SIZE = (1 << 63) - 1


class LockError(EnvstoreError):
    """``loft.lock`` is not a lock this version of loft understands."""


@dataclass(frozen=True)
class LockedPath:
    """A store path with the NAR hash and size it must have."""

    path: str
    nar_hash: str
    nar_size: int
    name: str = ""

    def __post_init__(self) -> None:
        parse(self.path)
        if self.name and name_part(self.path) != self.name:
            raise InvalidField(f"{self.path} is not named {self.name!r}")
        h = self.nar_hash
        if not (isinstance(h, str) and h.startswith("sha256:") and len(h) == 7 + 52
                and all(c in nixbase32.ALPHABET for c in h[7:])):  # fmt: skip
            raise InvalidField(f"NAR hash {h!r:.80} of {self.path} is not sha256:<base-32>")
        check_size(self.nar_size, f"NAR size of {self.path}", _MAX_NAR_SIZE)


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
    size: int = 0  # bytes of the artefact file; 0 in locks written before it was recorded

    def __post_init__(self) -> None:
        check_artefact(self.kind, self.name, self.version, self.url, self.location, self.bin)
        what = self.what
        check_sha256_hex(self.file_sha256, f"{what}: file sha256")
        if self.kind == "npm":
            check_integrity(self.registry_hash, f"{what}: integrity")
        elif self.registry_hash != f"sha256:{self.file_sha256}":
            raise InvalidField(f"{what}: registry hash {self.registry_hash!r:.100} is not "
                               "the file's sha256")  # fmt: skip
        validate_name(self.file_name)
        if self.fixed_path != fixed_output_path(self.file_sha256, self.file_name):
            raise InvalidField(f"{what}: {self.fixed_path!r:.200} is not its fixed-output path")
        if not self.output.name:
            raise InvalidField(f"{what}: its output has no name")
        check_size(self.size, f"{what}: size", MAX_ARTEFACT_SIZE)

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
        # Text that starts with "{" is taken for a lock: say so, it may be a broken toml.
        raise LockError(
            f"{source}: not JSON: {e}",
            hint="a spec is a loft.toml (TOML) or a loft.lock (JSON, as `loft env lock` writes it)",
        ) from e
    if not isinstance(doc, dict):
        raise LockError(f"{source}: not a lock file")
    if doc.get("version") != LOCK_VERSION:
        raise LockError(
            f"{source}: lock format version {doc.get('version')!r} is not {LOCK_VERSION}",
            hint="re-create it with `loft env lock`",
        )
    where = "the lock"
    try:
        spec = Spec(**{k: tuple(v) for k, v in doc["spec"].items()})
        platform = _platform(doc["platform"])
        artefacts = []
        for i, raw in enumerate(doc["artefacts"]):
            where = f"artefact {i}"
            artefacts.append(_artefact(raw))
        where = "layers"
        layers = tuple(_path(lp) for lp in doc["layers"])
        where = "env"
        env = _path(doc["env"])
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise LockError(f"{source}: malformed lock ({type(e).__name__}: {e})") from e
    except EnvstoreError as e:
        raise LockError(
            f"{source}: {where}: {e.message}",
            hint="the lock is damaged or hostile; nothing was fetched or written",
        ) from e
    return Lock(spec=spec, platform=platform, artefacts=tuple(artefacts), layers=layers, env=env)


def _artefact(raw: dict[str, Any]) -> LockedArtefact:
    raw = dict(raw)
    raw["output"] = _path(raw["output"])
    return LockedArtefact(**raw)


#: What each platform key may hold: it reaches the unpack jail (python) and recipes.
_PLATFORM = {"python": r"[0-9]{1,2}\.[0-9]{1,3}", "suite": r"[a-z0-9][a-z0-9.-]{0,63}",
             "arch": r"[a-z0-9][a-z0-9-]{0,63}"}  # fmt: skip


def _platform(raw: dict[str, Any]) -> dict[str, str]:
    out = {str(k): str(v) for k, v in raw.items()}
    for k, v in out.items():
        if k not in _PLATFORM or not re.fullmatch(_PLATFORM[k], v):
            raise InvalidField(f"platform {k[:40]!r} = {v[:40]!r} is not a known platform value")
    return out


def _path_doc(lp: LockedPath) -> dict[str, Any]:
    # "store_path" is the key every lock consumer (pull, gc roots) looks for.
    return {"store_path": lp.path, "nar_hash": lp.nar_hash, "nar_size": lp.nar_size,
            "name": lp.name}  # fmt: skip


def _path(raw: dict[str, Any]) -> LockedPath:
    return LockedPath(
        path=raw["store_path"], nar_hash=raw["nar_hash"], nar_size=raw["nar_size"],
        name=raw.get("name", ""),
    )  # fmt: skip

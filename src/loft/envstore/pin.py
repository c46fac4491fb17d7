"""What the builder realises: an artefact pinned by where it comes from, how to check it
and what to call it (from a resolver's answer or a lock), checked as untrusted input."""

from __future__ import annotations

from dataclasses import dataclass, field

from loft.envstore.fields import MAX_ARTEFACT_SIZE, check_artefact, check_size
from loft.envstore.lock import ArtefactKind, LockedArtefact
from loft.envstore.resolve_debian import DebianArtefact
from loft.envstore.resolve_npm import NpmArtefact
from loft.envstore.resolve_pypi import PyPIArtefact
from loft.envstore.store_path import validate_name

__all__ = ["Pin", "store_name"]


def store_name(raw: str) -> str:
    """A store path name from any registry name/version: invalid characters become ``_``."""
    out = "".join(c if c.isalnum() or c in "+-._?=" else "_" for c in raw).lstrip(".")
    return out[:200] or "artefact"


@dataclass(frozen=True)
class Pin:
    """An artefact to realise: where to get it, how to check it, what to call it."""

    kind: ArtefactKind
    name: str
    version: str
    url: str
    registry_hash: str
    file_name: str
    out_name: str
    file_sha256: str = ""  # hex; unknown for npm until downloaded (npm pins sha512)
    integrity: str = ""  # SRI, npm only
    location: str = ""
    bin: dict[str, str] = field(default_factory=dict)
    size: int = 0  # declared bytes of the file (Packages index, lock); 0 when unknown
    expected: LockedArtefact | None = None

    def __post_init__(self) -> None:
        # Resolvers' answers are as untrusted as a lock: same checks, before any fetch.
        check_artefact(self.kind, self.name, self.version, self.url, self.location, self.bin)
        validate_name(self.file_name)
        validate_name(self.out_name)
        check_size(self.size, f"{self.what}: size", MAX_ARTEFACT_SIZE)

    @property
    def what(self) -> str:
        """How errors name it."""
        kind = {"deb": "Debian package", "wheel": "PyPI wheel", "npm": "npm package"}
        return f"{kind[self.kind]} {self.name} {self.version}"

    @classmethod
    def from_debian(cls, a: DebianArtefact) -> Pin:
        """A pin for a resolved .deb."""
        return cls(
            kind="deb", name=a.name, version=a.version, url=a.url,
            registry_hash=f"sha256:{a.sha256}", file_sha256=a.sha256,
            file_name=store_name(a.filename.rsplit("/", 1)[-1]),
            out_name=store_name(f"{a.name}-{a.version}"), size=a.size,
        )  # fmt: skip

    @classmethod
    def from_pypi(cls, a: PyPIArtefact) -> Pin:
        """A pin for a resolved wheel."""
        return cls(
            kind="wheel", name=a.name, version=a.version, url=a.url,
            registry_hash=f"sha256:{a.sha256}", file_sha256=a.sha256,
            file_name=store_name(a.filename), out_name=store_name(f"python3-{a.name}-{a.version}"),
        )  # fmt: skip

    @classmethod
    def from_npm(cls, a: NpmArtefact) -> Pin:
        """A pin for a resolved npm tarball."""
        flat = a.name.lstrip("@").replace("/", "-")
        return cls(
            kind="npm", name=a.name, version=a.version, url=a.url, registry_hash=a.integrity,
            integrity=a.integrity, file_name=store_name(f"{flat}-{a.version}.tgz"),
            out_name=store_name(f"npm-{flat}-{a.version}"), location=a.location, bin=a.bin,
        )  # fmt: skip

    @classmethod
    def from_lock(cls, a: LockedArtefact) -> Pin:
        """A pin that must reproduce exactly what the lock recorded."""
        return cls(
            kind=a.kind, name=a.name, version=a.version, url=a.url,
            registry_hash=a.registry_hash, file_sha256=a.file_sha256, file_name=a.file_name,
            integrity=a.registry_hash if a.kind == "npm" else "", out_name=a.output.name,
            location=a.location, bin=dict(a.bin), size=a.size, expected=a,
        )  # fmt: skip

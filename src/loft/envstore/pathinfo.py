"""What the store records about a valid path, how it writes NAR hashes, and the two
errors about validity and content. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from loft.envstore import EnvstoreError, nixbase32

__all__ = ["HashMismatch", "InvalidPath", "PathInfo", "format_nar_hash", "parse_nar_hash"]


class InvalidPath(EnvstoreError):
    """A store path that should be valid is not in the store."""

    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not a valid path in the environment store",
            hint="build or pull it first (loft env build / loft env pull)",
        )
        self.path = path


class HashMismatch(EnvstoreError):
    """Content does not hash to what was expected; nothing was added."""


def format_nar_hash(digest: bytes) -> str:
    """``sha256:<nixbase32>``, the way Nix prints NAR hashes."""
    return "sha256:" + nixbase32.encode(digest)


def parse_nar_hash(s: str) -> bytes:
    """Digest bytes of ``sha256:<nixbase32>`` (or ``sha256:<hex>``)."""
    algo, _, rest = s.partition(":")
    if algo != "sha256":
        raise EnvstoreError(f"unsupported hash {s!r}", hint="only sha256 is supported")
    if len(rest) == 64:
        return bytes.fromhex(rest)
    digest = nixbase32.decode(rest)
    if len(digest) != 32:
        raise EnvstoreError(f"bad sha256 hash {s!r}")
    return digest


@dataclass(frozen=True)
class PathInfo:
    """Everything the store knows about one valid path (Nix's ValidPathInfo)."""

    path: str
    nar_hash: str  # "sha256:<nixbase32>"
    nar_size: int
    references: tuple[str, ...]  # full paths, sorted; includes ``path`` for a self-reference
    deriver: str | None = None
    ca: str | None = None
    recipe: dict[str, object] | None = None

"""The ``.narinfo`` file of a Nix binary cache (pure parse and render).

One ``Key: value`` per line::

    StorePath: /nix/store/<hash>-<name>
    URL: nar/<filehash>.nar.zst
    Compression: zstd
    FileHash: sha256:<nixbase32>
    FileSize: <bytes>
    NarHash: sha256:<nixbase32>
    NarSize: <bytes>
    References: <basename> <basename> ...
    Deriver: <basename>            (optional)
    Sig: <keyname>:<base64>        (zero or more)
    CA: <content address>          (optional)

The signed *fingerprint* is ``1;<storePath>;<narHash>;<narSize>;<refs, comma-joined>``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from loft.envstore import EnvstoreError
from loft.envstore.store_path import STORE_DIR, basename, parse

__all__ = ["NarInfo", "NarInfoError", "fingerprint", "parse_narinfo", "render_narinfo"]


class NarInfoError(EnvstoreError):
    """A narinfo file is malformed."""


def fingerprint(store_path: str, nar_hash: str, nar_size: int, references: Iterable[str]) -> str:
    """What a path signature signs; ``nar_hash`` must be ``sha256:<nixbase32>``."""
    if not nar_hash.startswith("sha256:") or len(nar_hash) != 7 + 52:
        raise NarInfoError(f"fingerprint needs a base-32 sha256 NAR hash, got {nar_hash!r}")
    return f"1;{store_path};{nar_hash};{nar_size};{','.join(sorted(references))}"


@dataclass(frozen=True)
class NarInfo:
    """One parsed narinfo; references and deriver are full store paths."""

    store_path: str
    url: str
    compression: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...] = ()
    file_hash: str | None = None
    file_size: int | None = None
    deriver: str | None = None
    sigs: tuple[str, ...] = field(default=())
    ca: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        # References are a set in Nix; keep one canonical order so equal infos compare equal.
        object.__setattr__(self, "references", tuple(sorted(set(self.references))))

    def fingerprint(self) -> str:
        """The string the ``Sig`` lines sign."""
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def with_sigs(self, sigs: Iterable[str]) -> NarInfo:
        """A copy with ``sigs`` added (duplicates dropped, order kept)."""
        return replace(self, sigs=tuple(dict.fromkeys([*self.sigs, *sigs])))


def render_narinfo(ni: NarInfo) -> str:
    """The text of a narinfo file, fields in the order Nix writes them."""
    lines = [
        f"StorePath: {ni.store_path}",
        f"URL: {ni.url}",
        f"Compression: {ni.compression}",
    ]
    if ni.file_hash is not None:
        lines.append(f"FileHash: {ni.file_hash}")
    if ni.file_size is not None:
        lines.append(f"FileSize: {ni.file_size}")
    lines += [
        f"NarHash: {ni.nar_hash}",
        f"NarSize: {ni.nar_size}",
        "References: " + " ".join(basename(r) for r in sorted(ni.references)),
    ]
    if ni.deriver:
        lines.append(f"Deriver: {basename(ni.deriver)}")
    if ni.system:
        lines.append(f"System: {ni.system}")
    lines += [f"Sig: {s}" for s in ni.sigs]
    if ni.ca:
        lines.append(f"CA: {ni.ca}")
    return "\n".join(lines) + "\n"


def parse_narinfo(text: str, store_dir: str = STORE_DIR) -> NarInfo:
    """Parse a narinfo; unknown fields are ignored, missing required ones are an error."""
    fields: dict[str, str] = {}
    sigs: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise NarInfoError(f"narinfo line {n} is not 'Key: value': {line[:60]!r}")
        if key == "Sig":
            sigs.append(value)
        else:
            fields[key] = value
    for req in ("StorePath", "URL", "NarHash", "NarSize"):
        if req not in fields:
            raise NarInfoError(f"narinfo lacks the {req} field")
    store_path = fields["StorePath"]
    parse(store_path, store_dir)

    def full(base: str) -> str:
        p = f"{store_dir}/{base}"
        parse(p, store_dir)
        return p

    def num(key: str) -> int:
        try:
            v = int(fields[key])
        except ValueError:
            raise NarInfoError(f"narinfo {key} is not a number: {fields[key]!r}") from None
        if v < 0:
            raise NarInfoError(f"narinfo {key} is negative")
        return v

    refs = tuple(sorted(full(b) for b in fields.get("References", "").split()))
    return NarInfo(
        store_path=store_path,
        url=fields["URL"],
        # Nix's default when the field is absent.
        compression=fields.get("Compression") or "bzip2",
        nar_hash=fields["NarHash"],
        nar_size=num("NarSize"),
        references=refs,
        file_hash=fields.get("FileHash"),
        file_size=num("FileSize") if "FileSize" in fields else None,
        deriver=full(fields["Deriver"]) if fields.get("Deriver") else None,
        sigs=tuple(sigs),
        ca=fields.get("CA") or None,
        system=fields.get("System") or None,
    )

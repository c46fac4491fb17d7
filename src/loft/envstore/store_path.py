"""Store path computation, exactly as Nix does it (pure: no I/O).

A store path is ``<store_dir>/<hash32>-<name>`` where ``hash32`` is the nix-base32 form of
a SHA-256 digest folded to 20 bytes. The digest is taken over a *fingerprint*::

    <type>:sha256:<inner hash, hex>:<store_dir>:<name>

``type`` is ``source`` / ``text`` followed by ``:<ref>`` for each (sorted) reference and
``:self`` for a self-reference, or ``output:out`` for fixed-output flat files, whose
inner hash is ``sha256("fixed:out:sha256:<hex>:")``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from loft.envstore import EnvstoreError, nixbase32

STORE_DIR = "/nix/store"
#: Length of the nix-base32 hash part of a store path basename (20 bytes).
HASH_PART_LEN = 32
#: Nix's limit on the name part of a store path.
MAX_NAME_LEN = 211

_NAME_RE = re.compile(r"[A-Za-z0-9+\-._?=]+")
_HASH_RE = re.compile(r"[0123456789abcdfghijklmnpqrsvwxyz]{32}")

__all__ = [
    "HASH_PART_LEN",
    "MAX_NAME_LEN",
    "STORE_DIR",
    "InvalidStorePath",
    "basename",
    "compress_hash",
    "fixed_output_path",
    "hash_part",
    "make_store_path",
    "make_type",
    "name_part",
    "parse",
    "source_path",
    "text_path",
    "validate_name",
]


class InvalidStorePath(EnvstoreError):
    """A string is not a valid store path or store path name."""


def validate_name(name: str) -> None:
    """Raise :class:`InvalidStorePath` unless ``name`` may be the name part of a store path."""
    if not name:
        raise InvalidStorePath("store path name is empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidStorePath(
            f"store path name {name[:40]!r}... is {len(name)} characters long",
            hint=f"at most {MAX_NAME_LEN} are allowed",
        )
    if name.startswith("."):
        raise InvalidStorePath(f"store path name {name!r} starts with a dot")
    if not _NAME_RE.fullmatch(name):
        bad = next(c for c in name if not _NAME_RE.fullmatch(c))
        raise InvalidStorePath(
            f"store path name {name!r} contains the forbidden character {bad!r}",
            hint="names may use letters, digits and + - . _ ? =",
        )


def compress_hash(digest: bytes, size: int = 20) -> bytes:
    """XOR-fold ``digest`` into ``size`` bytes (Nix's ``compressHash``)."""
    out = bytearray(size)
    for i, b in enumerate(digest):
        out[i % size] ^= b
    return bytes(out)


def make_type(kind: str, references: Iterable[str] = (), self_ref: bool = False) -> str:
    """The ``type`` field of a fingerprint: kind, then ``:ref`` per sorted ref, then ``:self``."""
    parts = [kind, *sorted(set(references))]
    if self_ref:
        parts.append("self")
    return ":".join(parts)


def make_store_path(type_: str, inner_sha256: bytes, name: str, store_dir: str = STORE_DIR) -> str:
    """Store path for a fingerprint of ``type_`` over the digest ``inner_sha256``."""
    validate_name(name)
    fingerprint = f"{type_}:sha256:{inner_sha256.hex()}:{store_dir}:{name}"
    digest = compress_hash(hashlib.sha256(fingerprint.encode()).digest())
    return f"{store_dir}/{nixbase32.encode(digest)}-{name}"


def fixed_output_path(sha256_hex: str, name: str, store_dir: str = STORE_DIR) -> str:
    """Path of a fixed-output *flat* file with this sha256 (as ``nix-store --add-fixed sha256``)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise EnvstoreError(f"not a lowercase hex sha256: {sha256_hex!r}")
    inner = hashlib.sha256(f"fixed:out:sha256:{sha256_hex}:".encode()).digest()
    return make_store_path("output:out", inner, name, store_dir)


def source_path(
    nar_sha256: bytes,
    name: str,
    references: Iterable[str] = (),
    self_ref: bool = False,
    store_dir: str = STORE_DIR,
) -> str:
    """Path of a content-addressed tree (``nix-store --add``, recursive fixed output)."""
    refs = list(references)
    for r in refs:
        parse(r, store_dir)
    return make_store_path(make_type("source", refs, self_ref), nar_sha256, name, store_dir)


def text_path(
    content_sha256: bytes, name: str, references: Iterable[str] = (), store_dir: str = STORE_DIR
) -> str:
    """Path of a text file such as a ``.drv`` (``builtins.toFile``)."""
    refs = list(references)
    for r in refs:
        parse(r, store_dir)
    return make_store_path(make_type("text", refs), content_sha256, name, store_dir)


def parse(store_path: str, store_dir: str = STORE_DIR) -> tuple[str, str]:
    """Split a full store path into (hash part, name); raise if it is not one."""
    prefix = store_dir + "/"
    if not store_path.startswith(prefix):
        raise InvalidStorePath(f"{store_path!r} is not in the store {store_dir}")
    base = store_path[len(prefix) :]
    if (
        len(base) < HASH_PART_LEN + 2
        or base[HASH_PART_LEN] != "-"
        or not _HASH_RE.fullmatch(base[:HASH_PART_LEN])
    ):
        raise InvalidStorePath(f"{store_path!r} is not a store path (expected <hash32>-<name>)")
    name = base[HASH_PART_LEN + 1 :]
    validate_name(name)
    return base[:HASH_PART_LEN], name


def basename(store_path: str) -> str:
    """``<hash>-<name>`` of a full store path."""
    return store_path.rsplit("/", 1)[-1]


def hash_part(store_path: str) -> str:
    """The 32-character hash part of a store path (full path or basename)."""
    base = basename(store_path)
    h = base[:HASH_PART_LEN]
    if not _HASH_RE.fullmatch(h) or base[HASH_PART_LEN : HASH_PART_LEN + 1] != "-":
        raise InvalidStorePath(f"{store_path!r} is not a store path")
    return h


def name_part(store_path: str) -> str:
    """The name after ``<hash>-`` of a store path."""
    hash_part(store_path)
    return basename(store_path)[HASH_PART_LEN + 1 :]

"""ed25519 signing keys in Nix's format, and path signatures.

Key files hold ``<name>:<base64>``: the secret key is 64 bytes (the 32-byte seed followed
by the public key, as libsodium stores it), the public key 32 bytes. A signature is
written ``<name>:<base64 of 64 bytes>``. ed25519 is deterministic, so signing the same
fingerprint with the same key gives the same bytes as Nix.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from loft.envstore import EnvstoreError

__all__ = ["PublicKey", "SecretKey", "SigningKeyError", "verify_any"]


class SigningKeyError(EnvstoreError):
    """A key or signature string is malformed."""


def _split(text: str, size: int, what: str) -> tuple[str, bytes]:
    name, sep, b64 = text.strip().partition(":")
    if not sep or not name:
        raise SigningKeyError(f"{what} must look like '<name>:<base64>'")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SigningKeyError(f"{what} {name!r} is not valid base64") from None
    if len(raw) != size:
        raise SigningKeyError(f"{what} {name!r} has {len(raw)} bytes, expected {size}")
    return name, raw


@dataclass(frozen=True)
class PublicKey:
    """A named ed25519 public key (``trusted-public-keys`` entry)."""

    name: str
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``<name>:<base64 of 32 bytes>``."""
        return cls(*_split(text, 32, "public key"))

    def render(self) -> str:
        """``<name>:<base64>``."""
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def verify(self, fingerprint: str, sig: str) -> bool:
        """True when ``sig`` (``<name>:<base64>``) is this key's signature of ``fingerprint``."""
        name, sep, b64 = sig.partition(":")
        if not sep or name != self.name:
            return False
        try:
            raw = base64.b64decode(b64, validate=True)
            Ed25519PublicKey.from_public_bytes(self.key).verify(raw, fingerprint.encode())
        except (binascii.Error, ValueError, InvalidSignature):
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    """A named ed25519 secret key, 64 bytes (seed + public key)."""

    name: str
    key: bytes

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        """A fresh random key called ``name``."""
        if not name or ":" in name:
            raise SigningKeyError(f"bad key name {name!r}", hint="a key name must not contain ':'")
        sk = Ed25519PrivateKey.generate()
        seed = sk.private_bytes_raw()
        pub = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(name, seed + pub)

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        """Parse ``<name>:<base64 of 64 bytes>`` and check its halves belong together."""
        name, raw = _split(text, 64, "secret key")
        derived = (
            Ed25519PrivateKey.from_private_bytes(raw[:32])
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        if derived != raw[32:]:
            raise SigningKeyError(f"secret key {name!r} is corrupt: its public half does not match")
        return cls(name, raw)

    def render(self) -> str:
        """``<name>:<base64>``."""
        return f"{self.name}:{base64.b64encode(self.key).decode()}"

    def public(self) -> PublicKey:
        """The matching public key."""
        return PublicKey(self.name, self.key[32:])

    def sign(self, fingerprint: str) -> str:
        """``<name>:<base64 signature>`` of ``fingerprint``."""
        raw = Ed25519PrivateKey.from_private_bytes(self.key[:32]).sign(fingerprint.encode())
        return f"{self.name}:{base64.b64encode(raw).decode()}"


def verify_any(fingerprint: str, sigs: Iterable[str], keys: Iterable[PublicKey]) -> bool:
    """True when any signature is valid under any of the trusted keys."""
    keys = list(keys)
    return any(k.verify(fingerprint, s) for s in sigs for k in keys)

"""ed25519 keys in Nix's format: generation, parsing, signing and verification."""

from __future__ import annotations

import base64

import pytest

from loft.envstore.signing import PublicKey, SecretKey, SigningKeyError, verify_any


def test_key_files_have_nix_sizes_and_round_trip() -> None:
    sk = SecretKey.generate("cache.example-1")
    name, b64 = sk.render().split(":", 1)
    assert name == "cache.example-1" and len(base64.b64decode(b64)) == 64
    assert SecretKey.parse(sk.render()) == sk
    pk = sk.public()
    assert len(base64.b64decode(pk.render().split(":", 1)[1])) == 32
    assert PublicKey.parse(pk.render() + "\n") == pk
    assert pk.key == sk.key[32:]


def test_sign_is_deterministic_and_verifies() -> None:
    sk = SecretKey.generate("k")
    fp = "1;/nix/store/x;sha256:y;1;"
    sig = sk.sign(fp)
    assert sig == sk.sign(fp) and sig.startswith("k:")
    assert sk.public().verify(fp, sig)
    assert not sk.public().verify(fp + "x", sig)
    assert not SecretKey.generate("k").public().verify(fp, sig)  # same name, other key
    renamed = PublicKey("other", sk.public().key)
    assert not renamed.verify(fp, sig)  # the signature names its key
    assert verify_any(fp, ["junk", sig], [SecretKey.generate("z").public(), sk.public()])
    assert not verify_any(fp, [sig], [])


@pytest.mark.parametrize(
    "text", ["nocolon", ":AAAA", "k:not base64!", "k:" + base64.b64encode(b"x" * 31).decode()]
)
def test_bad_public_keys(text: str) -> None:
    with pytest.raises(SigningKeyError):
        PublicKey.parse(text)


def test_secret_key_with_mismatched_halves_is_refused() -> None:
    a, b = SecretKey.generate("k"), SecretKey.generate("k")
    franken = "k:" + base64.b64encode(a.key[:32] + b.key[32:]).decode()
    with pytest.raises(SigningKeyError, match="corrupt"):
        SecretKey.parse(franken)


def test_bad_key_name() -> None:
    with pytest.raises(SigningKeyError):
        SecretKey.generate("a:b")

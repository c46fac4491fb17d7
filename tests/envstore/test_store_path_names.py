"""Store path computation and name rules (pure); real Nix re-checks in tests/interop."""

from __future__ import annotations

import hashlib

import pytest

from loft.envstore import store_path as sp

# Produced by `nix-store --add-fixed sha256` on a file holding b"hello\n" (Nix 2.8).
HELLO_SHA256 = hashlib.sha256(b"hello\n").hexdigest()
HELLO_PATH = "/nix/store/d4b4lmbd433fa2xcdysz7p7zahnqh1z4-f.txt"


def test_fixed_output_path_matches_nix() -> None:
    assert sp.fixed_output_path(HELLO_SHA256, "f.txt") == HELLO_PATH


def test_store_dir_is_part_of_the_hash() -> None:
    other = sp.fixed_output_path(HELLO_SHA256, "f.txt", store_dir="/gnu/store")
    assert other.startswith("/gnu/store/")
    assert sp.hash_part(other) != sp.hash_part(HELLO_PATH)


def test_source_path_depends_on_references_not_their_order() -> None:
    digest = hashlib.sha256(b"nar").digest()
    a = "/nix/store/" + "a" * 32 + "-a"
    b = "/nix/store/" + "b" * 32 + "-b"
    plain = sp.source_path(digest, "x")
    with_refs = sp.source_path(digest, "x", [a, b])
    assert plain != with_refs
    assert with_refs == sp.source_path(digest, "x", [b, a])
    assert sp.source_path(digest, "x", [a], self_ref=True) != sp.source_path(digest, "x", [a])


def test_make_type_sorts_and_appends_self() -> None:
    assert sp.make_type("source", ["/nix/store/b", "/nix/store/a"], True) == (
        "source:/nix/store/a:/nix/store/b:self"
    )


def test_text_and_source_paths_differ_for_same_digest() -> None:
    digest = hashlib.sha256(b"x").digest()
    assert sp.text_path(digest, "x") != sp.source_path(digest, "x")


def test_compress_hash_folds_by_xor() -> None:
    assert sp.compress_hash(bytes(range(32)), 20) == bytes(
        [i ^ (i + 20) if i < 12 else i for i in range(20)]
    )


@pytest.mark.parametrize(
    "name", ["hello", "python3-3.11.2", "a+b=c?d_e.f-g", "x" * sp.MAX_NAME_LEN, "0"]
)
def test_valid_names(name: str) -> None:
    sp.validate_name(name)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (".hidden", "starts with a dot"),
        ("a/b", "forbidden character '/'"),
        ("a b", "forbidden character ' '"),
        ("caf\u00e9", "forbidden character"),
        ("x" * (sp.MAX_NAME_LEN + 1), "characters long"),
    ],
)
def test_invalid_names(name: str, why: str) -> None:
    with pytest.raises(sp.InvalidStorePath, match=why):
        sp.validate_name(name)


def test_parse_and_parts() -> None:
    assert sp.parse(HELLO_PATH) == ("d4b4lmbd433fa2xcdysz7p7zahnqh1z4", "f.txt")
    assert sp.hash_part(HELLO_PATH) == "d4b4lmbd433fa2xcdysz7p7zahnqh1z4"
    assert sp.name_part(HELLO_PATH) == "f.txt"
    for bad in ["/nix/store/short-x", "/usr/" + HELLO_PATH[11:], "/nix/store/" + "e" * 32 + "-x"]:
        with pytest.raises(sp.InvalidStorePath):
            sp.parse(bad)


def test_fixed_output_path_rejects_non_hex() -> None:
    with pytest.raises(sp.EnvstoreError):
        sp.fixed_output_path("Z" * 64, "x")

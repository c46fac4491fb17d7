"""loft.toml parsing: the example spec, and one clear error per kind of breakage."""

from __future__ import annotations

from pathlib import Path

import pytest

from loft.envstore.spec import Spec, SpecError, load_spec, parse_spec

EXAMPLE = """
[env]
debian = ["python3", "git", "curl"]
pypi   = ["requests==2.32.3"]
npm    = ["left-pad@1.3.0"]
"""


def test_example_spec() -> None:
    spec = parse_spec(EXAMPLE)
    assert spec == Spec(
        debian=("python3", "git", "curl"), pypi=("requests==2.32.3",), npm=("left-pad@1.3.0",)
    )
    assert spec.to_json()["npm"] == ["left-pad@1.3.0"]


def test_lists_are_optional() -> None:
    assert parse_spec('[env]\nnpm = ["@types/node@20.1.0"]\n').npm == ("@types/node@20.1.0",)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[env\ndebian = []", "not valid TOML"),
        ('[other]\ndebian = ["git"]\n', "no [env] table"),
        ('[env]\ndebain = ["git"]\n', "unknown key env.debain"),
        ('[env]\ndebian = "git"\n', "env.debian must be a list"),
        ("[env]\ndebian = [1]\n", "env.debian must be a list"),
        ('[env]\ndebian = ["Git Tools"]\n', "'Git Tools' is not a Debian package name"),
        ('[env]\nnpm = ["left pad"]\n', "'left pad' is not an npm package spec"),
        ('[env]\npypi = ["--index-url=http://evil"]\n', "not pip options"),
        ("[env]\ndebian = []\n", "asks for nothing"),
    ],
)
def test_broken_spec_names_the_problem(text: str, needle: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(text, source="my/loft.toml")
    assert needle in str(e.value)
    assert str(e.value).startswith("my/loft.toml: ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "loft.toml")

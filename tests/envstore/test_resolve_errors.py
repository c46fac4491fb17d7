"""Bad input to `loft env lock`: one clear line naming the culprit, exit 1, store unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from envbuild_support import Example, example, loft, store_snapshot

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            '[env]\ndebian = ["python3", "no-such-package-xyzzy"]\n',
            "unknown Debian package 'no-such-package-xyzzy'",
        ),
        (
            '[env]\ndebian = ["python3"]\npypi = ["requests==0.0.999"]\n',
            "no binary wheel on PyPI matches 'requests==0.0.999'",
        ),
        (
            '[env]\nnpm = ["left-padd-xyzzy-nope@1.3.0"]\n',
            "npm package 'left-padd-xyzzy-nope@1.3.0' not found in the registry",
        ),
        ('[env]\nnpm = ["left-pad@99.0.0"]\n', "no npm version matches 'left-pad@99.0.0'"),
        ("[env\ndebian = []\n", "loft.toml: not valid TOML"),
        ('[env]\ndebian = "git"\n', "loft.toml: env.debian must be a list"),
    ],
)
def test_bad_input_is_one_clear_error(ex: Example, tmp_path: Path, spec: str, message: str) -> None:
    (tmp_path / "loft.toml").write_text(spec)
    before = store_snapshot(ex.store)
    r = loft(["env", "lock"], ex.data_dir, tmp_path, timeout=120)
    assert r.returncode == 1
    first = r.stderr.splitlines()[0]
    assert first.startswith("loft: error: ") and message in first, r.stderr
    assert all(ln.startswith("loft: ") for ln in r.stderr.splitlines())  # no traceback
    assert not (tmp_path / "loft.lock").exists()
    assert store_snapshot(ex.store) == before


def test_missing_spec_file(ex: Example, tmp_path: Path) -> None:
    r = loft(["env", "lock"], ex.data_dir, tmp_path)
    assert r.returncode == 1 and "loft.toml: no such spec file" in r.stderr

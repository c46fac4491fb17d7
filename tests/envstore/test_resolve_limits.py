"""What resolvers read back from pip, npm and the apt helper (documents derived from a
registry) is read with a size limit: an oversized one is one clear error."""

from __future__ import annotations

import os
import stat
import sys
import tracemalloc
from pathlib import Path

import pytest

from loft.envstore import resolve_debian, resolve_npm, resolve_pypi
from loft.envstore.bounded import TooLarge
from loft.envstore.resolve_pypi import PythonTarget

pytestmark = pytest.mark.timeout(60)
TARGET = PythonTarget("3.11", "manylinux_2_36_x86_64")


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_resolve_npm_oversized_lock_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A registry whose metadata made npm write a lock larger than loft will read.
    size = resolve_npm.MAX_NPM_LOCK_SIZE + 1
    script(tmp_path / "npm", f"truncate -s {size} package-lock.json\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(TooLarge, match=f"npm's lock .*more than the {size - 1} bytes"):
        resolve_npm.resolve_npm(["left-pad@1.3.0"])


def test_resolve_pypi_oversized_report_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = resolve_pypi.MAX_PIP_REPORT_SIZE + 1
    fake = script(tmp_path / "python", 'while [ "$1" != --report ]; do shift; done\n'
                  f'truncate -s {size} "$2"\n')  # fmt: skip
    monkeypatch.setattr(sys, "executable", str(fake))
    with pytest.raises(TooLarge, match=f"pip's report .*more than the {size - 1} bytes"):
        resolve_pypi.resolve_pypi(["requests"], TARGET)


def test_resolve_debian_oversized_answer_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The answer streams from the helper: read up to the limit, then the helper is killed.
    fake = script(tmp_path / "python3", "cat >/dev/null\nexec cat /dev/zero\n")
    monkeypatch.setattr(resolve_debian, "DEBIAN_PYTHON", str(fake))
    monkeypatch.setattr(resolve_debian.AptConfig, "prepare", lambda self: None)
    config = resolve_debian.AptConfig(root=tmp_path / "apt", suite="bookworm")
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge, match="the Debian resolver's answer"):
            resolve_debian.resolve_debian(["python3"], config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * resolve_debian.MAX_APT_ANSWER_SIZE + (8 << 20)

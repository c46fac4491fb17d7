"""The example environment, built once per test session and shared by the test modules.

Building it (resolve, download ~60 MB, unpack ~130 artefacts) is the slow part of the
envstore tests, so the first module that asks builds it under pytest's session temp dir and
later ones reuse it. The private apt indexes are shared the same way (LOFT_APT_STATE).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from loft.envstore.lock import Lock, loads
from loft.envstore.store import Store

EXAMPLE_SPEC = """[env]
debian = ["python3", "git", "curl"]
pypi   = ["requests==2.32.3"]
npm    = ["left-pad@1.3.0"]
"""
LOFT = str(Path(sys.executable).with_name("loft"))


@dataclass(frozen=True)
class Example:
    """Where the example environment lives."""

    data_dir: Path
    project: Path
    lock_file: Path
    lock: Lock

    @property
    def store(self) -> Store:
        return Store(self.data_dir / "envstore")

    def env(self) -> dict[str, str]:
        return cli_env(self.data_dir)


def apt_state(factory: pytest.TempPathFactory) -> Path:
    return factory.getbasetemp() / "loft-apt-state"


def cli_env(data_dir: Path) -> dict[str, str]:
    """Environment variables for running ``loft`` against ``data_dir``."""
    base = data_dir.parent
    while base.parent != base and not (base / "loft-apt-state").exists():
        base = base.parent
    env = {**os.environ, "LOFT_DATA_DIR": str(data_dir)}
    if (base / "loft-apt-state").exists():
        env["LOFT_APT_STATE"] = str(base / "loft-apt-state")
    return env


def loft(
    args: list[str], data_dir: Path, cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the real ``loft`` CLI."""
    return subprocess.run([LOFT, *args], cwd=cwd, env=cli_env(data_dir), capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def example(factory: pytest.TempPathFactory) -> Example:
    """The example environment, locked (and so built) with ``loft env lock`` once."""
    apt_state(factory).mkdir(exist_ok=True)
    base = factory.getbasetemp() / "loft-example"
    project, data_dir = base / "project", base / "data"
    lock_file = project / "loft.lock"
    if not lock_file.exists():
        project.mkdir(parents=True, exist_ok=True)
        (project / "loft.toml").write_text(EXAMPLE_SPEC)
        r = loft(["env", "lock"], data_dir, project)
        assert r.returncode == 0, r.stderr
    return Example(data_dir, project, lock_file, loads(lock_file.read_text()))


def store_snapshot(store: Store) -> tuple[list[str], list[str]]:
    """(valid paths, physical entries): what "store unchanged" compares."""
    return store.all_paths(), sorted(os.listdir(store.real_store_dir))


def env_run(ex: Example, *cmd: str) -> tuple[int, str, str]:
    """``loft env run loft.lock -- CMD...`` in the example project: (status, out, err)."""
    r = loft(["env", "run", "loft.lock", "--", *cmd], ex.data_dir, ex.project, timeout=120)
    return r.returncode, r.stdout, r.stderr

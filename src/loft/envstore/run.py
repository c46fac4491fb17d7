"""Run a command inside an environment: bubblewrap, the env at /usr, only its closure.

The sandbox sees ``/nix/store`` holding exactly the environment's closure (each path bound
read-only on its own, so other environments' names stay invisible), the environment at
``/usr`` with ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` pointing into it, a tmpfs ``/etc``
linking to the environment's ``etc``, a tmpfs home, fresh ``/proc``, ``/dev`` and
``/tmp``, and no network. The command's exit status is returned.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from loft.envstore import EnvstoreError
from loft.envstore.sandbox import env_argv
from loft.envstore.store import Store

__all__ = ["env_command", "run_in_env"]


def env_command(
    store: Store, env_path: str, command: list[str], *, extra_env: Mapping[str, str] | None = None
) -> list[str]:
    """The bubblewrap command line that runs ``command`` in ``env_path``."""
    if not command:
        raise EnvstoreError("no command to run", hint="loft env run ENV -- CMD...")
    closure = store.closure([env_path])  # raises InvalidPath when the env is not built
    physical = {p: store.physical(p) for p in closure}
    env_phys = physical[env_path]
    etc = env_phys / "etc"
    entries = sorted(os.listdir(etc)) if etc.is_dir() else []
    return env_argv(env_phys, physical, entries, command, extra_env=extra_env)


def run_in_env(
    store: Store,
    env_path: str,
    command: list[str],
    *,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run ``command`` in the environment, inheriting stdio; return its exit status."""
    argv = env_command(store, env_path, command, extra_env=extra_env)
    # The closure must outlive the command: a GC meanwhile keeps what this process roots.
    store.add_temp_root(env_path)
    return subprocess.run(argv, cwd=cwd, check=False).returncode

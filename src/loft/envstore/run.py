"""Run a command inside an environment: bubblewrap, the env at /usr, only its closure.

The sandbox sees ``/nix/store`` holding exactly the environment's closure (each path bound
read-only on its own, so other environments' names stay invisible), the environment at
``/usr`` with ``/bin``, ``/lib``, ``/lib64``, ``/sbin`` pointing into it, a tmpfs ``/etc``
linking to the environment's ``etc``, a tmpfs home, ``/tmp`` and ``/var/tmp``, fresh
``/dev`` and read-only ``/proc``, and no network; it runs as uid 1000, an unprivileged
host uid with no capabilities under a seccomp filter (see :mod:`loft.envstore.sandbox`).
The command's exit status is returned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from loft.envstore import EnvstoreError
from loft.envstore.sandbox import Sandbox, env_runner
from loft.envstore.store import Store

__all__ = ["env_command", "run_in_env"]


def env_command(
    store: Store, env_path: str, command: list[str], *, extra_env: Mapping[str, str] | None = None
) -> Sandbox:
    """The sandbox that runs ``command`` in ``env_path``."""
    if not command:
        raise EnvstoreError("no command to run", hint="loft env run ENV -- CMD...")
    closure = store.closure([env_path])  # raises InvalidPath when the env is not built
    etc = store.physical(env_path) / "etc"
    entries = sorted(os.listdir(etc)) if etc.is_dir() else []
    return env_runner(store.real_store_dir, env_path, closure, entries, command,
                      extra_env=extra_env)  # fmt: skip


def run_in_env(
    store: Store,
    env_path: str,
    command: list[str],
    *,
    extra_env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run ``command`` in the environment, inheriting stdio; return its exit status."""
    sandbox = env_command(store, env_path, command, extra_env=extra_env)
    # The closure must outlive the command: a GC meanwhile keeps what this process roots.
    store.add_temp_root(env_path)
    return sandbox.run(cwd=cwd, check=False).returncode

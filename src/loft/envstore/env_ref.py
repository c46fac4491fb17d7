"""What a user's reference to an environment names in the store.

``ENV`` on the command line is a store path, a lock file (its environment path) or a
profile name (its current generation): :func:`resolve_env`. Pushing or pulling a lock
needs every path it pins, read loosely from any lock-shaped JSON (entries with a
``store_path``, a legacy top-level ``env_path``), not only a ``loft.lock`` this version
writes: :func:`read_lock_paths`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loft.envstore import EnvstoreError
from loft.envstore.pathinfo import InvalidPath

if TYPE_CHECKING:
    from loft.envstore.profiles import Profiles
    from loft.envstore.store import Store

__all__ = ["read_lock_paths", "resolve_env"]


def _walk_lock(obj: object) -> Iterator[dict[str, Any]]:
    """Every dict in a lock document that names a store path."""
    if isinstance(obj, dict):
        if isinstance(obj.get("store_path"), str):
            yield obj
        for v in obj.values():
            yield from _walk_lock(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_lock(v)


def read_lock_paths(lock_file: Path) -> tuple[str | None, dict[str, str | None]]:
    """(env path or None, {store path: expected NAR hash or None}) named by a lock file."""
    try:
        doc = json.loads(lock_file.read_text())
    except (OSError, ValueError) as e:
        raise EnvstoreError(f"cannot read lock file {lock_file}: {e}") from None
    paths: dict[str, str | None] = {}
    for entry in _walk_lock(doc):
        nar_hash = entry.get("nar_hash")
        paths[entry["store_path"]] = nar_hash if isinstance(nar_hash, str) else None
    env_path: str | None = None
    if isinstance(doc, dict):
        env = doc.get("env")
        if isinstance(env, dict):
            env = env.get("store_path") or env.get("path")
        if isinstance(env, str):
            env_path = env
        elif isinstance(doc.get("env_path"), str):
            env_path = doc["env_path"]
    if env_path is not None:
        paths.setdefault(env_path, None)
    if not paths:
        raise EnvstoreError(f"lock file {lock_file} names no store paths")
    return env_path, paths


def resolve_env(store: Store, ref: str, profiles: Callable[[], Profiles]) -> str:
    """A store path from ENV: a store path, a lock file, or a profile name (current gen).

    A store path or a lock's environment must be valid in ``store``. ``profiles`` opens
    the catalog's profiles; it is called only when ``ref`` is neither a path nor a file,
    so naming a path never pays for opening the catalog.
    """
    if ref.startswith(store.store_dir + "/"):
        if not store.is_valid(ref):
            raise InvalidPath(ref)
        return ref
    if os.path.isfile(ref):
        env_path, _ = read_lock_paths(Path(ref))
        if env_path is None:
            raise EnvstoreError(f"lock file {ref} does not name an environment path")
        if not store.is_valid(env_path):
            raise InvalidPath(env_path)
        return env_path
    gen = profiles().current(ref)
    if gen is None:
        raise EnvstoreError(
            f"{ref!r} is neither a store path, a lock file nor a profile",
            hint=f"give a path under {store.store_dir}, a loft.lock, or a profile name",
        )
    return str(gen.env_path)

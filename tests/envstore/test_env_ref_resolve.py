"""ENV references: a store path, a lock file or a profile name, and the paths a lock names."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loft.catalog import Catalog
from loft.envstore import EnvstoreError
from loft.envstore.env_ref import read_lock_paths, resolve_env
from loft.envstore.pathinfo import InvalidPath
from loft.envstore.profiles import Profiles
from loft.envstore.store import Store

MISSING = "/nix/store/" + "m" * 32 + "-gone"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", durable=False)


@pytest.fixture
def profiles(tmp_path: Path) -> Iterator[Profiles]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    yield Profiles(catalog)
    catalog.close()


def add(store: Store, name: str) -> str:
    with store.tmpdir() as t:
        (t / "f").write_text(name)
        return store.add_tree(t / "f", name).path


def lock_file(tmp_path: Path, doc: object) -> Path:
    p = tmp_path / "loft.lock"
    p.write_text(json.dumps(doc))
    return p


def test_a_store_path_must_be_valid(store: Store) -> None:
    env = add(store, "env")
    # pytest.fail as the profiles: a path never opens them
    assert resolve_env(store, env, pytest.fail) == env
    with pytest.raises(InvalidPath):
        resolve_env(store, MISSING, pytest.fail)


def test_a_lock_file_names_its_environment(store: Store, tmp_path: Path) -> None:
    env, lib = add(store, "env"), add(store, "lib")
    doc = {"artefacts": [{"output": {"store_path": lib, "nar_hash": "sha256:x"}}],
           "env": {"store_path": env}}  # fmt: skip
    lock = lock_file(tmp_path, doc)
    assert resolve_env(store, str(lock), pytest.fail) == env
    assert read_lock_paths(lock) == (env, {lib: "sha256:x", env: None})
    # The legacy top-level env_path is read too; a lock without an env names none.
    assert read_lock_paths(lock_file(tmp_path, {"env_path": env})) == (env, {env: None})
    lock = lock_file(tmp_path, {"layers": [{"store_path": lib}]})
    with pytest.raises(EnvstoreError, match="does not name an environment path"):
        resolve_env(store, str(lock), pytest.fail)
    lock = lock_file(tmp_path, {"env": {"store_path": MISSING}})
    with pytest.raises(InvalidPath):
        resolve_env(store, str(lock), pytest.fail)


def test_unreadable_or_empty_locks_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.lock"
    bad.write_text("{not json")
    with pytest.raises(EnvstoreError, match="cannot read lock file"):
        read_lock_paths(bad)
    with pytest.raises(EnvstoreError, match="names no store paths"):
        read_lock_paths(lock_file(tmp_path, {"version": 1}))


def test_anything_else_is_a_profile_name(store: Store, profiles: Profiles) -> None:
    env = add(store, "env")
    profiles.switch("dev", env)
    assert resolve_env(store, "dev", lambda: profiles) == env
    with pytest.raises(EnvstoreError, match="neither a store path, a lock file nor a profile"):
        resolve_env(store, "nobody", lambda: profiles)

"""loft.lock: a deterministic, versioned JSON document that round-trips."""

from __future__ import annotations

import json

import pytest

from loft.envstore.lock import (
    LOCK_VERSION,
    Lock,
    LockedArtefact,
    LockedPath,
    LockError,
    dumps,
    loads,
)
from loft.envstore.spec import Spec


def sample() -> Lock:
    out = LockedPath("/nix/store/" + "a" * 32 + "-left-pad", "sha256:" + "0" * 52, 1234, "x")
    art = LockedArtefact(
        kind="npm", name="left-pad", version="1.3.0",
        url="https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",
        registry_hash="sha512-XI5M", file_sha256="ab" * 32, file_name="left-pad-1.3.0.tgz",
        fixed_path="/nix/store/" + "b" * 32 + "-left-pad-1.3.0.tgz", output=out,
        location="node_modules/left-pad", bin={"lp": "bin/lp.js"},
    )  # fmt: skip
    env = LockedPath("/nix/store/" + "c" * 32 + "-loft-env", "sha256:" + "1" * 52, 99, "loft-env")
    return Lock(Spec(npm=("left-pad@1.3.0",)), {"python": "3.11"}, (art,), (out,), env)


def test_round_trip_and_determinism() -> None:
    lock = sample()
    text = dumps(lock)
    assert loads(text) == lock
    assert dumps(loads(text)) == text
    doc = json.loads(text)
    assert doc["version"] == LOCK_VERSION
    # Every produced path is under "store_path" with its NAR hash, for lock consumers.
    assert doc["env"]["store_path"].endswith("-loft-env")
    assert doc["artefacts"][0]["output"]["nar_hash"].startswith("sha256:")
    assert lock.paths()[-1] == lock.env.path


def test_other_version_refused() -> None:
    doc = json.loads(dumps(sample()))
    doc["version"] = 99
    with pytest.raises(LockError, match="version 99"):
        loads(json.dumps(doc), source="x.lock")


@pytest.mark.parametrize("mutate", ["notjson", "list", "noenv", "badkind"])
def test_malformed_lock_is_one_error(mutate: str) -> None:
    doc = json.loads(dumps(sample()))
    if mutate == "notjson":
        text = "{"
    elif mutate == "list":
        text = "[]"
    elif mutate == "noenv":
        del doc["env"]
        text = json.dumps(doc)
    else:
        doc["artefacts"][0]["kind"] = "rpm"
        text = json.dumps(doc)
    with pytest.raises(LockError, match=r"^x\.lock: "):
        loads(text, source="x.lock")

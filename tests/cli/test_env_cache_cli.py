"""``loft env`` keygen/push/pull/info/gc/root/profile through the real CLI entry point."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from loft.cli.group import main
from loft.config import Settings
from loft.envstore.pathinfo import PathInfo
from loft.envstore.signing import SecretKey
from loft.envstore.store import Store


def loft(data_dir: Path, *args: str, code: int = 0) -> str:
    env = {"LOFT_DATA_DIR": str(data_dir), "LOFT_CATALOG_URL": "", "LOFT_CHUNKS": ""}
    r = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert r.exit_code == code, (args, r.output)
    return r.stdout if code == 0 else r.output  # errors: stdout and stderr together


def add(store: Store, content: bytes, name: str, refs: list[str] | None = None) -> PathInfo:
    with store.tmpdir() as t:
        (t / "x").mkdir()
        (t / "x" / "f").write_bytes(content + b" ".join(r.encode() for r in refs or []))
        return store.add_tree(t / "x", name, references_from=refs or [])


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, dict[str, PathInfo]]:
    d = tmp_path / "data"
    store = Store.open(Settings.from_env({"LOFT_DATA_DIR": str(d)}))
    lib = add(store, os.urandom(5000), "lib")
    a = add(store, b"env a ", "env-a", [lib.path])
    b = add(store, b"env b ", "env-b", [lib.path])
    junk = add(store, b"junk", "junk")
    store.clear_temp_roots()  # the CLI runs in this process: only real roots should count
    return d, {"lib": lib, "a": a, "b": b, "junk": junk}


def test_keygen_push_pull(tmp_path: Path, data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    out = loft(d, "env", "keygen", "ci-cache-1", "-o", str(tmp_path / "keys"))
    sec, pub = tmp_path / "keys/ci-cache-1.sec", tmp_path / "keys/ci-cache-1.pub"
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600 and pub.read_text() in out
    loft(d, "env", "keygen", "ci-cache-1", "-o", str(tmp_path / "keys"), code=1)

    cache = f"file://{tmp_path / 'cache'}"
    r = json.loads(loft(d, "env", "push", p["a"].path, "--to", cache, "--key", str(sec), "--json"))
    assert sorted(r["pushed"]) == sorted([p["a"].path, p["lib"].path])

    lock = tmp_path / "loft.lock"
    lock.write_text(json.dumps({"env": {"store_path": p["a"].path, "nar_hash": p["a"].nar_hash}}))
    d2 = tmp_path / "data2"
    other = SecretKey.generate("ci-cache-1").public().render()  # same name, other key
    err = loft(d2, "env", "pull", str(lock), "--from", cache, "--trust", other, code=1)
    assert "not signed by any of the trusted keys" in err and err.count("\n") <= 2
    r = json.loads(
        loft(d2, "env", "pull", str(lock), "--from", cache, "--trust", str(pub), "--json")
    )
    assert sorted(r["fetched"]) == sorted([p["a"].path, p["lib"].path])
    info = json.loads(loft(d2, "env", "info", p["a"].path, "--json"))
    assert info["closure_paths"] == 2 and info["references"][0]["path"] == p["lib"].path


def test_profiles_and_gc(data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    loft(d, "env", "profile", "dev", "switch", p["a"].path)
    loft(d, "env", "profile", "dev", "switch", p["b"].path)
    gens = json.loads(loft(d, "env", "profile", "dev", "generations", "--json"))
    assert [(g["number"], g["current"]) for g in gens] == [(1, False), (2, True)]
    assert "generation 1" in loft(d, "env", "profile", "dev", "rollback")
    assert json.loads(loft(d, "env", "info", "dev", "--json"))["path"] == p["a"].path

    dry = json.loads(loft(d, "env", "gc", "--dry-run", "--json"))
    assert dry["deleted"] == [p["junk"].path] and dry["dry_run"]
    r = json.loads(loft(d, "env", "gc", "--json"))
    assert r["deleted"] == [p["junk"].path] and r["freed_bytes"] > 0
    store = Store(d / "envstore")
    assert sorted(store.all_paths()) == sorted(x.path for k, x in p.items() if k != "junk")

    err = loft(d, "env", "info", "/nix/store/" + "a" * 32 + "-nope", code=1)
    assert "not a valid path" in err
    assert "neither a store path" in loft(d, "env", "info", "no-such-profile", code=1)
    assert "bad profile name" in loft(d, "env", "profile", "a/b", "generations", code=1)


def test_roots_keep_paths(data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    loft(d, "env", "root", "add", "ws-1", p["b"].path)
    assert json.loads(loft(d, "env", "root", "list", "--json")) == {"ws-1": p["b"].path}
    r = json.loads(loft(d, "env", "gc", "--json"))
    assert sorted(r["deleted"]) == sorted([p["a"].path, p["junk"].path])
    loft(d, "env", "root", "remove", "ws-1")
    r = json.loads(loft(d, "env", "gc", "--json"))
    assert sorted(r["deleted"]) == sorted([p["b"].path, p["lib"].path])


def test_verify(data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    assert json.loads(loft(d, "env", "verify", "--json"))["problems"] == {}
    f = Store(d / "envstore").physical(p["lib"].path) / "f"
    f.chmod(0o644)
    f.write_bytes(b"tampered")
    out = json.loads(loft(d, "env", "verify", p["a"].path, "--json", code=1))
    assert out["checked"] == 2 and list(out["problems"]) == [p["lib"].path]
    assert p["lib"].path in loft(d, "env", "verify", p["b"].path, code=1)


def test_push_and_pull_a_lock(tmp_path: Path, data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    # The shape `loft env lock` writes: store_path + nar_hash wherever a path is pinned.
    lock = tmp_path / "loft.lock"
    pin = {k: {"store_path": p[k].path, "nar_hash": p[k].nar_hash, "nar_size": 1} for k in p}
    doc = {
        "version": 1,
        "artefacts": [{"name": "lib", "fixed_path": "", "output": pin["lib"]}],
        "layers": [pin["junk"]],  # not referenced by the env: must still travel
        "env": pin["a"],
    }
    lock.write_text(json.dumps(doc))
    loft(d, "env", "keygen", "k", "-o", str(tmp_path))
    cache = f"file://{tmp_path / 'cache'}"
    loft(d, "env", "push", str(lock), "--to", cache, "--key", str(tmp_path / "k.sec"))
    d2 = tmp_path / "d2"
    pub = (tmp_path / "k.pub").read_text()
    r = json.loads(loft(d2, "env", "pull", str(lock), "--from", cache, "--trust", pub, "--json"))
    assert sorted(r["fetched"]) == sorted(p[k].path for k in ("lib", "a", "junk"))
    assert json.loads(loft(d2, "env", "info", str(lock), "--json"))["path"] == p["a"].path
    doc["env"] = {**pin["a"], "nar_hash": p["b"].nar_hash}
    lock.write_text(json.dumps(doc))
    out = loft(tmp_path / "d3", "env", "pull", str(lock), "--from", cache, "--trust", pub, code=1)
    assert "the lock expects" in out


def test_profile_prune_and_list(data: tuple[Path, dict[str, PathInfo]]) -> None:
    d, p = data
    for k in ("a", "b", "a", "b"):
        loft(d, "env", "profile", "ws", "switch", p[k].path)
    loft(d, "env", "profile", "ws", "rollback", "--to", "1")
    gone = json.loads(loft(d, "env", "profile", "ws", "prune", "--keep", "1", "--json"))
    assert [g["number"] for g in gone] == [2, 3]
    gens = json.loads(loft(d, "env", "profile", "ws", "generations", "--json"))
    assert [(g["number"], g["current"]) for g in gens] == [(1, True), (4, False)]
    assert json.loads(loft(d, "env", "profiles", "--json")) == {"ws": 1}

"""The example spec end to end with the real tools: lock, build, reproduce, share, recover."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from envbuild_support import Example, example, loft, store_snapshot
from hostile_support import serve

from loft.envstore import nar
from loft.envstore.build import Builder, Pin, build_lock, lock_spec
from loft.envstore.fetch import HashMismatch
from loft.envstore.fs import disk_usage
from loft.envstore.lock import dumps
from loft.envstore.pathinfo import format_nar_hash
from loft.envstore.progress import (
    BuildEvent,
    BytesFetched,
    TaskAdvanced,
    TasksFinished,
    TaskStarted,
)
from loft.envstore.spec import parse_spec
from loft.envstore.store import Store

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


def test_lock_pins_every_artefact(ex: Example) -> None:
    lock = ex.lock
    names = {a.name for a in lock.artefacts if a.kind == "deb"}
    # The request, the Essential set, nodejs for npm, ca-certificates: all from Debian.
    assert {"python3", "git", "curl", "dash", "coreutils", "nodejs", "ca-certificates"} <= names
    wheels = {a.name: a for a in lock.artefacts if a.kind == "wheel"}
    assert wheels["requests"].version == "2.32.3"
    assert {"certifi", "idna", "urllib3", "charset-normalizer"} <= set(wheels)
    (lp,) = [a for a in lock.artefacts if a.kind == "npm"]
    assert (lp.name, lp.version, lp.location) == ("left-pad", "1.3.0", "node_modules/left-pad")
    assert lp.registry_hash.startswith("sha512-")
    store = ex.store
    for a in lock.artefacts:
        if a.kind != "npm":
            assert a.registry_hash == f"sha256:{a.file_sha256}"
        assert a.url.startswith(("http://deb.debian.org/", "https://files.pythonhosted.org/",
                                 "https://registry.npmjs.org/"))  # fmt: skip
        info = store.query(a.output.path)
        assert info is not None and info.nar_hash == a.output.nar_hash
        assert store.is_valid(a.fixed_path)  # the store's copy is the mirror
    env = store.query(lock.env.path)
    assert env is not None and env.nar_hash == lock.env.nar_hash
    # References were found by scanning: every package the forest links to, nothing else.
    assert set(env.references) == {a.output.path for a in lock.artefacts} | {
        lp.path for lp in lock.layers
    }
    # NAR hashes in the lock are the real ones of the trees on disk.
    digest, size = nar.hash_path(store.physical(lock.env.path))
    assert (format_nar_hash(digest), size) == (lock.env.nar_hash, lock.env.nar_size)


def test_warm_build_does_nothing_fast(ex: Example) -> None:
    before = store_snapshot(ex.store)
    t0 = time.monotonic()
    env = build_lock(ex.lock, ex.store)
    assert time.monotonic() - t0 < 1.0
    assert env.path == ex.lock.env.path
    r = loft(["env", "build", "--json"], ex.data_dir, ex.project)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["env"] == ex.lock.env.path and out["seconds"] < 1.0
    assert store_snapshot(ex.store) == before


def test_two_envs_share_python(ex: Example) -> None:
    store = ex.store
    one = disk_usage(store.real_store_dir)
    lock_b = lock_spec(parse_spec('[env]\ndebian = ["python3", "jq"]\n'), store)
    two = disk_usage(store.real_store_dir)
    assert lock_b.env.path != ex.lock.env.path
    py = {a.output.path for a in ex.lock.artefacts if a.name == "python3.11-minimal"}
    assert py == {a.output.path for a in lock_b.artefacts if a.name == "python3.11-minimal"}
    assert len([n for n in os.listdir(store.real_store_dir) if "-python3.11-minimal-" in n]) == 1
    # The second environment costs jq, its libraries, new layers and a forest: not a copy.
    assert two - one < 0.1 * one, (one, two)


def test_tampered_artefact_is_named_and_store_unchanged(ex: Example, tmp_path: Path) -> None:
    (lp,) = [a for a in ex.lock.artefacts if a.kind == "npm"]
    good = ex.store.physical(lp.fixed_path).read_bytes()
    with serve() as server:  # the registry, serving a tampered tarball
        evil = replace(lp, url=server.add("left-pad-1.3.0.tgz", good[:-1] + bytes([good[-1] ^ 1])))
        # Some good artefacts around the bad one (all of them would only make the test slower).
        good_ones = [a for a in ex.lock.artefacts if a.kind == "wheel" or a.name in ("dash", "sed")]
        lock = replace(ex.lock, artefacts=(*good_ones, evil))
        store = Store(tmp_path / "envstore", durable=False)
        mirror = Store(tmp_path / "mirror", durable=False)  # empty: the tampered file is fetched
        before = store_snapshot(store)
        # The good ones come from the first store; left-pad only from the tampered URL.
        with pytest.raises(HashMismatch, match=r"npm package left-pad 1\.3\.0: .*mismatch"):
            build_lock(lock, store, mirrors=[_without(ex.store, lp.fixed_path), mirror])
        assert store_snapshot(store) == before
        # The CLI says the same in one line and exits 1.
        (tmp_path / "p").mkdir()
        (tmp_path / "p/loft.lock").write_text(dumps(replace(lock, artefacts=(evil,))))
        r = loft(["env", "build"], tmp_path / "data", tmp_path / "p")
    assert r.returncode == 1
    assert r.stderr.startswith("loft: error: npm package left-pad 1.3.0: sha256 mismatch")
    assert Store(tmp_path / "data/envstore").all_paths() == []


def test_builder_reports_its_tasks_to_the_progress_callback(ex: Example, tmp_path: Path) -> None:
    # The wheels come from the first store (a mirror); left-pad is downloaded (over
    # loopback HTTP), so there are fetched bytes to report.
    (lp,) = [a for a in ex.lock.artefacts if a.kind == "npm"]
    tgz = ex.store.physical(lp.fixed_path).read_bytes()
    wheels = [a for a in ex.lock.artefacts if a.kind == "wheel"]
    events: list[BuildEvent] = []
    builder = Builder(
        Store(tmp_path / "envstore", durable=False),
        mirrors=[_without(ex.store, lp.fixed_path)],
        progress=events.append,
    )
    with serve() as server:
        pins = [Pin.from_lock(a) for a in wheels]
        pins.append(Pin.from_lock(replace(lp, url=server.add("left-pad-1.3.0.tgz", tgz))))
        got = builder.realise(pins)
    assert [a.output.path for a in got] == [a.output.path for a in (*wheels, lp)]
    n = len(pins)
    assert events[:2] == [TaskStarted("downloading", n), TaskStarted("unpacking", n)]
    assert events[-1] == TasksFinished() and events.count(TasksFinished()) == 1
    done = [e.task for e in events if isinstance(e, TaskAdvanced)]
    assert done.count("downloading") == n and done.count("unpacking") == n
    fetched = [e.total for e in events if isinstance(e, BytesFetched)]
    assert fetched == sorted(fetched) and fetched[-1] == len(tgz)
    # Nothing left to do: no tasks at all.
    events.clear()
    assert builder.realise(pins) == got and events == []


class _without(Store):
    """A view of a store that pretends one path is missing (so it is fetched instead)."""

    def __init__(self, store: Store, hidden: str) -> None:
        super().__init__(store.root)
        self.hidden = hidden

    def is_valid(self, store_path: str) -> bool:
        return store_path != self.hidden and super().is_valid(store_path)


def test_kill_9_mid_build_then_identical_to_the_first_store(ex: Example, tmp_path: Path) -> None:
    # Artefacts come from the first store (a local mirror) to keep the test off the network;
    # every unpack, hash and composition is redone from scratch in an empty store.
    root = tmp_path / "envstore"
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from loft.envstore.build import build_lock\nfrom loft.envstore.lock import loads\n"
        "from loft.envstore.store import Store\n"
        f"lock = loads(Path({str(ex.lock_file)!r}).read_text())\n"
        f"mirror = Store(Path({str(ex.store.root)!r}))\n"
        f"build_lock(lock, Store(Path({str(root)!r})), mirrors=[mirror])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 300
    physical = root / "nix/store"
    try:
        # Paths are registered together once all are unpacked, so kill while they are
        # being moved into place (or, at the latest, while the environment is composed).
        while time.monotonic() < deadline and proc.poll() is None:
            if physical.is_dir() and len(os.listdir(physical)) >= 20:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the build finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store = Store(root)
    valid = store.all_paths()
    assert len(valid) < len(ex.lock.paths())
    for p in valid:  # every registered path is complete and hashes to what is recorded
        info = store.query(p)
        assert info is not None
        digest, size = nar.hash_path(store.physical(p))
        assert (format_nar_hash(digest), size) == (info.nar_hash, info.nar_size), p
    # Building again finishes the job, and the result is the first store's, hash for hash.
    assert build_lock(ex.lock, store, mirrors=[ex.store]).path == ex.lock.env.path
    assert set(store.all_paths()) == set(ex.lock.paths())
    assert store.unregistered_entries() == []  # leftovers of the killed build were replaced
    for p in store.all_paths():
        a, b = store.query(p), ex.store.query(p)
        assert a is not None and b is not None
        assert (a.nar_hash, a.nar_size, a.references) == (b.nar_hash, b.nar_size, b.references)


def test_lock_cli_json(ex: Example) -> None:
    r = loft(["env", "lock", "--json", "-o", "again.lock"], ex.data_dir, ex.project)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["env"] == ex.lock.env.path  # nothing moved in the archives meanwhile
    assert (ex.project / "again.lock").read_text() == ex.lock_file.read_text()

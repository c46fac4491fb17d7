"""kill -9 at random points while adding leaves no half-registered path behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loft.envstore import nar
from loft.envstore.gc import collect
from loft.envstore.pathinfo import format_nar_hash
from loft.envstore.store import Store

# The child adds trees (each referencing the previous one) and fixed files forever,
# printing each added path; the parent SIGKILLs it at a random moment.
CHILD = r"""
import hashlib, os, sys
from pathlib import Path
from loft.envstore.store import Store
store = Store(Path(sys.argv[1]))
prev = []
i = int(sys.argv[2])
while True:
    with store.tmpdir() as t:
        root = t / "tree"
        root.mkdir()
        for j in range(60):
            (root / f"f{j}").write_bytes(os.urandom(4096) + " ".join(prev).encode())
        info = store.add_tree(root, f"pkg-{i}", references_from=prev)
        blob = os.urandom(20000)
        f = t / "blob"
        f.write_bytes(blob)
        fixed = store.add_fixed_file(f, f"blob-{i}", hashlib.sha256(blob).hexdigest())
    prev = [info.path]
    print(info.path, fixed.path, flush=True)
    i += 1
"""


def check_consistent(store: Store) -> int:
    valid = store.all_paths()
    for p in valid:
        info = store.query(p)
        assert info is not None
        phys = store.physical(p)
        assert phys.exists(), f"{p} is registered but missing"
        digest, size = nar.hash_path(phys)
        assert (format_nar_hash(digest), size) == (info.nar_hash, info.nar_size), p
        for r in info.references:
            assert store.is_valid(r), f"{p} references invalid {r}"
    return len(valid)


@pytest.mark.timeout(120)
def test_kill_9_during_add_leaves_no_half_registered_path(tmp_path: Path) -> None:
    root = tmp_path / "store"
    Store(root)  # create the schema before the first child starts
    rng = random.Random(4)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    total_added = 0
    for round_ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(round_ * 1000)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        child.stdout.readline()  # at least one add completed: the child is warm
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        total_added += 1 + out.count(b"\n")
        store = Store(root)
        check_consistent(store)
        # Leftovers of the interrupted add are garbage and nothing else is touched.
        report = collect(store, extra_roots=store.all_paths())
        assert report.deleted == []
        assert store.unregistered_entries() == [] and store.stale_tmpdirs() == []
        check_consistent(store)
        store.close()
    assert total_added >= 8
    assert check_consistent(Store(root)) >= total_added


# Deterministic variants: the child kills itself at an exact step of the add protocol:
# the N-th rename into the store ("rename:N"), the flush, or the registering transaction.
FAULT_PREAMBLE = r"""
import os, signal, sys
from pathlib import Path
import loft.envstore.store as s
import loft.envstore.store_db as db
point = sys.argv[2]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if point.startswith("rename:"):
    real, n, last = os.rename, [0], int(point.split(":")[1])
    def rename(a, b):
        real(a, b)
        n[0] += 1
        if n[0] == last:
            die()
    s.os.rename = rename
elif point == "in_flush":
    s.Store._flush = die
elif point == "in_transaction":
    db.time.time = die  # only read inside the registering transaction
store = s.Store(Path(sys.argv[1]))
"""


def killed_at(root: Path, point: str, body: str) -> Store:
    """Run ``body`` after :data:`FAULT_PREAMBLE` in a child over the store at ``root``;
    it must die by SIGKILL at ``point``. Returns the store, reopened."""
    Store(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-c", FAULT_PREAMBLE + body, str(root), point]
    assert subprocess.run(argv, env=env, check=False).returncode == -signal.SIGKILL
    return Store(root)


ADD_ONE = """
with store.tmpdir() as t:
    (t / "tree").mkdir()
    (t / "tree" / "f").write_bytes(b"payload")
    store.add_tree(t / "tree", "victim")
"""


@pytest.mark.parametrize("point", ["rename:1", "in_flush", "in_transaction"])
def test_kill_at_each_step_of_add(tmp_path: Path, point: str) -> None:
    store = killed_at(tmp_path / "store", point, ADD_ONE)
    assert store.all_paths() == []
    assert len(store.unregistered_entries()) == 1  # the moved tree, never registered
    with store.tmpdir() as t:
        (t / "tree").mkdir()
        (t / "tree" / "f").write_bytes(b"payload")
        info = store.add_tree(t / "tree", "victim")
    assert store.all_paths() == [info.path] and store.unregistered_entries() == []
    assert check_consistent(store) == 1

"""Concurrent adders (threads and processes) of the same and of different paths."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from loft.envstore.pathinfo import PathInfo
from loft.envstore.store import Store


def add_same(store: Store, i: int) -> PathInfo:
    with store.tmpdir() as t:
        (t / "x").mkdir()
        for j in range(30):
            (t / "x" / f"f{j}").write_bytes(b"shared content %d" % j)
        return store.add_tree(t / "x", "shared")


def add_own(store: Store, i: int) -> PathInfo:
    with store.tmpdir() as t:
        (t / "x").mkdir()
        (t / "x" / "f").write_bytes(b"own %d" % i)
        return store.add_tree(t / "x", f"own-{i}")


@pytest.mark.timeout(60)
def test_threads_adding_the_same_and_different_paths(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", durable=False)
    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(lambda i: add_same(store, i), range(16)))
        own = list(pool.map(lambda i: add_own(store, i), range(16)))
    assert len({s.path for s in same}) == 1
    assert len({o.path for o in own}) == 16
    assert len(store.all_paths()) == 17
    assert store.verify() == {} and store.unregistered_entries() == []
    assert os.listdir(store.root / "tmp") == []


CHILD = r"""
import sys
from pathlib import Path
from loft.envstore.store import Store
store = Store(Path(sys.argv[1]), durable=False)
for i in range(10):
    with store.tmpdir() as t:
        (t / "x").mkdir()
        (t / "x" / "f").write_bytes(b"same in every process %d" % i)
        store.add_tree(t / "x", f"p{i}")
"""


@pytest.mark.timeout(60)
def test_processes_adding_the_same_paths(tmp_path: Path) -> None:
    root = tmp_path / "s"
    Store(root)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(root)], env=env) for _ in range(4)]
    assert [p.wait(timeout=50) for p in procs] == [0] * 4
    store = Store(root)
    assert len(store.all_paths()) == 10
    assert store.verify() == {} and store.unregistered_entries() == []

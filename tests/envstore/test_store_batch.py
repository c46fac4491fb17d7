"""Store.batch(): paths hashed as they are added, registered together with one flush."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_store_crash import check_consistent, killed_at

from loft.envstore.pathinfo import InvalidPath
from loft.envstore.store import Store

pytestmark = pytest.mark.timeout(60)


def tree(at: Path, content: bytes) -> Path:
    at.mkdir()
    (at / "f").write_bytes(content)
    return at


def test_batch_registers_together_with_one_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "s")
    flushes: list[int] = []
    real_flush = Store._flush

    def counting(self: Store) -> None:
        flushes.append(len(self.all_paths()))  # what is valid when the flush happens
        real_flush(self)

    monkeypatch.setattr(Store, "_flush", counting)
    blob = b"artefact bytes"
    with store.tmpdir() as t, store.batch() as b:
        infos = [b.add_tree(tree(t / f"t{i}", b"tree %d" % i), f"t{i}") for i in range(5)]
        # A referrer of a path staged earlier in the same batch.
        ref = tree(t / "ref", f"uses {infos[0].path}".encode())
        referrer = b.add_tree(ref, "referrer", references_from=[infos[0].path])
        (t / "blob").write_bytes(blob)
        fixed = b.add_fixed_file(t / "blob", "blob", hashlib.sha256(blob).hexdigest())
        # Hashed already, but nothing is visible in the store before the commit.
        assert referrer.references == (infos[0].path,)
        assert store.all_paths() == [] and os.listdir(store.real_store_dir) == []
    assert flushes == [0]  # one flush, before anything was registered
    want = {i.path for i in infos} | {referrer.path, fixed.path}
    assert set(store.all_paths()) == want
    assert store.query(referrer.path).references == (infos[0].path,)  # type: ignore[union-attr]
    assert check_consistent(store) == 7
    assert store.unregistered_entries() == [] and os.listdir(store.root / "tmp") == []


def test_a_failing_batch_adds_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", durable=False)
    with store.tmpdir() as t, pytest.raises(RuntimeError), store.batch() as b:
        b.add_tree(tree(t / "a", b"a"), "a")
        raise RuntimeError("an artefact failed")
    assert store.all_paths() == [] and os.listdir(store.real_store_dir) == []


def test_duplicates_and_valid_paths_are_registered_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", durable=False)
    with store.tmpdir() as t:
        first = store.add_tree(tree(t / "x", b"same"), "same")
    with store.tmpdir() as t, store.batch() as b:
        again = b.add_tree(tree(t / "x1", b"same"), "same")
        twice = [b.add_tree(tree(t / f"y{i}", b"twice"), "twice") for i in range(2)]
        srcs = [t / "x1", t / "y0", t / "y1"]
    assert again == first
    assert twice[0] == twice[1]
    assert set(store.all_paths()) == {first.path, twice[0].path}
    assert b.result(first.path).recipe is None and b.result(twice[0].path) == twice[0]
    assert not any(os.path.lexists(s) for s in srcs)  # every source was consumed
    assert store.unregistered_entries() == []


def test_reference_outside_store_and_batch_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", durable=False)
    with store.tmpdir() as t:
        ghost = tree(t / "ghost", b"ghost")
        ghost_path = Store(tmp_path / "other", durable=False).add_tree(ghost, "ghost").path
        with pytest.raises(InvalidPath), store.batch() as b:
            b.add_tree(tree(t / "ok", b"fine"), "ok")
            b.add_tree(tree(t / "r", ghost_path.encode()), "r", references_from=[ghost_path])
    assert store.all_paths() == []


BATCH_OF_SIX = """
with store.tmpdir() as t, store.batch() as b:
    for i in range(6):
        (t / f"t{i}").mkdir()
        (t / f"t{i}" / "f").write_bytes(b"payload %d" % i)
        b.add_tree(t / f"t{i}", f"p{i}")
"""


@pytest.mark.parametrize("point", ["rename:3", "in_flush", "in_transaction"])
def test_kill_during_a_batch_commit_registers_none_of_it(tmp_path: Path, point: str) -> None:
    store = killed_at(tmp_path / "store", point, BATCH_OF_SIX)
    assert store.all_paths() == []
    assert len(store.unregistered_entries()) == (3 if point == "rename:3" else 6)
    # The next batch of the same paths replaces the leftovers and registers everything.
    with store.tmpdir() as t, store.batch() as b:
        for i in range(6):
            b.add_tree(tree(t / f"t{i}", b"payload %d" % i), f"p{i}")
    assert len(store.all_paths()) == 6 and store.unregistered_entries() == []
    assert check_consistent(store) == 6


def test_background_writeback_while_filling_and_the_flush_still_guards_registration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import loft.envstore.batch as batch_mod

    store = Store(tmp_path / "s")
    calls: list[tuple[str, int]] = []
    real_writeback, real_flush = Store._writeback, Store._flush

    def writeback(self: Store) -> None:
        calls.append(("writeback", len(self.all_paths())))
        real_writeback(self)

    def flush(self: Store) -> None:
        calls.append(("flush", len(self.all_paths())))
        real_flush(self)

    monkeypatch.setattr(batch_mod, "WRITEBACK_BYTES", 1)
    monkeypatch.setattr(Store, "_writeback", writeback)
    monkeypatch.setattr(Store, "_flush", flush)
    with store.tmpdir() as t, store.batch() as b:
        for i in range(3):
            b.add_tree(tree(t / f"t{i}", b"tree %d" % i), f"t{i}")
    assert ("writeback", 0) in calls
    assert calls[-1] == ("flush", 0)  # the last word, before anything was registered
    assert len(store.all_paths()) == 3
    # Not durable: nothing to write back.
    calls.clear()
    quiet = Store(tmp_path / "q", durable=False)
    with quiet.tmpdir() as t, quiet.batch() as b:
        b.add_tree(tree(t / "x", b"x"), "x")
    assert [c for c, _ in calls] == ["flush"]

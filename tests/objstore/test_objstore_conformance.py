"""One conformance suite, run against every chunk store back end.

memory and file run in-process; s3 runs against a real SeaweedFS (the ``seaweedfs`` fixture).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loft.objstore import ObjectInfo, ObjectNotFound, ObjectStore, open_object_store
from loft.objstore.file import FileObjectStore
from loft.objstore.memory import MemoryObjectStore
from loft.objstore.s3 import S3ObjectStore

BACKENDS = ["memory", "file", "s3"]
MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh, empty store of each back end."""
    if request.param == "memory":
        s: ObjectStore = MemoryObjectStore.from_url(f"memory://conformance-{uuid.uuid4().hex}")
    elif request.param == "file":
        s = FileObjectStore(tmp_path / "chunks")
    else:
        s = open_object_store(request.getfixturevalue("s3_url"))
        assert isinstance(s, S3ObjectStore)
    assert isinstance(s, ObjectStore)
    try:
        yield s
    finally:
        s.close()


def payload(n: int, size: int = 100) -> bytes:
    """Distinct, non-trivial bytes for item ``n``."""
    seed = f"item-{n}-".encode()
    return (seed * (size // len(seed) + 1))[:size]


def test_put_get_roundtrip(store: ObjectStore) -> None:
    store.put("chunks/aa/aa01", b"hello world")
    assert store.get("chunks/aa/aa01") == b"hello world"


def test_get_absent_raises_chunk_not_found(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFound) as info:
        store.get("chunks/ff/missing")
    assert info.value.key == "chunks/ff/missing"


def test_get_many_absent_raises_chunk_not_found(store: ObjectStore) -> None:
    store.put("a/present", b"x")
    with pytest.raises(ObjectNotFound):
        store.get_many(["a/present", "a/absent"])


def test_stat_and_stat_many(store: ObjectStore) -> None:
    before = time.time()
    store.put("meta/one", b"12345")
    info = store.stat("meta/one")
    assert isinstance(info, ObjectInfo)
    assert info.key == "meta/one"
    assert info.size == 5
    # S3 LastModified has one-second resolution and server clocks differ a little.
    assert before - 5 <= info.mtime <= time.time() + 5
    assert store.stat("meta/absent") is None
    many = store.stat_many(["meta/one", "meta/absent"])
    assert set(many) == {"meta/one", "meta/absent"}
    assert many["meta/absent"] is None
    one = many["meta/one"]
    assert one is not None and one.size == 5


def test_touch_refreshes_mtime(store: ObjectStore) -> None:
    store.put("gc/old", b"payload")
    first = store.stat("gc/old")
    assert first is not None
    # LastModified is whole seconds on S3: wait past the next second boundary.
    time.sleep(1.2)
    assert store.touch("gc/old") is True
    second = store.stat("gc/old")
    assert second is not None
    assert second.mtime >= first.mtime + 1
    assert second.size == first.size
    assert store.get("gc/old") == b"payload"


def test_touch_absent_is_false(store: ObjectStore) -> None:
    assert store.touch("gc/absent") is False
    assert store.stat("gc/absent") is None


def test_put_many_get_many(store: ObjectStore) -> None:
    items = [(f"bulk/{i:03d}", payload(i, 1000 + i)) for i in range(50)]
    store.put_many(items)
    got = store.get_many([k for k, _ in items])
    assert got == dict(items)
    stats = store.stat_many([k for k, _ in items])
    assert {k: s.size for k, s in stats.items() if s is not None} == {k: len(v) for k, v in items}


def test_many_with_empty_input(store: ObjectStore) -> None:
    store.put_many([])
    assert store.get_many([]) == {}
    assert store.stat_many([]) == {}
    store.delete_many([])


def test_delete_many(store: ObjectStore) -> None:
    items = [(f"del/{i}", payload(i)) for i in range(10)]
    store.put_many(items)
    store.delete_many(["del/0", "del/1", "del/never-existed", "del/1"])
    assert store.stat("del/0") is None
    assert store.stat("del/1") is None
    with pytest.raises(ObjectNotFound):
        store.get("del/0")
    assert sorted(o.key for o in store.list("del/")) == [f"del/{i}" for i in range(2, 10)]
    store.delete_many([k for k, _ in items])
    assert list(store.list("del/")) == []


def test_list_returns_only_the_prefix(store: ObjectStore) -> None:
    store.put_many([(f"chunks/{i}", payload(i, 10 + i)) for i in range(5)])
    store.put_many([(f"heads/{i}", payload(i)) for i in range(3)])
    store.put("chunksx", b"not under chunks/")
    listed = {o.key: o for o in store.list("chunks/")}
    assert set(listed) == {f"chunks/{i}" for i in range(5)}
    assert all(listed[f"chunks/{i}"].size == 10 + i for i in range(5))
    assert {o.key for o in store.list("heads/")} == {f"heads/{i}" for i in range(3)}
    assert {o.key for o in store.list("chunks")} == set(listed) | {"chunksx"}
    assert list(store.list("nothing/")) == []


def test_list_many_objects(store: ObjectStore) -> None:
    items = [(f"many/{i:05d}", b"") for i in range(150)]
    store.put_many(items)
    assert sorted(o.key for o in store.list("many/")) == [k for k, _ in items]
    store.delete_many([k for k, _ in items])
    assert list(store.list("many/")) == []


def test_s3_list_follows_pages(s3_url: str) -> None:
    # A small page size makes the paginator cross page boundaries without 1000s of objects.
    base = open_object_store(s3_url)
    assert isinstance(base, S3ObjectStore)
    store = S3ObjectStore(base.bucket, base.prefix, endpoint=base.endpoint, list_page_size=7)
    try:
        keys = [f"p/{i:03d}" for i in range(40)]
        store.put_many([(k, b"v") for k in keys])
        assert sorted(o.key for o in store.list("p/")) == keys
    finally:
        store.close()
        base.close()


def test_overwrite_is_atomic(store: ObjectStore) -> None:
    old, new = b"A" * (2 * MIB), b"B" * (2 * MIB)
    store.put("atomic/x", old)
    seen: list[bytes] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(store.get("atomic/x"))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(6):
            store.put("atomic/x", new if i % 2 == 0 else old)
    finally:
        stop.set()
        t.join(timeout=60)
    store.put("atomic/x", new)
    assert store.get("atomic/x") == new
    assert seen, "the reader never completed a get"
    assert all(v in (old, new) for v in seen), "a reader saw a torn value"


def test_nested_slashes_in_keys(store: ObjectStore) -> None:
    # (No key is also a "directory" of another key: the file store cannot hold both.)
    keys = ["a/b/c/d/e/f", "a/b/c/g", "a/bc", "x/y/z.bin"]
    store.put_many([(k, k.encode()) for k in keys])
    assert store.get_many(keys) == {k: k.encode() for k in keys}
    assert {o.key for o in store.list("a/b/")} == {"a/b/c/d/e/f", "a/b/c/g"}
    assert {o.key for o in store.list("a/b")} == {"a/b/c/d/e/f", "a/b/c/g", "a/bc"}
    assert {o.key for o in store.list("a/b/c/d/")} == {"a/b/c/d/e/f"}


def test_empty_value(store: ObjectStore) -> None:
    store.put("empty", b"")
    assert store.get("empty") == b""
    info = store.stat("empty")
    assert info is not None and info.size == 0


def test_five_mib_value(store: ObjectStore) -> None:
    value = os.urandom(5 * MIB + 123)
    store.put("big/extent", value)
    assert store.get("big/extent") == value
    info = store.stat("big/extent")
    assert info is not None and info.size == len(value)


def test_store_has_url_that_reopens_it(store: ObjectStore) -> None:
    store.put("reopen/k", b"v")
    again = open_object_store(store.url)
    try:
        assert again.get("reopen/k") == b"v"
    finally:
        if again is not store:
            again.close()

"""A metered object store counts each operation and the bytes it moves, and is the
store it wraps otherwise (the conformance of the wrapped store is its own suite's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loft.objstore import ObjectNotFound, open_object_store
from loft.objstore.metered import MeteredStore
from loft.telemetry import Meter


def test_every_operation_is_counted_with_its_bytes(tmp_path: Path) -> None:
    meter = Meter()
    store = MeteredStore(open_object_store(f"file://{tmp_path}"), meter)
    store.put("a", b"x" * 100)
    store.put_many([("b", b"y" * 50), ("c", bytearray(b"z" * 25))])
    assert store.get("a") == b"x" * 100
    assert store.get_many(["b", "c"]) == {"b": b"y" * 50, "c": b"z" * 25}
    assert store.stat("a") is not None and store.touch("a")
    assert sorted(i.key for i in store.list("")) == ["a", "b", "c"]
    store.delete_many(["a"])
    with pytest.raises(ObjectNotFound):
        store.get("a")  # a failure is timed too
    report = meter.report()
    counts = {op.op: op.count for op in report.latency}
    assert counts == {
        "put": 1,
        "put_many": 1,
        "get": 2,
        "get_many": 1,
        "stat": 1,
        "touch": 1,
        "list": 1,
        "delete_many": 1,
    }
    assert {b.direction: b.bytes for b in report.bytes} == {"up": 175, "down": 175}
    assert store.url == f"file://{tmp_path}"
    store.close()

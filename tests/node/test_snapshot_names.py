"""Names the agent gives snapshots nobody named."""

from __future__ import annotations

import pytest

from loft.node import snapshots


def test_automatic_snapshot_names_never_collide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two snapshots nobody named, taken in the same second (two forks of one running
    workspace), get different names: the second once failed as "name taken"."""
    taken: set[str] = set()
    monkeypatch.setattr(snapshots, "_exists", lambda wss, ws, name: name in taken)
    monkeypatch.setattr(snapshots.time, "strftime", lambda fmt, t: "20261204-225757")
    names = []
    for _ in range(3):
        name = snapshots._auto_name(None, None, "fork-")  # type: ignore[arg-type]
        taken.add(name)
        names.append(name)
    assert names == ["fork-20261204-225757", "fork-20261204-225757-2", "fork-20261204-225757-3"]

"""A fork from a named snapshot and a removal of that snapshot, at once: the removal
waits until the fork has its volume (the source's lock covers the whole fork), so it
never pulls the snapshot from under it. The node around the two flows is a stand-in
that records what happens when; the flows and the lock are the agent's own."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from loft.node import snapshots
from loft.node.workspaces import Workspaces


@dataclass
class _Node:
    """What the two flows touch of a node: a workspace with one snapshot, its lock,
    and a fork that checks its snapshot is still there once its volume is made."""

    snaps: set[str] = field(default_factory=lambda: {"s1"})
    events: list[str] = field(default_factory=list)
    remover: threading.Thread | None = None
    _locks: dict[str, threading.RLock] = field(default_factory=dict)
    _table: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.ws = SimpleNamespace(
            record=SimpleNamespace(
                id="w1", name="src", volume="ws-w1", profile="ws-w1", runtime="sandbox"
            )
        )
        self.records = SimpleNamespace(
            snapshot_memories=lambda _id: {},
            snapshot_envs=lambda _id: {s: "/nix/store/env" for s in self.snaps},
            remove_snapshot=lambda _id, snap: self.events.append(f"row {snap} removed"),
        )
        self.disk = SimpleNamespace(remove_snapshot=self._remove_volume_snapshot)
        self.envs = SimpleNamespace(current=lambda _profile: None)

    def locked(self, workspace_id: str) -> AbstractContextManager[bool]:
        self._locks.setdefault(workspace_id, threading.RLock())
        return Workspaces.locked(cast(Workspaces, self), workspace_id)

    def get(self, workspace_id: str) -> Any:
        return self.ws

    def fresh(self, ws: Any) -> Any:
        return ws

    def _remove_volume_snapshot(self, volume: str, snap: str) -> None:
        self.snaps.discard(snap)
        self.events.append(f"snapshot {snap} removed")

    def new(self, target_id: str, *, volume_from: str, **_: object) -> Any:
        """The fork's volume: made from the snapshot, while a removal is under way."""
        snap = volume_from.split("@", 1)[1]
        self.remover = threading.Thread(target=snapshots.remove, args=(self, "w1", snap))
        self.remover.start()
        self.remover.join(0.5)  # a removal that does not wait has finished by now
        self.events.append(f"fork from {snap}: {'made' if snap in self.snaps else 'GONE'}")
        return target_id


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Node]:
    n = _Node()
    monkeypatch.setattr(snapshots, "_exists", lambda wss, ws, name: name in n.snaps)
    yield n
    if n.remover is not None:
        n.remover.join(10)


@pytest.mark.timeout(30)
def test_a_removal_waits_for_a_fork_from_its_snapshot(node: _Node) -> None:
    assert snapshots.fork(cast(Workspaces, node), "w1", "w2", "s1") == "w2"
    assert node.remover is not None
    node.remover.join(10)
    assert node.events == ["fork from s1: made", "snapshot s1 removed", "row s1 removed"]

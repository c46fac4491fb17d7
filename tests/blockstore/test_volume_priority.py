"""A commit's threads run as background work (niceness and I/O priority, read back from
the kernel), while the thread that writes and the chunk-store transfers a client's read
asks for keep their priority."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from bsfixtures import EXTENT, Deployment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_priority import BACKGROUND_STATE, thread_state

pytestmark = pytest.mark.timeout(60)


def states(prefix: str) -> dict[str, tuple[int, int, int]]:
    """The kernel's view of every live thread whose name starts with ``prefix``."""
    return {
        t.name: thread_state(t.native_id)
        for t in threading.enumerate()
        if t.name.startswith(prefix) and t.native_id is not None
    }


def test_volume_commit_threads_run_in_the_background(
    deployment_of: Callable[[str], Deployment],
) -> None:
    dep = deployment_of("sqlite-file")
    dep.chunk_cache_bytes = 0  # a fresh node's read goes to the chunk store
    bs = dep.node("a")
    bs.create("p", size=8 * EXTENT, extent_size=EXTENT)
    me = thread_state()
    vol = bs.open("p")
    data = random.Random(3).randbytes(4 * EXTENT)
    vol.write(0, data)
    vol.commit()
    committer = states("volume-p")
    hashers = states("blockstore")
    uploaders = states("filestore-bg")
    assert committer and hashers and uploaders
    for name, state in {**committer, **hashers, **uploaders}.items():
        assert state == BACKGROUND_STATE, name
    assert thread_state() == me  # the writer's own thread is untouched
    vol.close()

    fresh = dep.node("b").open("p")
    try:
        assert fresh.read(0, 4 * EXTENT) == data  # fetched in parallel: a transfer pool
    finally:
        fresh.close()
    foreground = {n: s for n, s in states("filestore_").items()}
    assert foreground, "the fetch used no transfer pool"
    assert set(foreground.values()) == {me}

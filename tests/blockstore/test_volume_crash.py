"""Crash safety: a writer process is SIGKILLed at random moments, then the volume is checked.

The child (crash_writer.py) logs every write before issuing it and every flush after it
returns. After the kill the checker replays the log and verifies:

- node lost: a fresh node (empty data dir) sees the remote head as exactly a state the
  disk had - never a mixture, so a write B into an extent already dirty with a flushed
  write A never shows up without A. With ``remote`` durability it is the state at the
  last acknowledged flush (or the one in flight); with ``local``, whose commits capture
  the disk when their interval is up, the state after some write (or the initial state);
- same node back: after recovery the volume holds every write acknowledged before the last
  completed flush and equals a state the disk had at or after that flush (the writes in
  flight applied in order, the last of them possibly in part);
- node lost for real (a new node takes the lease from an empty data dir), then the old node
  returns: the new node sees a flush state; the old working copy is kept as the orphan fork
  ``NAME.orphan-<epoch>``, which holds every acknowledged write.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from bsfixtures import EXTENT, Deployment
from crash_writer import LEASE_MARGIN, LEASE_TTL, pattern

from loft.blockstore import Blockstore, Volume, VolumeBusy

HERE = Path(__file__).resolve().parent
SIZE = 8 * EXTENT
MIN_FLUSHES = 4


@dataclass
class Replay:
    """What the log says the writer did."""

    flush_hashes: list[str]  # index 0 is the initial (all-zero) state
    write_hashes: list[str]  # the state after each write issued, in order
    last_flushed: bytes  # the state at the last acknowledged flush
    tail: list[tuple[int, bytes]]  # writes issued after it, in order (the last maybe not)

    def tail_applied(self) -> bytes:
        state = bytearray(self.last_flushed)
        for off, data in self.tail:
            state[off : off + len(data)] = data
        return bytes(state)


def replay(log: str) -> Replay:
    state = bytearray(SIZE)
    hashes = [_sha(state)]
    writes: list[str] = []
    last = bytes(state)
    tail: list[tuple[int, bytes]] = []
    for line in log.splitlines():
        parts = line.split()
        if not parts or parts[0] == "R":
            continue
        if parts[0] == "W":
            off, length, seed = (int(p) for p in parts[1:4])
            data = pattern(seed, length)
            state[off : off + length] = data
            writes.append(_sha(state))
            tail.append((off, data))
        elif parts[0] == "F":
            assert _sha(state) == parts[2], "replay disagrees with the writer"
            hashes.append(parts[2])
            last = bytes(state)
            tail = []
    return Replay(hashes, writes, last, tail)


def _sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def at_or_after_last_flush(got: bytes, rep: Replay) -> bool:
    """``got`` is the last flushed state with the first j in-flight writes applied and the
    (j+1)-th applied in part (any subset of its bytes), for some j."""
    cur = bytearray(rep.last_flushed)
    for off, data in [*rep.tail, (0, b"")]:
        if got == cur:
            return True
        end = off + len(data)
        if data and got[:off] == cur[:off] and got[end:] == cur[end:]:
            window, old = got[off:end], cur[off:end]
            if all(g in (o, d) for g, o, d in zip(window, old, data, strict=True)):
                return True
        cur[off:end] = data
    return False


def run_writer(dep: Deployment, name: str, log: Path, seed: int, kill_after: float) -> str:
    """Start the writer on node a; SIGKILL it ``kill_after`` s after it acknowledged
    MIN_FLUSHES flushes (a count, not a time: flushes are slow on a busy machine)."""
    env = {**os.environ, **dep.env("a")}
    errs = log.with_suffix(".err")
    with open(errs, "wb") as err:
        child = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), name, str(log), str(seed)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and log.read_text().count("\nF ") >= MIN_FLUSHES):
            assert child.poll() is None, f"writer died: {errs.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "writer never got going"
            time.sleep(0.02)
        time.sleep(kill_after)
        assert child.poll() is None, f"writer died before the kill: {errs.read_text()[-2000:]}"
        child.kill()
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
    return log.read_text()


def open_when_free(bs: Blockstore, name: str, timeout: float = 30.0) -> Volume:
    """Open the volume, retrying while the killed writer's lease has not yet expired."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return bs.open(name, lease_ttl=LEASE_TTL, lease_margin=LEASE_MARGIN)
        except VolumeBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_all(vol: object) -> bytes:
    read = vol.read  # type: ignore[attr-defined]
    return b"".join(read(off, min(4 * EXTENT, SIZE - off)) for off in range(0, SIZE, 4 * EXTENT))


TRIALS = [
    # (catalog+store, durability, kill after s, node-lost mode)
    ("sqlite-file", "local", 0.3, "view"),
    ("sqlite-file", "local", 0.55, "takeover"),
    ("sqlite-file", "remote", 0.2, "view"),
    ("pg-s3", "local", 0.45, "view"),
    ("pg-s3", "remote", 0.15, "takeover"),
    ("sqlite-s3", "local", 0.25, "takeover"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("kind", "durability", "kill_after", "mode"), TRIALS)
def test_crash_trial(
    kind: str,
    durability: str,
    kill_after: float,
    mode: str,
    deployment_of: Callable[[str], Deployment],
    tmp_path: Path,
) -> None:
    dep = deployment_of(kind)
    seed = random.Random(f"{kind}-{durability}-{kill_after}").getrandbits(32)
    name = "crashy"
    admin = dep.node("admin")
    admin.create(name, size=SIZE, extent_size=EXTENT, durability=durability, commit_interval=0.05)
    log_text = run_writer(dep, name, tmp_path / "writer.log", seed, kill_after)
    rep = replay(log_text)
    assert len(rep.flush_hashes) > MIN_FLUSHES
    in_flight_flush = _sha(rep.tail_applied())

    if mode == "view":
        # Node lost: a fresh node sees the remote head alone.
        fresh = dep.node("b")
        head = read_all(fresh.view(name))
        _check_flush_state(head, rep, durability, in_flight_flush)
        # The node comes back: recovery keeps every acknowledged write.
        vol = open_when_free(dep.node("a"), name)
        got = read_all(vol)
        assert at_or_after_last_flush(got, rep), "recovered volume lost acknowledged writes"
        vol.close()
        # What recovery committed is what a third node now sees.
        assert read_all(dep.node("c").view(name)) == got
    else:
        # Node lost for real: node b takes the lease with an empty data dir.
        vol_b = open_when_free(dep.node("b"), name)
        head = read_all(vol_b)
        _check_flush_state(head, rep, durability, in_flight_flush)
        old_epoch = vol_b.record.epoch - 1
        vol_b.close()
        # Node a returns and opens the volume: its stale working copy becomes an orphan.
        node_a = dep.node("a")
        vol_a = open_when_free(node_a, name)
        assert read_all(vol_a) == head, "a stale working copy was merged into the volume"
        vol_a.close()
        orphan = f"{name}.orphan-{old_epoch}"
        names = {v.name for v in admin.volumes()}
        # No orphan: nothing was dirty on node a, everything acknowledged was committed.
        got = read_all(node_a.view(orphan)) if orphan in names else head
        assert at_or_after_last_flush(got, rep), "acknowledged writes lost with the old node"


def _check_flush_state(head: bytes, rep: Replay, durability: str, in_flight: str) -> None:
    h = _sha(head)
    if durability == "remote":
        allowed = {rep.flush_hashes[-1], in_flight}
        assert h in allowed, "remote durability: the head is not the last acknowledged flush"
    else:
        assert h in set(rep.flush_hashes) | set(rep.write_hashes), (
            "the remote head is not a state the disk had (a mixture of writes)"
        )

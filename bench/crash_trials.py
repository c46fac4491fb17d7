"""Does a SIGKILL ever lose a flushed write or expose a state the disk never had?

Each trial forks a writer (from a forkserver that has loft imported, so a trial costs
milliseconds, not an interpreter start) that opens a small volume (4 MiB, 64 KiB extents)
and runs a deterministic, seeded stream of unaligned writes, zeroes, whole-extent trims,
FUA writes and flushes, appending the index of every completed operation to a log file.
After a random delay the parent SIGKILLs it and checks, against an in-memory model that
replays the same stream:

1. **remote** — the volume's committed head, read on a node with an empty data dir (no
   working copy, no chunk cache), equals *exactly* a state the disk had: in ``remote``
   durability the state at some flush point that was reached, at or after the last
   flush that returned; in ``local`` durability the state after some operation (its
   commits are taken when ``commit_interval`` is up, of the disk at that instant), the
   one in flight applied whole included, or the state the trial started from. So a
   write B never appears without a write A completed before it.
2. **local** — the same node reopens the volume (recovery: non-dirty extents discarded
   and refetched, dirty ones committed): every operation acknowledged is present and the
   volume equals the state after the last acknowledged operation — or, when the kill hit
   an operation in flight, that state with the in-flight write applied wholly or torn
   (each 4 KiB page old or new, nothing outside its range changed), which is what a
   disk may show for a write it never acknowledged.

The verified state is where the next trial starts (the reopened volume is closed
cleanly, committing it). Volumes use ``local`` durability with a 20 ms commit interval
(so kills land in commits) and ``remote`` durability, in separate lanes that run in
parallel. The SIGKILLed writer's lease is released by the parent, as the node agent
restarting on the same machine would (it knows its own holder id), so the check does not
wait out a lease.

Write-behind (``blockstore/writebehind.py``) hands a span to its thread every 256 KiB of
large writes here, so that thread runs in every trial. The kernel's writeback it starts
cannot change what a SIGKILL leaves, and on tmpfs there is none; what the trials check
is that the write path around it acknowledges nothing it should not.

All state lives on tmpfs by default (``--dir`` to change): SIGKILL does not lose the
page cache, so fsync latency would only slow the trials down, not change what they test.

    .venv/bin/python bench/crash_trials.py [--quick] [--trials 1000] [--lanes 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KIB, MIB, emit, log
from loft.blockstore import writebehind
from loft.blockstore.api import Blockstore
from loft.blockstore.context import BlockstoreContext
from loft.blockstore.holder import new_holder_id
from loft.blockstore.volume import open_volume
from loft.config import Settings

SIZE = 4 * MIB
EXTENT = 64 * KIB
PAGE = 4 * KIB
READY = -1
_REC = struct.Struct("<i")


# -- the operation stream (the child runs it, the parent replays it) ---------------------


@dataclass(frozen=True, slots=True)
class Op:
    kind: str  # write | fua | zero | trim | flush
    offset: int = 0
    length: int = 0
    data: bytes = b""


def ops(seed: int) -> Iterator[Op]:
    """An endless deterministic stream of operations."""
    rng = random.Random(seed)
    while True:
        r = rng.random()
        if r < 0.18:
            yield Op("flush")
            continue
        if r < 0.26:
            first = rng.randrange(SIZE // EXTENT)
            n = rng.randint(1, 3)
            length = min(n, SIZE // EXTENT - first) * EXTENT
            yield Op("trim", first * EXTENT, length)
            continue
        # Mostly small and unaligned; sometimes across extent boundaries.
        length = rng.choice((1, 511, 4096, 5000, 20000, 65536, 100000, 150000))
        offset = rng.randrange(0, SIZE - length + 1)
        if r < 0.34:
            yield Op("zero", offset, length)
        else:
            yield Op("fua" if r < 0.40 else "write", offset, length, rng.randbytes(length))


def apply(state: bytearray, op: Op) -> None:
    if op.kind in ("write", "fua"):
        state[op.offset : op.offset + op.length] = op.data
    elif op.kind in ("zero", "trim"):
        state[op.offset : op.offset + op.length] = bytes(op.length)


# -- the child -----------------------------------------------------------------------------


def child_main(settings: Settings, name: str, holder: str, seed: int, log_path: str) -> None:
    """Open the volume and run the stream until killed; log each completed operation."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    # Write-behind every 256 KiB of large writes instead of every 32 MiB, so its thread
    # runs (and gets killed) in every trial, not never on a 4 MiB volume.
    writebehind.WRITE_BEHIND_BYTES = 256 * KIB
    ctx = BlockstoreContext.open(settings)
    vol = open_volume(ctx, name, holder=holder)
    os.write(fd, _REC.pack(READY))
    for i, op in enumerate(ops(seed)):
        if op.kind == "write":
            vol.write(op.offset, op.data)
        elif op.kind == "fua":
            vol.write(op.offset, op.data, fua=True)
        elif op.kind == "zero":
            vol.zero(op.offset, op.length)
        elif op.kind == "trim":
            vol.trim(op.offset, op.length)
        else:
            vol.flush()
        os.write(fd, _REC.pack(i))
        if op.kind in ("flush", "fua"):
            # A real disk client is not a tight loop: let the commit worker run, so kills
            # land before, during and after commits.
            time.sleep(0.002)


# -- the parent ----------------------------------------------------------------------------


@dataclass
class LaneResult:
    durability: str
    trials: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    ops_acked: int = 0
    flushes_acked: int = 0
    killed_before_ready: int = 0
    inflight_torn: int = 0
    inflight_applied: int = 0
    remote_at_last_flush: int = 0
    remote_behind_last_flush: int = 0
    remote_ahead_of_last_flush: int = 0
    remote_initial: int = 0
    #: heads at a point the volume made (local durability), not at a flush
    remote_between_flushes: int = 0
    phase_seconds: dict[str, float] = field(
        default_factory=lambda: {"start": 0.0, "run": 0.0, "kill": 0.0, "check": 0.0}
    )

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["failures"] = self.failures[:10]
        d["phase_seconds"] = {k: round(v, 1) for k, v in self.phase_seconds.items()}
        d["failure_count"] = len(self.failures)
        return d


def read_log(path: Path) -> tuple[bool, int]:
    """(ready, index of the last completed operation or -1)."""
    raw = path.read_bytes() if path.exists() else b""
    n = len(raw) // _REC.size
    recs = [_REC.unpack_from(raw, i * _REC.size)[0] for i in range(n)]
    if not recs:
        return False, -1
    return True, recs[-1]


def torn_ok(got: bytes, before: bytes | bytearray, after: bytes | bytearray, op: Op) -> bool:
    """Outside the op's range nothing changed; inside, each page is old or new."""
    lo, hi = op.offset, op.offset + op.length
    if got[:lo] != before[:lo] or got[hi:] != before[hi:]:
        return False
    pos = lo
    while pos < hi:
        end = min(hi, (pos // PAGE + 1) * PAGE)
        g = got[pos:end]
        if g != before[pos:end] and g != after[pos:end]:
            return False
        pos = end
    return True


class Lane:
    """One volume, its node dir, and a sequence of trials on it."""

    def __init__(
        self,
        idx: int,
        durability: str,
        root: Path,
        catalog_url: str,
        chunks_url: str,
        mpctx: Any,
        max_delay: float,
    ) -> None:
        self.name = f"crash{idx}"
        self.dir = root / f"lane{idx}"
        self.settings = Settings(
            data_dir=self.dir / "node",
            chunks_url=chunks_url,
            catalog_url=catalog_url,
            cache_bytes=1 << 30,
            chunk_cache_bytes=64 * MIB,
        )
        # The "node lost" view: its own empty data dir and no chunk cache.
        remote_settings = Settings(
            data_dir=self.dir / "empty-node",
            chunks_url=chunks_url,
            catalog_url=catalog_url,
            cache_bytes=1 << 30,
            chunk_cache_bytes=0,
        )
        self.local = Blockstore(BlockstoreContext.open(self.settings))
        self.remote = Blockstore(BlockstoreContext.open(remote_settings))
        self.local.create(
            self.name,
            size=SIZE,
            extent_size=EXTENT,
            durability=durability,
            commit_interval=0.02,
        )
        self.model = bytearray(SIZE)
        self.mpctx = mpctx
        self.max_delay = max_delay
        self.result = LaneResult(durability)
        self.rng = random.Random(1000 + idx)

    def close(self) -> None:
        self.local.close()
        self.remote.close()

    def trial(self, t: int) -> None:
        seed = self.rng.getrandbits(48)
        holder = new_holder_id()
        log_path = self.dir / "ops.log"
        log_path.unlink(missing_ok=True)
        p = self.mpctx.Process(
            target=child_main, args=(self.settings, self.name, holder, seed, str(log_path))
        )
        t0 = time.monotonic()
        p.start()
        # Mostly kill a while after the volume is open; sometimes while it is opening.
        early = self.rng.random() < 0.03
        if not early:
            deadline = time.monotonic() + 20
            while not read_log(log_path)[0]:
                if time.monotonic() > deadline or not p.is_alive():
                    break
                time.sleep(0.002)
        t1 = time.monotonic()
        time.sleep(self.rng.uniform(0, self.max_delay))
        t2 = time.monotonic()
        p.kill()
        p.join()
        t3 = time.monotonic()
        ready, last = read_log(log_path)
        self.check(t, seed, holder, ready, last)
        phases = self.result.phase_seconds
        for k, v in (("start", t1 - t0), ("run", t2 - t1), ("kill", t3 - t2)):
            phases[k] += v
        phases["check"] += time.monotonic() - t3

    def check(self, t: int, seed: int, holder: str, ready: bool, last: int) -> None:
        res = self.result
        res.trials += 1
        if not ready:
            res.killed_before_ready += 1
        # 1. The remote head alone, read on a node that has nothing of this volume.
        view = self.remote.view(self.name)
        remote = view.read(0, SIZE)
        view.close()

        # Replay the stream: the state after every acknowledged op, compared with the
        # remote head (memcmp, no hashing) wherever a commit may have been taken: at
        # every flush point (and the initial state); in local durability after any op.
        any_op = res.durability == "local"
        state = bytearray(self.model)
        at: int | None = -1 if state == remote else None
        at_flush = True
        last_flush = -1
        inflight: Op | None = None
        stream = ops(seed)
        for i in range(last + 2):
            op = next(stream)
            flush = op.kind in ("flush", "fua")
            if i == last + 1:
                inflight = op
                if flush or any_op:
                    # An op in flight may have been captured and committed already.
                    after = bytearray(state)
                    apply(after, op)
                    if after == remote:
                        at, at_flush = i, flush
                break
            apply(state, op)
            if flush:
                last_flush = i
                res.flushes_acked += 1
            if (flush or any_op) and state == remote:
                at, at_flush = i, flush
        res.ops_acked += last + 1
        acked = bytes(state)

        failure: dict[str, Any] | None = None
        if at is None:
            failure = {"check": "remote", "why": "head equals no state the disk had"}
        elif res.durability == "remote" and at < last_flush:
            failure = {"check": "remote", "why": f"head at op {at}, last flush {last_flush}"}
        elif at == -1:
            res.remote_initial += 1
        elif not at_flush:
            res.remote_between_flushes += 1
        elif at == last_flush:
            res.remote_at_last_flush += 1
        elif at < last_flush:
            res.remote_behind_last_flush += 1
        else:
            res.remote_ahead_of_last_flush += 1

        # 2. The same node restarts: release the dead writer's lease, reopen, read.
        rec = self.local.heads.get(self.name)
        self.local.heads.release(rec.id, rec.epoch, holder)
        vol = self.local.open(self.name)
        local = vol.read(0, SIZE)
        vol.close()
        if local != acked and failure is None:
            ok = False
            if inflight is not None and inflight.kind in ("write", "fua", "zero", "trim"):
                after = bytearray(acked)
                apply(after, inflight)
                if local == after:
                    ok = True
                    res.inflight_applied += 1
                elif torn_ok(local, acked, after, inflight):
                    ok = True
                    res.inflight_torn += 1
            if not ok:
                diff = next(i for i in range(SIZE) if local[i] != acked[i])
                failure = {
                    "check": "local",
                    "why": "reopened volume differs from the acknowledged state",
                    "first_diff_offset": diff,
                    "inflight": None if inflight is None else inflight.kind,
                }
        if failure is not None:
            failure.update({"trial": t, "seed": seed, "last_op": last, "last_flush": last_flush})
            res.failures.append(failure)
            log(f"FAILURE {self.name}: {failure}")
        # The next trial starts from what the volume now holds (committed by close()).
        self.model = bytearray(local)


def run(trials: int, lanes: int, root: Path, max_delay: float) -> dict[str, Any]:
    mpctx = mp.get_context("forkserver")
    mpctx.set_forkserver_preload(
        ["loft.blockstore.api", "loft.blockstore.volume", "sqlalchemy", "alembic", "_common"]
    )
    catalog_url = f"sqlite:///{root / 'catalog.db'}"
    chunks_url = f"file://{root / 'chunks'}"
    durabilities = ["local", "remote"]
    all_lanes = [
        Lane(i, durabilities[i % 2], root, catalog_url, chunks_url, mpctx, max_delay)
        for i in range(lanes)
    ]
    shares = [trials // lanes + (1 if i < trials % lanes else 0) for i in range(lanes)]
    errors: list[BaseException] = []

    def drive(lane: Lane, n: int) -> None:
        try:
            for t in range(n):
                lane.trial(t)
                if (t + 1) % 100 == 0:
                    log(f"{lane.name} ({lane.result.durability}): {t + 1}/{n} trials")
        except BaseException as e:
            errors.append(e)
            raise

    started = time.monotonic()
    threads = [
        threading.Thread(target=drive, args=(lane, n))
        for lane, n in zip(all_lanes, shares, strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - started
    for lane in all_lanes:
        lane.close()
    if errors:
        raise errors[0]
    results = [lane.result for lane in all_lanes]
    done = sum(r.trials for r in results)
    return {
        "trials": done,
        "failures": sum(len(r.failures) for r in results),
        "seconds": round(elapsed, 1),
        "trials_per_second": round(done / elapsed, 2),
        "lanes": [r.as_dict() for r in results],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 trials")
    parser.add_argument("--trials", type=int, default=0, help="total trials (default 1000)")
    parser.add_argument("--lanes", type=int, default=2, help="volumes tested in parallel")
    parser.add_argument("--max-delay", type=float, default=0.5, help="kill delay bound, s")
    parser.add_argument("--dir", default="/dev/shm", help="where the temp state lives")
    args = parser.parse_args()
    trials = args.trials or (100 if args.quick else 1000)
    base = args.dir if os.path.isdir(args.dir) else None
    with tempfile.TemporaryDirectory(prefix="loft-crash-", dir=base) as tmp:
        out = run(trials, args.lanes, Path(tmp), args.max_delay)
    report = {
        "benchmark": "crash_trials",
        "question": "SIGKILL trials: flushed writes lost or mixed states exposed (must be 0)",
        "volume": {"size": SIZE, "extent_size": EXTENT},
        "state_dir": "tmpfs" if base == "/dev/shm" else (base or tempfile.gettempdir()),
        **out,
        "goal_zero_failures": out["failures"] == 0,
    }
    emit(report)
    return 0 if out["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

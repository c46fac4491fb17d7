"""Are snapshot and fork constant-time in the volume's size?

For volumes of 1 GiB and 1 TiB (thin: a 1 TiB volume costs nothing until written), each
holding 256 MiB of committed random data at random extents, on the file chunk store and on
the S3 chunk store (a private SeaweedFS), measures:

- ``snapshot_clean_closed``: ``Blockstore.snapshot`` of a volume nobody holds, nothing dirty;
- ``snapshot_clean_open``: a writer holds the volume with nothing dirty:
  ``vol.commit()`` + ``heads.add_snapshot`` (what the disk service does);
- ``fork``: ``Blockstore.fork(NAME@SNAP, NEW)``;
- ``snapshot_dirty_open``: the writer has 256 MiB of new random data dirty at random
  extents; ``flush`` (the capture — the only pause a workspace sees), then ``commit`` (the
  upload) + ``add_snapshot``. Proportional to the dirty data, never to the volume size;
- ``fork_of_dirty``: fork of the snapshot just taken of the dirty volume.

Anchor, in the same run: the 1 GiB figure; the goal is clean snapshot ≤ 50 ms at 1 TiB and
the 1 TiB figure ≤ 2x the 1 GiB one. For the dirty case the anchor is the raw write
throughput of the same chunk store (put_many of the same number of 4 MiB objects).

    .venv/bin/python bench/snapshot_fork.py [--quick] [--store file|s3|both]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import Any

from _common import (
    GIB,
    MIB,
    TIB,
    Payload,
    emit,
    log,
    open_node,
    seaweedfs,
    stats_ms,
    weed_version,
    workdir,
)

EXTENT = 4 * MIB
DIRTY_BYTES = 256 * MIB


def write_random_extents(vol: Any, payload: Payload, n_extents: int, rng: random.Random) -> None:
    """Write ``DIRTY_BYTES`` of fresh random data at random whole extents of ``vol``."""
    count = DIRTY_BYTES // EXTENT
    payload.next_round()
    for i, e in enumerate(rng.sample(range(n_extents), count)):
        vol.write(e * EXTENT, payload.get(i))


METRICS = (
    "snapshot_clean_closed",
    "snapshot_clean_open",
    "fork",
    "capture_pause",
    "commit_upload",
    "snapshot_dirty_open",
    "fork_of_dirty",
)


class Subject:
    """One volume under test and the samples measured on it."""

    def __init__(self, node: Any, label: str, size: int) -> None:
        self.bs = node.bs
        self.label = label
        self.name = f"v{label.lower()}"
        self.n_extents = size // EXTENT
        self.rng = random.Random(size)
        self.payload = Payload(EXTENT, DIRTY_BYTES // EXTENT)
        self.samples: dict[str, list[float]] = {k: [] for k in METRICS}
        self.uploaded: list[int] = []
        self.bs.create(
            self.name, size=size, extent_size=EXTENT, durability="local", commit_interval=3600
        )
        vol = self.bs.open(self.name)
        write_random_extents(vol, self.payload, self.n_extents, self.rng)
        vol.close()  # commits: the volume is now clean, 256 MiB committed
        self.vol: Any = None

    def clean_closed(self, i: int) -> None:
        t0 = time.perf_counter()
        self.bs.snapshot(self.name, f"c{i}")
        t1 = time.perf_counter()
        self.bs.fork(f"{self.name}@c{i}", f"{self.name}-f{i}")
        t2 = time.perf_counter()
        self.samples["snapshot_clean_closed"].append(t1 - t0)
        self.samples["fork"].append(t2 - t1)

    def clean_open(self, i: int) -> None:
        t0 = time.perf_counter()
        rec = self.vol.commit()
        self.bs.heads.add_snapshot(rec, f"o{i}", rec.version, rec.root)
        self.samples["snapshot_clean_open"].append(time.perf_counter() - t0)

    def dirty_open(self, i: int) -> None:
        vol = self.vol
        write_random_extents(vol, self.payload, self.n_extents, self.rng)
        t0 = time.perf_counter()
        vol.flush()  # local durability: fdatasync + capture, the workspace's only pause
        t1 = time.perf_counter()
        rec = vol.commit()
        t2 = time.perf_counter()
        self.bs.heads.add_snapshot(rec, f"d{i}", rec.version, rec.root)
        t3 = time.perf_counter()
        self.bs.fork(f"{self.name}@d{i}", f"{self.name}-df{i}")
        t4 = time.perf_counter()
        self.samples["capture_pause"].append(t1 - t0)
        self.samples["commit_upload"].append(t2 - t1)
        self.samples["snapshot_dirty_open"].append(t3 - t0)
        self.samples["fork_of_dirty"].append(t4 - t3)
        assert vol.last_commit is not None
        self.uploaded.append(vol.last_commit.uploaded_bytes)

    def report(self) -> dict[str, Any]:
        res: dict[str, Any] = {k: stats_ms(v) for k, v in self.samples.items()}
        res["dirty_bytes"] = DIRTY_BYTES
        res["dirty_commit_uploaded_bytes"] = self.uploaded
        med = res["commit_upload"]["median_ms"] / 1000
        res["dirty_commit_mib_s"] = round(DIRTY_BYTES / MIB / med, 1)
        return res


def bench_sizes(node: Any, reps: int, dirty_reps: int) -> dict[str, Any]:
    """Both sizes, measured in alternation so load from elsewhere hits them alike."""
    subjects = [Subject(node, "1GiB", GIB), Subject(node, "1TiB", TIB)]
    for i in range(reps):
        for s in subjects:
            s.clean_closed(i)
    for s in subjects:
        s.vol = s.bs.open(s.name)
    try:
        for i in range(reps):
            for s in subjects:
                s.clean_open(i)
        for i in range(dirty_reps):
            for s in subjects:
                s.dirty_open(i)
    finally:
        for s in subjects:
            s.vol.close()
    return {s.label: s.report() for s in subjects}


def raw_store_put(node: Any, reps: int) -> dict[str, Any]:
    """Anchor for the dirty case: put_many of 64 fresh 4 MiB random objects (same store)."""
    store = node.ctx.store
    payload = Payload(EXTENT, DIRTY_BYTES // EXTENT)
    times = []
    for r in range(reps):
        payload.next_round()
        items = [(f"bench/raw/{r}/{i}", payload.get(i)) for i in range(payload.blocks)]
        t0 = time.perf_counter()
        store.put_many(items)
        times.append(time.perf_counter() - t0)
        store.delete_many([k for k, _ in items])
    med = sorted(times)[len(times) // 2]
    return {**stats_ms(times), "mib_s": round(DIRTY_BYTES / MIB / med, 1)}


def run_store(kind: str, chunks_url: str, reps: int, dirty_reps: int) -> dict[str, Any]:
    with workdir(f"snap-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        node = open_node(tmp / "node", url, f"sqlite:///{tmp / 'catalog.db'}")
        try:
            log(f"[{kind}] 1 GiB and 1 TiB volumes")
            results: dict[str, Any] = bench_sizes(node, reps, dirty_reps)
            results["anchor_raw_put_256MiB"] = raw_store_put(node, max(2, dirty_reps))
            work_used = sum(
                os.path.getsize(os.path.join(d, f))
                for d, _, fs in os.walk(tmp / "node")
                for f in fs
            )
            results["node_dir_apparent_bytes"] = work_used
        finally:
            node.close()
    g, t = results["1GiB"], results["1TiB"]
    checks = {}
    for k in ("snapshot_clean_closed", "snapshot_clean_open", "fork", "fork_of_dirty"):
        checks[f"{k}_1TiB_vs_1GiB"] = round(t[k]["median_ms"] / g[k]["median_ms"], 2)
    checks["snapshot_dirty_open_1TiB_vs_1GiB"] = round(
        t["snapshot_dirty_open"]["median_ms"] / g["snapshot_dirty_open"]["median_ms"], 2
    )
    checks["clean_snapshot_1TiB_le_50ms"] = (
        t["snapshot_clean_closed"]["median_ms"] <= 50
        and t["snapshot_clean_open"]["median_ms"] <= 50
    )
    checks["constant_time_le_2x"] = all(
        v <= 2 for k, v in checks.items() if k.endswith("_vs_1GiB") and "dirty" not in k
    )
    raw = results["anchor_raw_put_256MiB"]["mib_s"]
    checks["dirty_commit_vs_raw_put"] = {
        lab: round(results[lab]["dirty_commit_mib_s"] / raw, 2) for lab in ("1GiB", "1TiB")
    }
    results["checks"] = checks
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = parser.parse_args()
    reps, dirty_reps = (10, 2) if args.quick else (30, 4)
    report: dict[str, Any] = {
        "benchmark": "snapshot_fork",
        "question": "snapshot and fork latency vs volume size (1 GiB vs 1 TiB), clean and dirty",
        "extent_size": EXTENT,
        "repetitions": {"clean": reps, "dirty": dirty_reps},
        "results": {},
    }
    if args.store in ("file", "both"):
        report["results"]["file"] = run_store("file", "", reps, dirty_reps)
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            url = server.url("loft-bench", "snapshot-fork")
            report["results"]["s3"] = run_store("s3", url, reps, dirty_reps)
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

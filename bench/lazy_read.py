"""Does a fork on a new node fetch only what it reads?

A 10 GiB volume gets 1 GiB of data (256 MiB with ``--quick``) in 4 MiB extents at random
places, each half random and half compressible text (so compressed and raw sizes differ),
is snapshotted and forked. The fork is opened on a fresh node (an empty data dir: no
working copy, no chunk cache; same catalog and chunk store) and ``--reads`` random ranges
(4 KiB to 1 MiB, half of them aimed at written extents) are read and checked against the
data written.

Reported, honestly split:

- ``bytes_read``: what the reads asked for;
- ``raw_extent_bytes``: the bytes read rounded up to whole extents (every extent a read
  touched x 4 MiB) — the goal's bound — and the same for written extents only (an extent
  that was never written is all zeros and is never fetched);
- ``fetched_bytes``: what the node's chunk cache pulled from the chunk store (compressed
  chunk values as stored, manifest pages included), split into data chunks and manifest
  pages; ``expected_data_bytes`` is the stored size of exactly the chunks of the written
  extents the reads touched.

Anchor in the same run: the volume size and the data written (what a full copy would move).

    .venv/bin/python bench/lazy_read.py [--quick] [--store file|s3|both] [--reads N]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from _common import (
    GIB,
    KIB,
    MIB,
    Payload,
    emit,
    log,
    open_node,
    seaweedfs,
    stats_ms,
    weed_version,
    workdir,
)
from loft.blockstore.chunks import ZERO_HASH, chunk_key

EXTENT = 4 * MIB
SIZE = 10 * GIB
WRITTEN = 1 * GIB
READ_SIZES = (4 * KIB, 64 * KIB, 1 * MIB)


def run_store(kind: str, chunks_url: str, reads: int, written_bytes: int) -> dict[str, Any]:
    rng = random.Random(42)
    n_extents = SIZE // EXTENT
    written = sorted(rng.sample(range(n_extents), written_bytes // EXTENT))
    payload = Payload(EXTENT, len(written), compressible_fraction=0.5)
    contents = {e: payload.get(i) for i, e in enumerate(written)}
    with workdir(f"lazy-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        catalog = f"sqlite:///{tmp / 'catalog.db'}"
        origin = open_node(tmp / "origin", url, catalog)
        try:
            origin.bs.create("base", size=SIZE, extent_size=EXTENT)
            vol = origin.bs.open("base")
            for e in written:
                vol.write(e * EXTENT, contents[e])
            vol.close()
            origin.bs.snapshot("base", "s")
            t0 = time.perf_counter()
            origin.bs.fork("base@s", "child")
            fork_ms = (time.perf_counter() - t0) * 1000
        finally:
            origin.close()

        node = open_node(tmp / "fresh", url, catalog)
        try:
            cache = node.ctx.cache
            t0 = time.perf_counter()
            vol = node.bs.open("child")
            open_ms = (time.perf_counter() - t0) * 1000
            after_open = (cache.fetched_bytes, cache.fetched_count)
            touched: set[int] = set()
            bytes_read = 0
            latencies = []
            written_set = set(written)
            for i in range(reads):
                length = rng.choice(READ_SIZES)
                if i % 2 == 0:
                    base = rng.choice(written) * EXTENT
                    offset = base + rng.randrange(0, EXTENT - length + 1, 4 * KIB)
                else:
                    offset = rng.randrange(0, SIZE - length + 1, 512)
                t0 = time.perf_counter()
                data = vol.read(offset, length)
                latencies.append(time.perf_counter() - t0)
                bytes_read += length
                first, last = offset // EXTENT, (offset + length - 1) // EXTENT
                expect = b"".join(
                    contents[e] if e in written_set else bytes(EXTENT)
                    for e in range(first, last + 1)
                )[offset - first * EXTENT : offset - first * EXTENT + length]
                if data != expect:
                    raise SystemExit(f"read at {offset}+{length} returned wrong data")
                touched.update(range(first, last + 1))
            fetched_bytes, fetched_count = cache.fetched_bytes, cache.fetched_count
            view = node.bs.view("child")
            digests = {view.digest(e) for e in touched} - {ZERO_HASH}
            stats = node.ctx.store.stat_many([chunk_key(d) for d in digests])
            expected_data = sum(s.size for s in stats.values() if s is not None)
            vol.close()
        finally:
            node.close()
    touched_written = touched & written_set
    raw_rounded = len(touched) * EXTENT
    manifest_fetched = fetched_bytes - expected_data
    return {
        "volume_bytes": SIZE,
        "written_bytes": written_bytes,
        "reads": reads,
        "bytes_read": bytes_read,
        "extents_touched": len(touched),
        "extents_touched_written": len(touched_written),
        "raw_extent_bytes": raw_rounded,
        "raw_extent_bytes_written_only": len(touched_written) * EXTENT,
        "fetched_bytes": fetched_bytes,
        "fetched_objects": fetched_count,
        "fetched_at_open_bytes": after_open[0],
        "expected_data_bytes": expected_data,
        "fetched_manifest_bytes": manifest_fetched,
        "fetched_manifest_pages": fetched_count - len(digests),
        "fetched_vs_raw_extent_bytes": round(fetched_bytes / raw_rounded, 3),
        "fetched_vs_volume": round(fetched_bytes / SIZE, 5),
        "fetched_vs_written": round(fetched_bytes / written_bytes, 4),
        "goal_fetched_le_raw_extent_bytes": fetched_bytes <= raw_rounded,
        "no_extra_data_fetched": fetched_bytes - expected_data < 64 * KIB * 8,
        "fork_ms": round(fork_ms, 2),
        "open_fork_on_fresh_node_ms": round(open_ms, 2),
        "read_latency": stats_ms(latencies),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB written, 100 reads")
    parser.add_argument("--reads", type=int, default=0, help="random reads (default 400)")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = parser.parse_args()
    reads = args.reads or (100 if args.quick else 400)
    written = 256 * MIB if args.quick else WRITTEN
    report: dict[str, Any] = {
        "benchmark": "lazy_read",
        "question": "bytes a fork fetches on a fresh node vs bytes it reads",
        "extent_size": EXTENT,
        "results": {},
    }
    if args.store in ("file", "both"):
        log("[file]")
        report["results"]["file"] = run_store("file", "", reads, written)
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            log("[s3]")
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            report["results"]["s3"] = run_store(
                "s3", server.url("loft-bench", "lazy"), reads, written
            )
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

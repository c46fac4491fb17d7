"""What bounds a cold fork read? Each stage of fetching an extent, measured alone.

A cold read of a fork fetches every extent from the chunk store: read the chunk value,
decode it (zstd, or a view of a raw one), verify its keyed BLAKE3 digest, write it into
the working copy around the page cache, and serve the client's first reads from the
fetched bytes (a slice: nothing to measure). This measures each stage
on its own, on one thread and with the fetch pool's parallelism (4), over 1 GiB of
incompressible 4 MiB extents (what bench/nbd_vs_nbdkit.py's forks hold), for the chunk
directory and for SeaweedFS:

- ``fetch``: ``store.get`` of every chunk (a file read; a GET over loopback);
- ``decode``: ``codec.decode_view`` (raw chunks: no copy);
- ``verify``: the keyed BLAKE3 of every extent;
- ``write``: the extents written into a fresh sparse file as a fetch writes them
  (``O_DIRECT``, or through the page cache where the filesystem refuses it).

``serial_MBps`` combines the stages as one thread would run them one after the other
(1 / sum of 1/stage); the server overlaps them across the fetch pool and the event loop,
on the same two cores as the client and, for S3, SeaweedFS.

    .venv/bin/python bench/cold_read_floor.py [--quick] [--store file|s3|both]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import GIB, MIB, emit, log, open_node, seaweedfs, weed_version, workdir
from loft.blockstore.chunks import chunk_key
from loft.blockstore.extents import write_pieces
from loft.blockstore.fill import DirectFill

EXTENT = 4 * MIB
PARALLEL = 4


def rate(n_bytes: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n_bytes / (time.perf_counter() - t0) / 1e6


def stages(ctx: Any, digests: Sequence[bytes], tmp: Path, threads: int) -> dict[str, float]:
    keys = [chunk_key(d) for d in digests]
    total = len(digests) * EXTENT
    out: dict[str, float] = {}
    with ThreadPoolExecutor(threads) as pool:
        values: list[bytes] = []
        out["fetch"] = rate(total, lambda: values.extend(pool.map(ctx.store.get, keys)))
        datas: list[Any] = []
        out["decode"] = rate(total, lambda: datas.extend(pool.map(ctx.codec.decode_view, values)))
        out["verify"] = rate(total, lambda: list(pool.map(ctx.codec.hash, datas)))
        path = tmp / f"wc-{threads}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fill = DirectFill(fd)
        try:
            os.ftruncate(fd, total)

            def write(i: int) -> None:
                if not fill.write(datas[i], i * EXTENT):
                    write_pieces(fd, datas[i], i * EXTENT)

            out["write"] = rate(total, lambda: list(pool.map(write, range(len(datas)))))
        finally:
            fill.close()
            os.close(fd)
            path.unlink()
    out["serial_MBps"] = 1 / sum(1 / v for k, v in out.items() if k != "serial_MBps")
    return {k: round(v, 1) for k, v in out.items()}


def run_store(kind: str, chunks_url: str, size: int) -> dict[str, Any]:
    with workdir(f"cold-floor-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        node = open_node(tmp / "node", url, f"sqlite:///{tmp / 'catalog.db'}")
        try:
            node.bs.create("v", size=size)
            vol = node.bs.open("v")
            for i in range(size // EXTENT):
                vol.write(i * EXTENT, os.urandom(EXTENT))
            vol.close()
            view = node.bs.view("v")
            digests = [view.digest(e) for e in range(size // EXTENT)]
            log(f"[{kind}] {len(digests)} chunks stored")
            return {
                "one_thread": stages(node.ctx, digests, tmp, 1),
                f"{PARALLEL}_threads": stages(node.ctx, digests, tmp, PARALLEL),
            }
        finally:
            node.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 MiB instead of 1 GiB")
    ap.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = ap.parse_args()
    size = 256 * MIB if args.quick else GIB
    report: dict[str, Any] = {
        "benchmark": "cold_read_floor",
        "question": "MB/s of each stage of a cold fetch, alone (4 MiB incompressible extents)",
        "size": size,
        "results": {},
    }
    if args.store in ("file", "both"):
        report["results"]["file"] = run_store("file", "", size)
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            report["results"]["s3"] = run_store("s3", server.url("loft-bench", "floor"), size)
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

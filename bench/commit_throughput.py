"""Does a commit of 4 MiB extents upload near the chunk store's own PUT throughput?

One volume with 4 MiB extents on a private SeaweedFS (and, with ``--store both``, on the
file chunk store). Each round, in alternation:

- ``commit``: 64 fresh random extents (256 MiB) are written and flushed, then
  ``Volume.commit()`` is timed: read the captured extents, keyed BLAKE3, zstd, register
  the chunks for GC, HEAD each key (dedup), PUT the new ones, manifest pages, head CAS;
- ``encode_only``: the same hashing and compression of 64 fresh extents on the node's
  thread pool, no I/O — the CPU ceiling of a commit on this machine;
- anchors at the same parallelism as the store's ``put_many`` (8): the chunk store's own
  ``put_many`` of 64 fresh 4 MiB random objects, and plain boto3 ``put_object`` from a
  thread pool of the same size (S3 only).

Throughput is raw extent bytes / seconds (random data does not compress, so raw and
uploaded bytes agree within the chunk headers). Median of ``--rounds``.

    .venv/bin/python bench/commit_throughput.py [--quick] [--store s3|file|both]
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _common import GIB, MIB, Payload, emit, log, open_node, seaweedfs, weed_version, workdir
from loft.blockstore.commit import BATCH_EXTENTS, encode_extent
from loft.objstore import DEFAULT_PARALLELISM

EXTENT = 4 * MIB
COUNT = 64


def boto3_put(server: Any, prefix: str, parallelism: int) -> Any:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=parallelism + 2),
    )
    pool = ThreadPoolExecutor(parallelism)

    def put_many(items: list[tuple[str, bytes]]) -> None:
        def put(kv: tuple[str, bytes]) -> None:
            client.put_object(Bucket="loft-bench", Key=prefix + kv[0], Body=kv[1])

        list(pool.map(put, items))

    return put_many


def run_store(kind: str, chunks_url: str, rounds: int, server: Any = None) -> dict[str, Any]:
    with workdir(f"commit-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        node = open_node(tmp / "node", url, f"sqlite:///{tmp / 'catalog.db'}")
        bs, ctx = node.bs, node.ctx
        payload = Payload(EXTENT, COUNT)
        times: dict[str, list[float]] = {"commit": [], "encode_only": [], "store_put_many": []}
        if server is not None:
            times["boto3_put"] = []
            anchor = boto3_put(server, "commit-bench-boto3/", DEFAULT_PARALLELISM)
        uploaded = []
        try:
            bs.create("c", size=4 * GIB, extent_size=EXTENT, commit_interval=3600)
            vol = bs.open("c")
            ctx.store.put("bench/warmup", b"x")
            for r in range(rounds):
                # commit
                payload.next_round()
                for i in range(COUNT):
                    vol.write(((r * COUNT + i) % 1024) * EXTENT, payload.get(i))
                vol.flush()
                t0 = time.perf_counter()
                vol.commit()
                times["commit"].append(time.perf_counter() - t0)
                assert vol.last_commit is not None
                uploaded.append(vol.last_commit.uploaded_bytes)
                # encode only
                payload.next_round()
                blocks = [payload.get(i) for i in range(COUNT)]
                t0 = time.perf_counter()
                list(ctx.pool.map(lambda b: encode_extent(ctx, b), blocks))
                times["encode_only"].append(time.perf_counter() - t0)
                # the store's own put_many
                payload.next_round()
                items = [(f"bench/raw/{r}/{i}", payload.get(i)) for i in range(COUNT)]
                t0 = time.perf_counter()
                ctx.store.put_many(items)
                times["store_put_many"].append(time.perf_counter() - t0)
                if server is not None:
                    payload.next_round()
                    items = [(f"{r}/{i}", payload.get(i)) for i in range(COUNT)]
                    t0 = time.perf_counter()
                    anchor(items)
                    times["boto3_put"].append(time.perf_counter() - t0)
                log(
                    f"[{kind}] round {r}: "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items())
                )
            vol.close()
        finally:
            node.close()
    total = COUNT * EXTENT
    out: dict[str, Any] = {
        k: {
            "mib_s": round(total / MIB / statistics.median(v), 1),
            "runs_s": [round(x, 3) for x in v],
        }
        for k, v in times.items()
    }
    out["commit_uploaded_bytes"] = uploaded
    out["commit_vs_store_put_many"] = round(
        out["commit"]["mib_s"] / out["store_put_many"]["mib_s"], 2
    )
    if server is not None:
        out["commit_vs_boto3"] = round(out["commit"]["mib_s"] / out["boto3_put"]["mib_s"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 5)")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    report: dict[str, Any] = {
        "benchmark": "commit_throughput",
        "question": "4 MiB-extent commit upload throughput vs the chunk store's raw PUT",
        "extents_per_commit": COUNT,
        "extent_size": EXTENT,
        "parallelism": DEFAULT_PARALLELISM,
        "batch_extents": BATCH_EXTENTS,
        "results": {},
    }
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            url = server.url("loft-bench", "commit")
            report["results"]["s3"] = run_store("s3", url, rounds, server)
    if args.store in ("file", "both"):
        report["results"]["file"] = run_store("file", "", rounds)
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast does S3ObjectStore move extents to and from an S3 API store?

Starts a private SeaweedFS (``weed mini`` on loopback), then measures, for each parallelism:

- 4 MiB PUT and GET throughput (MiB/s) through ``put_many`` / ``get_many``;
- 64 KiB PUT and GET rates (operations/s).

The anchor, measured in the same run on the same server, is plain boto3: a default-config
client driven by a thread pool of the same size (what any Python S3 uploader would do).
A ratio near 1.0 means loft's bounded, error-mapped client costs nothing.

    .venv/bin/python bench/s3_throughput.py [--parallelism 1,4,8,16] [--repeat 3]

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from loft.objstore.s3 import S3ObjectStore
from services import SeaweedFS, start_seaweedfs, weed_binary

MIB = 1024 * 1024
BUCKET = "loft-bench"


def make_values(count: int, size: int) -> list[bytes]:
    """``count`` distinct incompressible values of ``size`` bytes."""
    base = os.urandom(size + count)
    return [base[i : i + size] for i in range(count)]


class Boto3Anchor:
    """Plain boto3 with a thread pool: the baseline S3ObjectStore is compared with."""

    def __init__(self, server: SeaweedFS, prefix: str, parallelism: int) -> None:
        self.prefix = prefix
        self.client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, max_pool_connections=parallelism),
        )
        self.pool = ThreadPoolExecutor(parallelism)

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        def put(kv: tuple[str, bytes]) -> None:
            self.client.put_object(Bucket=BUCKET, Key=self.prefix + kv[0], Body=kv[1])

        list(self.pool.map(put, items))

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        def get(key: str) -> bytes:
            body = self.client.get_object(Bucket=BUCKET, Key=self.prefix + key)["Body"]
            return bytes(body.read())

        return dict(zip(keys, self.pool.map(get, keys), strict=True))

    def close(self) -> None:
        self.pool.shutdown()
        self.client.close()


Contender = tuple[
    Callable[[Sequence[tuple[str, bytes]]], None], Callable[[Sequence[str]], dict[str, bytes]]
]


def measure(contenders: dict[str, Contender], values: list[bytes], repeat: int) -> dict[str, Any]:
    """PUT every value under fresh keys, then GET them all back (verified), per contender.

    Rounds alternate between contenders, so load from other processes on a shared machine
    hits both alike; each contender's best round counts.
    """
    size = len(values[0])
    total = size * len(values)
    times: dict[str, dict[str, list[float]]] = {n: {"put": [], "get": []} for n in contenders}
    keys: dict[str, list[str]] = {}
    for r in range(repeat):
        for name, (put_many, _) in contenders.items():
            keys[name] = [f"{name}/{size}/{r}/{i}" for i in range(len(values))]
            start = time.perf_counter()
            put_many(list(zip(keys[name], values, strict=True)))
            times[name]["put"].append(time.perf_counter() - start)
    for _ in range(repeat):
        for name, (_, get_many) in contenders.items():
            start = time.perf_counter()
            got = get_many(keys[name])
            times[name]["get"].append(time.perf_counter() - start)
            assert [got[k] for k in keys[name]] == values, f"{name}: GET returned other bytes"
    out: dict[str, Any] = {}
    for name, t in times.items():
        put_best, get_best = min(t["put"]), min(t["get"])
        out[name] = {
            "put_mib_s": round(total / MIB / put_best, 1),
            "get_mib_s": round(total / MIB / get_best, 1),
            "put_ops_s": round(len(values) / put_best, 1),
            "get_ops_s": round(len(values) / get_best, 1),
            "put_runs_s": [round(x, 4) for x in t["put"]],
            "get_runs_s": [round(x, 4) for x in t["get"]],
        }
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The headline numbers: loft and anchor rates per object size and parallelism."""
    out: dict[str, dict[str, float]] = {}
    for r in results:
        unit = "mib_s" if r["object"] == "4MiB" else "ops_s"
        row: dict[str, float] = {}
        for op in ("put", "get"):
            row[f"{op}_{unit}"] = r["loft"][f"{op}_{unit}"]
            row[f"anchor_{op}_{unit}"] = r["anchor_boto3"][f"{op}_{unit}"]
        out[f"{r['object']}_p{r['parallelism']}"] = row
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parallelism", default="1,4,8,16", help="comma-separated worker counts")
    parser.add_argument("--large-objects", type=int, default=32, help="4 MiB objects per round")
    parser.add_argument("--small-objects", type=int, default=400, help="64 KiB objects per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per measurement (best)")
    args = parser.parse_args(argv)
    levels = [int(p) for p in args.parallelism.split(",")]

    server = start_seaweedfs()
    try:
        version = subprocess.run(
            [str(weed_binary()), "version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        large = make_values(args.large_objects, 4 * MIB)
        small = make_values(args.small_objects, 64 * 1024)
        results = []
        for p in levels:
            store = S3ObjectStore(
                BUCKET,
                f"loft-p{p}",
                endpoint=server.endpoint,
                access_key=server.access_key,
                secret_key=server.secret_key,
                parallelism=p,
            )
            anchor = Boto3Anchor(server, f"boto3-p{p}/", p)
            try:
                store.put("warmup", b"x")  # creates the bucket; not timed
                for label, values in (("4MiB", large), ("64KiB", small)):
                    both = measure(
                        {
                            "loft": (store.put_many, store.get_many),
                            "boto3": (anchor.put_many, anchor.get_many),
                        },
                        values,
                        args.repeat,
                    )
                    ours, base = both["loft"], both["boto3"]
                    unit = "mib_s" if label == "4MiB" else "ops_s"
                    results.append(
                        {
                            "object": label,
                            "parallelism": p,
                            "loft": ours,
                            "anchor_boto3": base,
                            f"put_{unit}_vs_anchor": ratio(
                                ours[f"put_{unit}"], base[f"put_{unit}"]
                            ),
                            f"get_{unit}_vs_anchor": ratio(
                                ours[f"get_{unit}"], base[f"get_{unit}"]
                            ),
                        }
                    )
                    print(
                        f"{label:>5} p={p:<2} loft put {ours[f'put_{unit}']:>7} "
                        f"get {ours[f'get_{unit}']:>7} {unit} | boto3 put "
                        f"{base[f'put_{unit}']:>7} get {base[f'get_{unit}']:>7}",
                        file=sys.stderr,
                    )
            finally:
                store.close()
                anchor.close()
    finally:
        server.stop()

    report = {
        "benchmark": "s3_throughput",
        "question": "S3ObjectStore PUT/GET throughput vs plain boto3 on a local SeaweedFS",
        "server": f"SeaweedFS weed mini ({version}) on 127.0.0.1",
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "large_objects": args.large_objects,
        "small_objects": args.small_objects,
        "repeat": args.repeat,
        "results": results,
        "summary": summary(results),
        "median_ratio_vs_anchor": statistics.median(
            float(v) for r in results for k, v in r.items() if k.endswith("_vs_anchor") and v
        ),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

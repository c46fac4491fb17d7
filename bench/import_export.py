"""How fast do raw images go into and out of a volume, compared with dd and cp?

Two 1 GiB images on the same disk: ``mixed`` (4 MiB blocks alternating random / zeros, the
zeros written out as data like in a raw disk image) and ``random`` (all random). For each,
rounds alternate between the contenders (median of ``--rounds``):

- ``loft_import``: ``Blockstore.import_image`` into a new volume, including its commit
  (hash, zstd, upload to the chunk store, fsync of every chunk, head CAS);
- ``loft_export``: ``Blockstore.export_image`` of that volume to a file, then fsync;
- anchors: ``dd if=F of=G bs=4M conv=fsync`` and ``cp F G`` (no fsync: cp never syncs,
  so also ``cp F G && sync G``, which fsyncs G).

Every round imports different content (each 4 MiB block of the image gets a fresh stamp in
its first 16 bytes), so loft's dedup never turns a round into a no-op; the page cache is
left alone (no drop) for every contender alike. Throughput is image bytes / seconds.

    .venv/bin/python bench/import_export.py [--quick] [--store file|s3|both]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import GIB, MIB, emit, log, open_node, seaweedfs, weed_version, workdir

BLOCK = 4 * MIB


def make_image(path: Path, size: int, kind: str) -> None:
    """Write the image with real data blocks (zeros included), then fsync it."""
    with open(path, "wb") as f:
        for i in range(size // BLOCK):
            if kind == "random" or i % 2 == 0:
                f.write(os.urandom(BLOCK))
            else:
                f.write(bytes(BLOCK))
        f.flush()
        os.fsync(f.fileno())


def restamp(path: Path, size: int, kind: str, round_no: int) -> None:
    """Make every data block differ from earlier rounds (16 bytes each), keep zeros zero."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(size // BLOCK):
            if kind == "random" or i % 2 == 0:
                stamp = round_no.to_bytes(8, "little") + i.to_bytes(8, "little")
                os.pwrite(fd, stamp, i * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


def run_cmd(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(args, check=True)
    return time.perf_counter() - t0


def one_image(node: Any, tmp: Path, kind: str, size: int, rounds: int) -> dict[str, Any]:
    src = tmp / f"{kind}.img"
    out = tmp / "out.img"
    log(f"  writing {kind} image ({size // MIB} MiB)")
    make_image(src, size, kind)
    times: dict[str, list[float]] = {
        k: [] for k in ("dd", "cp", "cp_sync", "loft_import", "loft_export")
    }
    uploaded: list[int] = []
    for r in range(rounds):
        restamp(src, size, kind, r + 1)
        for contender in ("dd", "loft", "cp", "cp_sync"):
            out.unlink(missing_ok=True)
            if contender == "dd":
                cmd = ["dd", f"if={src}", f"of={out}", "bs=4M", "conv=fsync", "status=none"]
                times["dd"].append(run_cmd(cmd))
            elif contender == "cp":
                times["cp"].append(run_cmd(["cp", str(src), str(out)]))
            elif contender == "cp_sync":
                t0 = time.perf_counter()
                subprocess.run(["cp", str(src), str(out)], check=True)
                subprocess.run(["sync", str(out)], check=True)
                times["cp_sync"].append(time.perf_counter() - t0)
            else:
                name = f"{kind}-{r}"
                node.bs.create(name, size=size, extent_size=BLOCK)
                t0 = time.perf_counter()
                with open(src, "rb") as f:
                    rep = node.bs.import_image(name, f, size)
                times["loft_import"].append(time.perf_counter() - t0)
                uploaded.append(rep.uploaded_bytes)
                t0 = time.perf_counter()
                with open(out, "wb") as f:
                    node.bs.export_image(name, f)
                    os.fsync(f.fileno())
                times["loft_export"].append(time.perf_counter() - t0)
                check_same(src, out)
                node.bs.remove(name)
            log(f"  {kind} round {r}: {contender} done")
    out.unlink(missing_ok=True)
    src.unlink()
    res: dict[str, Any] = {}
    for k, v in times.items():
        med = statistics.median(v)
        res[k] = {"mib_s": round(size / MIB / med, 1), "runs_s": [round(x, 3) for x in v]}
    dd = res["dd"]["mib_s"]
    res["ratios"] = {
        "import_vs_dd": round(res["loft_import"]["mib_s"] / dd, 2),
        "export_vs_dd": round(res["loft_export"]["mib_s"] / dd, 2),
        "import_vs_cp_sync": round(res["loft_import"]["mib_s"] / res["cp_sync"]["mib_s"], 2),
        "export_vs_cp_sync": round(res["loft_export"]["mib_s"] / res["cp_sync"]["mib_s"], 2),
    }
    res["import_uploaded_bytes"] = uploaded
    return res


def check_same(a: Path, b: Path) -> None:
    """The export must be the image, byte for byte."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(BLOCK), fb.read(BLOCK)
            if x != y:
                raise SystemExit(f"export of {a.name} differs from the image")
            if not x:
                return


def run_store(kind: str, chunks_url: str, size: int, rounds: int, images: list[str]) -> Any:
    with workdir(f"imex-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        node = open_node(tmp / "node", url, f"sqlite:///{tmp / 'catalog.db'}")
        try:
            out = {}
            for image in images:
                log(f"[{kind}] {image}")
                out[image] = one_image(node, tmp, image, size, rounds)
            return out
        finally:
            node.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 MiB images, 2 rounds")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = parser.parse_args()
    size, rounds = (256 * MIB, 2) if args.quick else (1 * GIB, 3)
    report: dict[str, Any] = {
        "benchmark": "import_export",
        "question": "loft volume import/export throughput vs dd and cp of the same file",
        "image_bytes": size,
        "rounds": rounds,
        "results": {},
    }
    if args.store in ("file", "both"):
        report["results"]["file"] = run_store("file", "", size, rounds, ["mixed", "random"])
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            url = server.url("loft-bench", "import-export")
            report["results"]["s3"] = run_store("s3", url, size, rounds, ["mixed", "random"])
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

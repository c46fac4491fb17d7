"""Does the same image stored twice cost one copy?

Imports one 1 GiB raw image (4 MiB blocks: random, zeros and distinct compressible text
in turn) into a first volume, then into a second one, and measures the chunk store after:
bytes of every stored object (chunks, manifest pages, head records; for the file store
also the directory's allocated bytes). The goal: after both imports the store has grown by
≤ 1.05x what one import added. Anchor in the same run: the image's own size, and the
store bytes two plain copies would take (2x one copy).

    .venv/bin/python bench/dedup.py [--quick] [--store file|s3|both]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from _common import GIB, MIB, dir_bytes, emit, log, open_node, seaweedfs, weed_version, workdir

BLOCK = 4 * MIB
TEXT = b"a line of a log file or a source tree, repeated: 0123456789 abcdef\n"


def make_image(path: Path, size: int) -> None:
    filler = (TEXT * (BLOCK // len(TEXT) + 1))[:BLOCK]
    with open(path, "wb") as f:
        for i in range(size // BLOCK):
            kind = i % 3
            if kind == 0:
                f.write(os.urandom(BLOCK))
            elif kind == 1:
                f.write(bytes(BLOCK))
            else:  # text, distinct per block (no dedup inside the image)
                f.write(i.to_bytes(8, "little") + filler[8:])
        os.fsync(f.fileno())


def store_bytes(node: Any) -> dict[str, int]:
    total = count = 0
    for info in node.ctx.store.list(""):
        total += info.size
        count += 1
    return {"objects": count, "bytes": total}


def run_store(kind: str, chunks_url: str, size: int) -> dict[str, Any]:
    with workdir(f"dedup-{kind}") as tmp:
        url = chunks_url or f"file://{tmp / 'chunks'}"
        node = open_node(tmp / "node", url, f"sqlite:///{tmp / 'catalog.db'}")
        try:
            image = tmp / "image.raw"
            make_image(image, size)
            sizes: list[dict[str, Any]] = []

            def measure() -> None:
                m: dict[str, Any] = {"store": store_bytes(node)}
                if kind == "file":
                    m["dir"] = dir_bytes(tmp / "chunks")
                sizes.append(m)

            measure()
            reports = []
            for name in ("first", "second"):
                node.bs.create(name, size=size, extent_size=BLOCK)
                with open(image, "rb") as f:
                    rep = node.bs.import_image(name, f, size)
                reports.append(
                    {"uploaded_bytes": rep.uploaded_bytes, "seconds": round(rep.seconds, 2)}
                )
                measure()
                log(f"[{kind}] imported {name}: {sizes[-1]}")
        finally:
            node.close()
    base, one, two = sizes
    grow1 = one["store"]["bytes"] - base["store"]["bytes"]
    grow2 = two["store"]["bytes"] - base["store"]["bytes"]
    out: dict[str, Any] = {
        "image_bytes": size,
        "store_after": {"empty": base, "one_import": one, "two_imports": two},
        "imports": reports,
        "growth_one_import_bytes": grow1,
        "growth_two_imports_bytes": grow2,
        "two_vs_one": round(grow2 / grow1, 4),
        "anchor_two_plain_copies_bytes": 2 * size,
        "goal_le_1_05": grow2 <= 1.05 * grow1,
    }
    if kind == "file":
        a1 = one["dir"]["allocated"] - base["dir"]["allocated"]
        a2 = two["dir"]["allocated"] - base["dir"]["allocated"]
        out["allocated_two_vs_one"] = round(a2 / a1, 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 256 MiB image")
    parser.add_argument("--store", choices=("file", "s3", "both"), default="both")
    args = parser.parse_args()
    size = 256 * MIB if args.quick else 1 * GIB
    report: dict[str, Any] = {
        "benchmark": "dedup",
        "question": "chunk store growth for the same image imported into two volumes",
        "results": {},
    }
    if args.store in ("file", "both"):
        report["results"]["file"] = run_store("file", "", size)
    if args.store in ("s3", "both"):
        with seaweedfs() as server:
            report["s3_server"] = f"SeaweedFS weed mini ({weed_version()}) on 127.0.0.1"
            report["results"]["s3"] = run_store("s3", server.url("loft-bench", "dedup"), size)
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What does committing a GiB cost in CPU, against writing it once with dd?

One 1 GiB image of incompressible data on the same disk as the node (its data dir, the
chunk directory and the catalog), in page cache for every contender alike. Each round
gives every 4 MiB block of the image a fresh stamp (new content), then, in alternation
(dd first in even rounds, loft first in odd ones):

- ``dd``: ``dd if=IMAGE of=COPY bs=4M conv=fsync``, its CPU from ``wait4`` (utime +
  stime, almost all kernel time);
- ``import_new``: ``Blockstore.import_image`` of the image into a new volume: every
  chunk is new, so each extent is read, hashed, compressed (or found incompressible)
  and written to the chunk directory with an fsync;
- ``import_again``: the same image into another new volume on the same node: every
  chunk is already stored and the node's presence index knows it (the first import
  recorded it), so only reading and hashing are needed;
- ``import_again_cold_index``: the same once more from a second node (a fresh
  blockstore in the same process: empty presence index, so every chunk is asked of the
  store with a stat).

CPU is the whole process's (``getrusage(RUSAGE_SELF)``: every thread, user + system) over
the call, so it includes the catalog, the working copy and the pools. Writing a GiB of new
files costs several times more CPU when the kernel must first reclaim page cache to find
free pages (measured here: 0.3 against 2.4 s per GiB for the same writes), so every writer
of new data starts with as much just-freed memory as the other: dd deletes its copy, and
each round's chunk directory and catalog are deleted when the round ends. Reported: CPU
seconds per GiB and wall seconds per contender, the median of ``--rounds``, and each
loft contender's ratio to dd (ratio of medians). Goals: data already stored <= 0.3x dd,
new data <= 1.1x dd.

    .venv/bin/python bench/commit_cpu.py [--quick] [--rounds 5] [--size 1G]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from _common import GIB, MIB, Node, emit, log, open_node, workdir
from loft.units import parse_size

BLOCK = 4 * MIB


def make_image(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // BLOCK):
            f.write(os.urandom(BLOCK))
        f.flush()
        os.fsync(f.fileno())


def restamp(path: Path, size: int, round_no: int) -> None:
    """New content for every block (its first 16 bytes), so no round dedups a former."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(size // BLOCK):
            os.pwrite(fd, round_no.to_bytes(8, "little") + i.to_bytes(8, "little"), i * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def run_dd(src: Path, dst: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one dd with conv=fsync."""
    dst.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(["dd", f"if={src}", f"of={dst}", "bs=4M", "conv=fsync", "status=none"])
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"dd failed with {proc.returncode}")
    wall = time.perf_counter() - t0
    dst.unlink()
    return ru.ru_utime + ru.ru_stime, wall


def run_import(node: Node, name: str, image: Path, size: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, bytes uploaded) of importing ``image`` into a new
    volume ``name``."""
    node.bs.create(name, size=size)
    c0, t0 = self_cpu(), time.perf_counter()
    with open(image, "rb") as f:
        rep = node.bs.import_image(name, f, size)
    return self_cpu() - c0, time.perf_counter() - t0, rep.uploaded_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 256 MiB")
    ap.add_argument("--rounds", type=int, default=0, help="rounds (default 5)")
    ap.add_argument("--size", default="", help="image size (default 1G)")
    args = ap.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    size = parse_size(args.size or ("256M" if args.quick else "1G"))
    gib = size / GIB
    contenders = ("dd", "import_new", "import_again", "import_again_cold_index")
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    uploaded: dict[str, list[int]] = {k: [] for k in contenders[1:]}
    loads = []
    with workdir("commit-cpu") as tmp:
        image, copy = tmp / "image.raw", tmp / "copy.raw"
        log(f"writing a {size // MIB} MiB image")
        make_image(image, size)
        for r in range(rounds):
            restamp(image, size, r + 1)
            store = tmp / f"round{r}"
            chunks = f"file://{store / 'chunks'}"
            catalog = f"sqlite:///{store / 'catalog.db'}"
            node = open_node(store / "node", chunks, catalog)
            try:
                order = ("dd", "loft") if r % 2 == 0 else ("loft", "dd")
                for who in order:
                    if who == "dd":
                        c, w = run_dd(image, copy)
                        cpu["dd"].append(c / gib)
                        wall["dd"].append(w)
                        continue
                    for kind, name in (("import_new", "n"), ("import_again", "a")):
                        c, w, up = run_import(node, name, image, size)
                        cpu[kind].append(c / gib)
                        wall[kind].append(w)
                        uploaded[kind].append(up)
                    other = open_node(store / "other", chunks, catalog)
                    try:
                        c, w, up = run_import(other, "c", image, size)
                    finally:
                        other.close()
                    cpu["import_again_cold_index"].append(c / gib)
                    wall["import_again_cold_index"].append(w)
                    uploaded["import_again_cold_index"].append(up)
            finally:
                node.close()
                shutil.rmtree(store, ignore_errors=True)
            loads.append(round(os.getloadavg()[0], 2))
            log(
                f"round {r}: "
                + ", ".join(f"{k} {cpu[k][-1]:.2f} cpu-s/GiB" for k in contenders)
                + f", load {loads[-1]}"
            )
    med = statistics.median
    dd = med(cpu["dd"])
    results: dict[str, Any] = {}
    for k in contenders:
        results[k] = {
            "cpu_s_per_gib": round(med(cpu[k]), 3),
            "runs_cpu_s_per_gib": [round(x, 3) for x in cpu[k]],
            "wall_s": round(med(wall[k]), 2),
        }
        if k != "dd":
            results[k]["vs_dd"] = round(med(cpu[k]) / dd, 3)
            results[k]["uploaded_bytes"] = uploaded[k]
    emit(
        {
            "benchmark": "commit_cpu",
            "question": "CPU of committing a GiB (new, already stored) vs dd conv=fsync of it",
            "size": size,
            "rounds": rounds,
            "load_1m_after_each_round": loads,
            "results": results,
            "goals": {
                "already_stored_le_0.3x_dd": results["import_again"]["vs_dd"] <= 0.3,
                "new_le_1.1x_dd": results["import_new"]["vs_dd"] <= 1.1,
            },
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

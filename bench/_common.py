"""Shared pieces of the blockstore benchmarks: private nodes in temp dirs, SeaweedFS, stats.

Not a benchmark itself (``make bench`` skips files starting with ``_``). Every benchmark
imports this module as ``_common`` (``bench/`` is on ``sys.path`` when a script in it runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from loft.blockstore.api import Blockstore  # noqa: E402
from loft.blockstore.context import BlockstoreContext  # noqa: E402
from loft.config import Settings  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB


@dataclass
class Node:
    """One node's blockstore: its own data dir; catalog and chunk store may be shared."""

    bs: Blockstore
    data_dir: Path

    @property
    def ctx(self) -> BlockstoreContext:
        return self.bs.ctx

    def close(self) -> None:
        self.bs.close()


def open_node(
    data_dir: Path,
    chunks_url: str,
    catalog_url: str,
    *,
    cache_bytes: int = 64 * GIB,
    chunk_cache_bytes: int = 1 * GIB,
) -> Node:
    """A Blockstore for a node whose working copies live in ``data_dir``."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # loft refuses an open data dir
    settings = Settings(
        data_dir=data_dir,
        chunks_url=chunks_url,
        catalog_url=catalog_url,
        cache_bytes=cache_bytes,
        chunk_cache_bytes=chunk_cache_bytes,
    )
    return Node(Blockstore(BlockstoreContext.open(settings)), data_dir)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A temp dir on the same disk as everything else here, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"loft-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def seaweedfs() -> Iterator[Any]:
    """A private SeaweedFS (``weed mini``) with the AWS variables exported for S3 URLs."""
    from services import start_seaweedfs

    server = start_seaweedfs()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def weed_version() -> str:
    from services import weed_binary

    out = subprocess.run([str(weed_binary()), "version"], capture_output=True, text=True)
    return out.stdout.strip()


def stats_ms(samples: list[float]) -> dict[str, Any]:
    """median / p90 / min / max of durations in seconds, reported in milliseconds."""
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(p90, 2),
        "min_ms": round(ms[0], 2),
        "max_ms": round(ms[-1], 2),
    }


def cpu_seconds(pid: int | str, task: int | None = None) -> float:
    """utime + stime of a whole process (every thread, ended ones too), or of one of its
    threads (``task``), from /proc; ``pid`` may be ``"self"``."""
    stat = Path(f"/proc/{pid}/task/{task}/stat" if task is not None else f"/proc/{pid}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def dir_bytes(path: Path) -> dict[str, int]:
    """Apparent size and allocated size (st_blocks) of every file under ``path``."""
    apparent = allocated = files = 0
    for dirpath, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return {"apparent": apparent, "allocated": allocated, "files": files}


class Payload:
    """Distinct extents cheaply: one random buffer, each block stamped with a unique tag.

    Every block is incompressible and different from every other (no dedup between
    rounds), without paying for ``os.urandom`` each time.
    """

    def __init__(self, block: int, blocks: int, compressible_fraction: float = 0.0) -> None:
        self.block = block
        self.base = bytearray(os.urandom(block * blocks))
        cut = int(block * compressible_fraction)
        if cut:
            phrase = b"loft compressible filler, as in logs and source trees. "
            text = (phrase * (cut // len(phrase) + 1))[:cut]
            for i in range(blocks):
                self.base[i * block + block - cut : (i + 1) * block] = text
        assert len(self.base) == block * blocks
        self.blocks = blocks
        self._round = 0

    def next_round(self) -> None:
        self._round += 1

    def get(self, i: int) -> bytes:
        """Block ``i`` of the current round."""
        i %= self.blocks
        buf = bytearray(self.base[i * self.block : (i + 1) * self.block])
        buf[:16] = self._round.to_bytes(8, "little") + i.to_bytes(8, "little")
        return bytes(buf)


def source_revision() -> str:
    """The commit measured, ``+dirty`` when the working tree of src/ differs from it."""
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return rev + ("+dirty" if dirty else "")


def host() -> dict[str, Any]:
    return {
        "source": source_revision(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        # Other work on the machine skews every number; this says how busy it was.
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
    }


def emit(report: dict[str, Any]) -> None:
    """The one JSON document a benchmark prints on stdout."""
    report.setdefault("host", host())
    print(json.dumps(report, indent=2))


def log(msg: str) -> None:
    """Progress on stderr (stdout is the JSON report)."""
    print(msg, file=sys.stderr, flush=True)

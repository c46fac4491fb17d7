"""Is loft's NBD server as fast as nbdkit on the same backing file?

fio (``--ioengine=nbd``, one connection, Unix socket) against ``loft disk serve-file``
and ``nbdkit file`` serving the same file on the same disk, alternating run by run
(loft first in even pairs, nbdkit first in odd ones) so drift on a shared machine hits
both alike. With ``--volume`` a loft volume served by the real disk service
(``loft disk serve``, chunk store in a local directory) joins the rotation; with ``--s3``
another one whose chunk store is a private SeaweedFS reached over the S3 API. Both are
warm (filled through NBD with nbdcopy, so every extent is in the working copy), and fresh
forks of them are read end to end (cold: every extent fetched from the chunk store, the
node's chunk cache off) against nbdkit reading the same bytes. Beside each cold lane, its
I/O floor in the same run: every chunk read from the store and written around the page
cache into a file on the working copies' disk, by as many threads as the fetch pool,
nothing verified or served (a fork's fetch can go no faster than its own I/O).

Every run starts from a quiet machine: ``sync`` first (no writeback left over from the
previous run), and a volume commits what the run wrote before the next run starts
(through the service's control socket, the way ``loft volume snapshot`` does). Commit
is the volume's background work, so its CPU is reported beside the run's own. After a
write workload the chunk store is then garbage-collected (outside any measurement), as
a node does: otherwise the chunks each run left unreferenced pile up until the disk is
full.

That drain is fair to the server but not what a user gets: while they write, the volume
commits in the background. ``--sustained`` adds ``seq_write_1M_sustained``: the same
writes with a FLUSH every ``--flush-mib`` MiB (a guest's filesystem flushes as it goes)
and a ramp of ``--sustain-ramp`` seconds, longer than the volume's commit interval, so
the measured window runs while commits of the ramp's flushes upload. ``--tmpfs`` adds a
volume whose chunk store is on tmpfs (the working copy stays on the disk): beside the
directory and SeaweedFS volumes it shows what writing every byte twice to one disk costs.
``--busy`` runs every workload once more with a CPU hog on one core (started before the
run, stopped after it), as on a node shared with other work. After each run of a volume
the service's largest commit lag so far (the age of the oldest flushed write not yet
committed) is read through the control socket and reported.

Per workload: the median of each server's runs, the ratio of medians (loft / nbdkit),
and server CPU microseconds per request (utime+stime of the server process over the
run divided by the requests fio completed; for volumes also the commit that followed);
for a workload that flushes, ``flush_ms``: how long fio waited for a FLUSH, on average.
Summary: geometric mean of the ratios. Goal: geomean >= 1.0 and no workload below 0.9.

    python bench/nbd_vs_nbdkit.py [--pairs 5] [--runtime 5] [--size 1G] [--volume] [--s3]
        [--tmpfs] [--sustained] [--busy] [--workloads a,b]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import cpu_seconds, seaweedfs  # seaweedfs: private, stopped by PID
from loft.blockstore.chunks import CHUNK_PREFIX
from loft.blockstore.fill import DirectFill
from loft.directio import ALIGN
from loft.objstore import open_object_store
from loft.units import parse_size

WORKLOADS: dict[str, dict[str, Any]] = {
    "seq_read_1M": {"rw": "read", "bs": "1M", "iodepth": 8},
    "seq_write_1M": {"rw": "write", "bs": "1M", "iodepth": 8},
    "rand_read_4k": {"rw": "randread", "bs": "4k", "iodepth": 32},
    "rand_write_4k": {"rw": "randwrite", "bs": "4k", "iodepth": 32},
    # Writes while the volume commits what was flushed (see --sustained).
    "seq_write_1M_sustained": {"rw": "write", "bs": "1M", "iodepth": 8, "sustained": True},
}
#: The volumes' extent size (the default): every chunk of the incompressible image is one.
EXTENT = 4 << 20
#: The warm volume's name, and its forks read cold (cold0, cold1, ...).
VOLUME = "bench"


def wait_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)


def loft_command() -> list[str]:
    exe = Path(sys.executable).parent / "loft"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from loft.cli import run; run()"]


class Server:
    """One NBD server process serving the benchmark's bytes as ``export``."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        sock: Path,
        export: str,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.sock = sock
        self.export = export
        self.uri = self.uri_of(export)
        #: what the server printed (its tail is shown when a run against it fails)
        # beside the socket's directory, which the server may insist on making itself
        where = sock.parent if sock.parent.exists() else sock.parent.parent
        self.log = where / f"{name}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        try:
            wait_socket(sock, self.proc, name)
        except SystemExit as e:
            raise SystemExit(f"{e}:\n{self.log_tail()}") from None

    def log_tail(self, n: int = 4000) -> str:
        """The last ``n`` characters the server printed."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError as e:
            return f"(no log: {e})"

    def uri_of(self, export: str) -> str:
        return f"nbd+unix:///{export}?socket={self.sock}"

    def drain(self) -> None:
        """Finish the background work a run left behind (nothing, for a plain file)."""

    def commit_lag(self) -> float | None:
        """The largest commit lag the server saw so far (None: it does not commit)."""
        return None

    def collect(self) -> None:
        """Delete what the last run left unreferenced (nothing, for a plain file)."""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class VolumeServer(Server):
    """``loft disk serve`` on a private node: its own catalog and working copies, the
    chunk store at ``chunks_url``. Volume ``bench`` is filled from ``image`` through NBD
    (nbdcopy), committed and snapshotted; ``n_cold`` forks of that snapshot are served
    too, their extents all still in the chunk store (chunk cache off)."""

    def __init__(
        self,
        name: str,
        root: Path,
        chunks_url: str,
        image: Path,
        n_cold: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        root.mkdir(parents=True)
        self.root, self.chunks_url = root, chunks_url
        env = {
            **os.environ,
            **(extra_env or {}),
            "LOFT_DATA_DIR": str(root / "node"),
            "LOFT_CHUNKS": chunks_url,
            "LOFT_CATALOG_URL": f"sqlite:///{root / 'catalog.db'}",
            "LOFT_CACHE_BYTES": str(64 << 30),
            "LOFT_CHUNK_CACHE_BYTES": "0",
        }
        self.env = env
        size = image.stat().st_size
        self.loft("volume", "create", VOLUME, "--size", str(size))
        sock = root / "run" / "nbd.sock"
        super().__init__(
            name, [*loft_command(), "disk", "serve", "--socket", str(sock)], sock, VOLUME, env
        )
        self.control = sock.with_name("control.sock")
        subprocess.run(["nbdcopy", str(image), self.uri], check=True)
        self.drain()
        self.loft("volume", "snapshot", VOLUME, "base")
        for i in range(n_cold):
            self.loft("volume", "fork", f"{VOLUME}@base", f"cold{i}")

    def loft(self, *args: str) -> None:
        subprocess.run(
            [*loft_command(), *args], env=self.env, check=True, stdout=subprocess.DEVNULL
        )

    def drain(self) -> None:
        """Commit everything the last run wrote (what a snapshot would wait for)."""
        from loft.node import api
        from loft.node.client import call

        call(str(self.control), api.CommitRequest(VOLUME), api.CommitAnswer, timeout=900)

    def collect(self) -> None:
        """GC the chunk store, as a node does between a user's sessions: every sustained
        run commits gigabytes that the next commit leaves unreferenced, and five runs of
        three volumes outgrow the disk and the tmpfs."""
        self.loft("volume", "gc", "--grace", "0", "--max-fraction", "1")

    def commit_lag(self) -> float | None:
        from loft.node import api
        from loft.node.client import call

        info = call(str(self.control), api.InfoRequest(VOLUME), api.InfoAnswer, timeout=60)
        lag = getattr(info, "commit_lag_max_s", None)
        return None if lag is None else float(lag)


class CpuHog:
    """A busy loop pinned to one core, as other work on a shared node (stopped by PID)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        with contextlib.suppress(OSError):
            os.sched_setaffinity(self.proc.pid, {min(os.sched_getaffinity(0))})

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def fio(cmd: list[str], server: Server) -> None:
    """Run fio against ``server``; its failure shows fio's errors and the server's log."""
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"fio against {server.name} failed ({done.returncode}):\n{done.stderr[-4000:]}"
            f"\n--- {server.name}, its last output:\n{server.log_tail()}"
        )


def run_fio(
    server: Server,
    workload: dict[str, Any],
    size: int,
    runtime: float,
    out: Path,
    *,
    busy: bool = False,
    ramp: float = 1.0,
    flush_mib: int = 0,
) -> dict[str, float]:
    extra = []
    if workload.get("sustained"):
        # A FLUSH every flush_mib requests of 1 MiB, and a ramp longer than the volume's
        # commit interval: the measured window runs while the ramp's flushes commit.
        extra = [f"--fsync={flush_mib}"]
    else:
        ramp = 1.0
    cmd = [
        "fio",
        "--name=bench",
        "--ioengine=nbd",
        f"--uri={server.uri}",
        f"--rw={workload['rw']}",
        f"--bs={workload['bs']}",
        f"--iodepth={workload['iodepth']}",
        f"--size={size}",
        "--time_based",
        f"--runtime={runtime}",
        f"--ramp_time={ramp:g}",
        *extra,
        "--output-format=json",
        f"--output={out}",
    ]
    # Start every run with no dirty pages left over: otherwise whichever server runs after
    # a write workload pays for the previous run's writeback.
    os.sync()
    hog = CpuHog() if busy else None
    try:
        before = cpu_seconds(server.proc.pid)
        fio(cmd, server)
        after = cpu_seconds(server.proc.pid)
    finally:
        if hog is not None:
            hog.stop()
    lag = server.commit_lag()
    t0 = time.monotonic()
    server.drain()
    drain_s = time.monotonic() - t0
    drained = cpu_seconds(server.proc.pid)
    if "write" in workload["rw"]:  # a read leaves nothing to collect
        server.collect()  # after the CPU reading: GC runs in a process of its own
    job = json.loads(out.read_text())["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    # CPU over the whole fio run (ramp included) divided by every request it made.
    elapsed_total = runtime + ramp
    total_ios = ios * elapsed_total / runtime if ios else 0
    per_req = 1e6 / total_ios if total_ios else float("nan")
    flushes = job.get("sync", {})
    return {
        # how long the client waited for a FLUSH (what write-behind shortens), 0 if none
        "flush_ms": flushes.get("lat_ns", {}).get("mean", 0) / 1e6
        if flushes.get("total_ios")
        else 0.0,
        "MBps": side["bw_bytes"] / 1e6,
        "iops": side["iops"],
        "cpu_us_per_req": (after - before) * per_req,
        "commit_cpu_us_per_req": (drained - after) * per_req,
        "commit_s": drain_s,
        "load_1m": os.getloadavg()[0],
        "commit_lag_max_s": float("nan") if lag is None else lag,
    }


def read_once(server: Server, uri: str, size: int, out: Path, busy: bool = False) -> float:
    """Read a whole export once, 1 MiB requests at iodepth 8; return MB/s."""
    cmd = [
        "fio",
        "--name=cold",
        "--ioengine=nbd",
        f"--uri={uri}",
        "--rw=read",
        "--bs=1M",
        "--iodepth=8",
        f"--size={size}",
        "--output-format=json",
        f"--output={out}",
    ]
    os.sync()
    hog = CpuHog() if busy else None
    try:
        fio(cmd, server)
    finally:
        if hog is not None:
            hog.stop()
    job = json.loads(out.read_text())["jobs"][0]
    return float(job["read"]["bw_bytes"]) / 1e6


def fetch_io_floor(vol: VolumeServer, threads: int = 4) -> float:
    """MB/s of a cold fork's fetch I/O alone: every chunk of ``vol``'s store read as the
    volume reads it (a file store drops the pages after), its payload written with
    O_DIRECT into a file beside the working copies, ``threads`` at a time (the fetch
    pool's size on two cores); no digest checked, nothing served."""
    store = open_object_store(vol.chunks_url)
    path = vol.root / "floor.data"
    keys = [o.key for o in store.list(CHUNK_PREFIX)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, len(keys) * EXTENT)  # sized, as a working copy is
    fill = DirectFill(fd)
    total = 0

    def one(i: int) -> int:
        value = store.get(keys[i])
        payload = memoryview(value)[len(value) % ALIGN :]  # the header's bytes left out
        if not fill.write(payload, i * EXTENT):
            os.pwrite(fd, payload, i * EXTENT)
        return len(payload)

    try:
        os.sync()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(one, range(len(keys))))
        elapsed = time.perf_counter() - t0
    finally:
        fill.close()
        os.close(fd)
        path.unlink()
        store.close()
    return total / elapsed / 1e6


def drop_cached_chunks(vol: VolumeServer) -> None:
    """A cold node holds none of the fork's chunks, in its page cache neither: drop a
    chunk directory's pages (a store on tmpfs is memory whatever we do; SeaweedFS keeps
    its own files)."""
    if not vol.chunks_url.startswith("file://"):
        return
    os.sync()
    for dirpath, _dirs, files in os.walk(vol.chunks_url.removeprefix("file://")):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def cold_fork_read(
    vol: Server, kit: Server, size: int, pairs: int, out: Path, busy: bool = False
) -> dict[str, Any]:
    """Fresh forks read end to end (every extent fetched from the chunk store, chunk cache
    off) vs nbdkit reading the same bytes from the page cache, alternating. With ``busy``
    the forks after the first ``pairs`` are used, and a CPU hog runs during each read."""
    cold_runs, kit_runs = [], []
    for i in range(pairs):
        cold_uri = vol.uri_of(f"cold{i + pairs if busy else i}")
        drop_cached_chunks(vol)
        if i % 2:
            kit_runs.append(read_once(kit, kit.uri, size, out, busy))
            cold_runs.append(read_once(vol, cold_uri, size, out, busy))
        else:
            cold_runs.append(read_once(vol, cold_uri, size, out, busy))
            kit_runs.append(read_once(kit, kit.uri, size, out, busy))
    cold_med, kit_med = statistics.median(cold_runs), statistics.median(kit_runs)
    drop_cached_chunks(vol)
    floor = fetch_io_floor(vol)
    return {
        "metric": "MBps",
        f"{vol.name}_cold_fork": {
            "median_MBps": round(cold_med, 1),
            "runs_MBps": [round(r, 1) for r in cold_runs],
        },
        "nbdkit_file_warm": {
            "median_MBps": round(kit_med, 1),
            "runs_MBps": [round(r, 1) for r in kit_runs],
        },
        "ratio": round(cold_med / kit_med, 3),
        "fetch_io_floor_MBps": round(floor, 1),
        "floor_ratio": round(floor / kit_med, 3),
    }


def summarize(runs: list[dict[str, float]], metric: str) -> dict[str, Any]:
    med = statistics.median
    entry: dict[str, Any] = {
        f"median_{metric}": round(med(r[metric] for r in runs), 1),
        f"runs_{metric}": [round(r[metric], 1) for r in runs],
        "cpu_us_per_req": round(med(r["cpu_us_per_req"] for r in runs), 2),
        # The machine's load when each run ended: a run far below the others on a busy
        # machine is a server starved of CPU, not slower code.
        "load_1m": [round(r["load_1m"], 1) for r in runs],
    }
    if any(r["flush_ms"] for r in runs):
        entry["flush_ms"] = round(med(r["flush_ms"] for r in runs), 1)
    lags = [r["commit_lag_max_s"] for r in runs if not math.isnan(r["commit_lag_max_s"])]
    if lags:
        entry["commit_lag_max_s"] = round(max(lags), 2)
    commit_cpu = med(r["commit_cpu_us_per_req"] for r in runs)
    if commit_cpu > 0:
        entry["commit_cpu_us_per_req"] = round(commit_cpu, 2)
        entry["commit_s"] = round(med(r["commit_s"] for r in runs), 2)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--size", default="1G", help="backing file size (K/M/G suffix)")
    ap.add_argument("--dir", help="where the backing file lives (default: a temp dir)")
    ap.add_argument("--volume", action="store_true", help="also measure a loft volume")
    ap.add_argument(
        "--s3", action="store_true", help="also a volume on an S3 chunk store (SeaweedFS)"
    )
    ap.add_argument(
        "--tmpfs", action="store_true", help="also a volume whose chunk store is on tmpfs"
    )
    ap.add_argument(
        "--sustained",
        action="store_true",
        help="add seq_write_1M_sustained: writes while the volume commits",
    )
    ap.add_argument("--sustain-ramp", type=float, default=6.0, help="its ramp, seconds")
    ap.add_argument("--flush-mib", type=int, default=1024, help="its FLUSH interval, MiB")
    ap.add_argument("--busy", action="store_true", help="run each workload again beside a CPU hog")
    ap.add_argument("--tmpfs-dir", default="/dev/shm", help="the tmpfs for --tmpfs")
    ap.add_argument("--workloads", default=",".join(w for w in WORKLOADS if "sustained" not in w))
    args = ap.parse_args()
    workloads = args.workloads.split(",")
    if args.sustained and "seq_write_1M_sustained" not in workloads:
        workloads.append("seq_write_1M_sustained")
    tools = ["fio", "nbdkit"] + (["nbdcopy"] if args.volume or args.s3 or args.tmpfs else [])
    for tool in tools:
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install {tool})")
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="loft-nbd-bench-", dir=args.dir))
    os.chmod(work, 0o700)
    image = work / "backing.img"
    # Real data, so neither server can answer with holes; and every MiB its own, so a
    # volume stores every extent as a chunk of its own (one block repeated would make the
    # whole image one chunk, and a cold fork would fetch that one chunk over and over).
    with open(image, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    servers: list[Server] = []
    load_start = os.getloadavg()
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        stack.callback(lambda: [s.stop() for s in servers])
        servers.append(
            Server(
                "loft_file",
                [
                    *loft_command(),
                    "disk",
                    "serve-file",
                    "--socket",
                    str(work / "loft" / "s.sock"),
                    f"bench={image}",
                ],
                work / "loft" / "s.sock",
                "bench",
            )
        )
        servers.append(
            Server(
                "nbdkit_file",
                ["nbdkit", "-f", "-U", str(work / "nbdkit.sock"), "file", str(image)],
                work / "nbdkit.sock",
                "",
            )
        )
        volumes: list[Server] = []
        n_cold = args.pairs * (2 if args.busy else 1)
        if args.volume:
            url = f"file://{work / 'chunks'}"
            volumes.append(VolumeServer("loft_volume", work / "vol", url, image, n_cold))
        if args.tmpfs:
            shm = Path(tempfile.mkdtemp(prefix="loft-nbd-bench-", dir=args.tmpfs_dir))
            stack.callback(shutil.rmtree, shm, ignore_errors=True)
            url = f"file://{shm / 'chunks'}"
            volumes.append(
                VolumeServer("loft_volume_tmpfs", work / "vol-tmpfs", url, image, n_cold)
            )
        if args.s3:
            weed = stack.enter_context(seaweedfs())
            url = weed.url("loft-bench", "nbd")
            volumes.append(
                VolumeServer("loft_volume_s3", work / "vol-s3", url, image, n_cold, weed.env())
            )
        servers += volumes
        results: dict[str, Any] = {}
        plan = [(w, False) for w in workloads] + (
            [(w, True) for w in workloads] if args.busy else []
        )
        for wname, busy in plan:
            wl = WORKLOADS[wname]
            runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
            for i in range(args.pairs):
                order = servers if i % 2 == 0 else list(reversed(servers))
                for s in order:
                    runs[s.name].append(
                        run_fio(
                            s,
                            wl,
                            size,
                            args.runtime,
                            work / "fio.json",
                            busy=busy,
                            ramp=args.sustain_ramp,
                            flush_mib=args.flush_mib,
                        )
                    )
            if busy:
                wname += "_busy"
            metric = "MBps" if wl["bs"] == "1M" else "iops"
            entry: dict[str, Any] = {"metric": metric}
            for name, rs in runs.items():
                entry[name] = summarize(rs, metric)
            base = entry["nbdkit_file"][f"median_{metric}"]
            for name in runs:
                if name != "nbdkit_file":
                    entry[f"ratio_{name}"] = round(entry[name][f"median_{metric}"] / base, 3)
            results[wname] = entry
            print(json.dumps({wname: entry}), file=sys.stderr)
        kit = servers[1]
        cold: dict[str, Any] = {}
        for busy in (False, True) if args.busy else (False,):
            for vol in volumes:
                key = vol.name + ("_busy" if busy else "")
                cold[key] = cold_fork_read(vol, kit, size, args.pairs, work / "fio.json", busy)
                print(json.dumps({f"cold_fork_seq_read_1M_{key}": cold[key]}), file=sys.stderr)
        summary: dict[str, Any] = {}
        for name in (s.name for s in servers if s.name != "nbdkit_file"):
            # The goal of the drained comparison; sustained and busy runs have their own.
            drained = [w for w in results if w in WORKLOADS and "sustained" not in WORKLOADS[w]]
            ratios = [results[w][f"ratio_{name}"] for w in drained]
            if not ratios:
                continue
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            summary[name] = {
                "geomean_ratio": round(geo, 3),
                "min_ratio": min(ratios),
                "goal_met": geo >= 1.0 and min(ratios) >= 0.9,
            }
        goals: dict[str, Any] = {}
        for name in (v.name for v in volumes):
            mine: dict[str, Any] = {}
            sustained = results.get("seq_write_1M_sustained", {}).get(f"ratio_{name}")
            if sustained is not None:
                mine["sustained_seq_write_ge_0.7"] = [sustained, sustained >= 0.7]
            busy_reads = results.get("rand_read_4k_busy", {}).get(f"ratio_{name}")
            if busy_reads is not None:
                mine["busy_rand_read_4k_ge_0.7"] = [busy_reads, busy_reads >= 0.7]
            if name in cold:
                want, got = 0.35 if name.endswith("_s3") else 0.5, cold[name]["ratio"]
                mine[f"cold_fork_read_ge_{want}"] = [got, got >= want]
                # What the fetch's own I/O allows: a cold lane at its floor cannot reach
                # a goal above it whatever the server does.
                mine["cold_fork_io_floor_ratio"] = cold[name]["floor_ratio"]
            goals[name] = mine
        print(
            json.dumps(
                {
                    "question": "loft NBD server vs nbdkit file, same backing file, fio nbd engine",
                    "pairs": args.pairs,
                    "runtime_s": args.runtime,
                    "size": size,
                    "cpus": os.cpu_count(),
                    "loadavg_1m_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
                    "workloads": results,
                    "cold_fork_seq_read_1M": cold,
                    "summary": summary,
                    "goals": goals,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()

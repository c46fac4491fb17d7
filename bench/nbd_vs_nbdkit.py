"""Is loft's NBD server as fast as nbdkit on the same backing file?

fio (``--ioengine=nbd``, one connection, Unix socket) against ``loft disk serve-file``
and ``nbdkit file`` serving the same file on the same disk, alternating run by run
(loft first in even pairs, nbdkit first in odd ones) so drift on a shared machine hits
both alike. With ``--volume`` a loft volume (warm: every extent resident) joins the
rotation, and fresh forks of it are read end to end (cold: every extent fetched from the
chunk store) against nbdkit reading the same bytes.

Per workload: the median of each server's runs, the ratio of medians (loft / nbdkit),
and server CPU microseconds per request (utime+stime of the server process over the
run divided by the requests fio completed). Summary: geometric mean of the ratios.
Goal: geomean >= 1.0 and no workload below 0.9.

    python bench/nbd_vs_nbdkit.py [--pairs 5] [--runtime 5] [--size 1G] [--volume]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

WORKLOADS = {
    "seq_read_1M": {"rw": "read", "bs": "1M", "iodepth": 8},
    "seq_write_1M": {"rw": "write", "bs": "1M", "iodepth": 8},
    "rand_read_4k": {"rw": "randread", "bs": "4k", "iodepth": 32},
    "rand_write_4k": {"rw": "randwrite", "bs": "4k", "iodepth": 32},
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_socket(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)


def loft_command() -> list[str]:
    exe = Path(sys.executable).parent / "loft"
    return (
        [str(exe)] if exe.exists() else [sys.executable, "-c", "from loft.cli import main; main()"]
    )


class Server:
    def __init__(self, name: str, cmd: list[str], sock: Path, export: str) -> None:
        self.name = name
        self.sock = sock
        self.uri = f"nbd+unix:///{export}?socket={sock}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_socket(sock, self.proc, name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_fio(
    server: Server, workload: dict[str, Any], size: int, runtime: float, out: Path
) -> dict[str, float]:
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
        "--ramp_time=1",
        "--output-format=json",
        f"--output={out}",
    ]
    # Start every run with no dirty pages left over: otherwise whichever server runs after
    # a write workload pays for the previous run's writeback.
    os.sync()
    before = cpu_seconds(server.proc.pid)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = cpu_seconds(server.proc.pid)
    job = json.loads(out.read_text())["jobs"][0]
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    # CPU over the whole fio run (ramp included) divided by every request it made.
    elapsed_total = runtime + 1
    total_ios = ios * elapsed_total / runtime if ios else 0
    return {
        "MBps": side["bw_bytes"] / 1e6,
        "iops": side["iops"],
        "cpu_us_per_req": (after - before) * 1e6 / total_ios if total_ios else float("nan"),
    }


def read_once(uri: str, size: int, out: Path) -> float:
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
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = json.loads(out.read_text())["jobs"][0]
    return float(job["read"]["bw_bytes"]) / 1e6


def cold_fork_read(servers: list[Server], size: int, pairs: int, out: Path) -> dict[str, Any]:
    """A fresh fork read end to end (every extent fetched from the chunk store, chunk
    cache off) vs nbdkit reading the same bytes from the page cache, alternating."""
    vol = next(s for s in servers if s.name == "loft_volume")
    kit = next(s for s in servers if s.name == "nbdkit_file")
    cold_runs, kit_runs = [], []
    for i in range(pairs):
        cold_uri = vol.uri.replace("/bench?", f"/cold{i}?")
        if i % 2:
            kit_runs.append(read_once(kit.uri, size, out))
            cold_runs.append(read_once(cold_uri, size, out))
        else:
            cold_runs.append(read_once(cold_uri, size, out))
            kit_runs.append(read_once(kit.uri, size, out))
    cold_med, kit_med = statistics.median(cold_runs), statistics.median(kit_runs)
    return {
        "metric": "MBps",
        "loft_volume_cold_fork": {
            "median_MBps": round(cold_med, 1),
            "runs_MBps": [round(r, 1) for r in cold_runs],
        },
        "nbdkit_file_warm": {
            "median_MBps": round(kit_med, 1),
            "runs_MBps": [round(r, 1) for r in kit_runs],
        },
        "ratio": round(cold_med / kit_med, 3),
    }


def serve_volume(root: Path, image: Path, sock: Path, n_cold: int) -> None:
    """Child mode: import ``image`` into a fresh loft volume and serve it until SIGTERM,
    with ``n_cold`` forks of it (``cold0``...) whose extents are all still in the chunk
    store (the node's chunk cache is off, so a first read really fetches)."""
    import asyncio

    import uvloop

    from loft.blockstore import Blockstore
    from loft.config import Settings
    from loft.nbd.backends.volume import VolumeBackend
    from loft.nbd.server import ExportRegistry, NBDServer

    (root / "catalog").mkdir(parents=True, exist_ok=True)
    settings = Settings(
        data_dir=root / "node",
        chunks_url=f"file://{root / 'chunks'}",
        catalog_url=f"sqlite:///{root / 'catalog' / 'c.db'}",
        cache_bytes=8 << 30,
        chunk_cache_bytes=0,
    )
    bs = Blockstore.from_settings(settings)
    size = image.stat().st_size
    bs.create("bench", size=size)
    vol = bs.open("bench")
    with open(image, "rb") as f:
        off = 0
        while chunk := f.read(8 << 20):
            vol.write(off, chunk)
            off += len(chunk)
    vol.flush()
    vol.commit()
    vol.close()
    bs.snapshot("bench", "base")
    vol = bs.open("bench")  # warm: the working copy is still all here
    reg = ExportRegistry()
    reg.add("bench", VolumeBackend(vol))
    cold = []
    for i in range(n_cold):
        bs.fork("bench@base", f"cold{i}")
        cold.append(bs.open(f"cold{i}"))
        reg.add(f"cold{i}", VolumeBackend(cold[-1]))

    async def main() -> None:
        server = NBDServer(reg)
        await server.serve_unix(sock)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.close()

    uvloop.run(main())
    for v in [vol, *cold]:
        v.close()
    bs.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--runtime", type=float, default=5.0)
    ap.add_argument("--size", default="1G", help="backing file size (K/M/G suffix)")
    ap.add_argument("--dir", help="where the backing file lives (default: a temp dir)")
    ap.add_argument("--volume", action="store_true", help="also measure a loft volume")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument(
        "--serve-volume",
        nargs=4,
        metavar=("ROOT", "IMAGE", "SOCK", "NCOLD"),
        help=argparse.SUPPRESS,
    )
    args = ap.parse_args()
    if args.serve_volume:
        root, img, sock, n_cold = args.serve_volume
        serve_volume(Path(root), Path(img), Path(sock), int(n_cold))
        return
    for tool in ("fio", "nbdkit"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install {tool})")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    size = (
        int(args.size[:-1]) * units[args.size[-1].upper()]
        if args.size[-1].isalpha()
        else int(args.size)
    )
    work = Path(tempfile.mkdtemp(prefix="loft-nbd-bench-", dir=args.dir))
    os.chmod(work, 0o700)
    image = work / "backing.img"
    with open(image, "wb") as f:  # real data, so neither server can answer with holes
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            f.write(block)
    servers: list[Server] = []
    load_start = os.getloadavg()
    try:
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
        if args.volume:
            servers.append(
                Server(
                    "loft_volume",
                    [
                        sys.executable,
                        __file__,
                        "--serve-volume",
                        str(work / "vol"),
                        str(image),
                        str(work / "volsock" / "s.sock"),
                        str(args.pairs),
                    ],
                    work / "volsock" / "s.sock",
                    "bench",
                )
            )
        results: dict[str, Any] = {}
        for wname in args.workloads.split(","):
            wl = WORKLOADS[wname]
            runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in servers}
            for i in range(args.pairs):
                order = servers if i % 2 == 0 else list(reversed(servers))
                for s in order:
                    runs[s.name].append(run_fio(s, wl, size, args.runtime, work / "fio.json"))
            metric = "MBps" if wl["bs"] == "1M" else "iops"
            entry: dict[str, Any] = {"metric": metric}
            for name, rs in runs.items():
                entry[name] = {
                    f"median_{metric}": round(statistics.median(r[metric] for r in rs), 1),
                    f"runs_{metric}": [round(r[metric], 1) for r in rs],
                    "cpu_us_per_req": round(statistics.median(r["cpu_us_per_req"] for r in rs), 2),
                }
            base = entry["nbdkit_file"][f"median_{metric}"]
            for name in runs:
                if name != "nbdkit_file":
                    entry[f"ratio_{name}"] = round(entry[name][f"median_{metric}"] / base, 3)
            results[wname] = entry
            print(json.dumps({wname: entry}), file=sys.stderr)
        cold: dict[str, Any] | None = None
        if args.volume:
            cold = cold_fork_read(servers, size, args.pairs, work / "fio.json")
            print(json.dumps({"cold_fork_seq_read_1M": cold}), file=sys.stderr)
        summary: dict[str, Any] = {}
        for name in (s.name for s in servers if s.name != "nbdkit_file"):
            ratios = [results[w][f"ratio_{name}"] for w in results]
            geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            summary[name] = {
                "geomean_ratio": round(geo, 3),
                "min_ratio": min(ratios),
                "goal_met": geo >= 1.0 and min(ratios) >= 0.9,
            }
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
                },
                indent=2,
            )
        )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

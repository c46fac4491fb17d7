"""How long does a CLI command that goes through the API take, interpreter start included?

``loft ls`` and ``loft snap NAME`` against a real ``loft up`` (disk service, node agent,
control plane; one running workspace on real runc), as root on the node (the control
plane's local socket), wall time of the whole process. Goal: <= 150 ms.

Anchors in the same run: ``python -c pass`` (the interpreter alone), ``loft --help``
(click and the command table), the same two requests made in-process with the light
client (the round trip without an interpreter), ``loft node info`` (a request straight
to the node agent, root only), ``loft snap`` of the workspace once stopped (no
filesystem to freeze), and FIFREEZE alone on a fresh loop-mounted ext4 (what freezing a
filesystem costs this kernel before any I/O: a running workspace's snapshot freezes its
filesystem). ``python -X importtime`` of ``loft ls`` gives
the imports that cost most (cumulative microseconds). LOFT_BENCH_N (default 20) sets the
rounds. Needs root, runc and catatonit. Prints JSON.

loft's modules are compiled to bytecode first, as ``pip install`` does for a package it
installs and as the first run does wherever Python may write ``__pycache__``: under
PYTHONDONTWRITEBYTECODE an editable install would compile every module on every run
(~20 ms here), which is not what a user's CLI does.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import emit, log, stats_ms
from _loftup import LOFT, Loft, loft_up

N = int(os.environ.get("LOFT_BENCH_N", "20"))
#: The import-time findings worth listing.
TOP_IMPORTS = 12


def wall(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - t


def rounds(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    wall(argv, env)  # warm the page cache
    return stats_ms([wall(argv, env) for _ in range(N)])


def stopped_snaps(up: Loft, snaps: Iterator[int]) -> dict[str, Any]:
    """``loft snap`` rounds of the workspace stopped (its volume is snapshotted without
    a filesystem to freeze), then started again for what follows."""
    up.loft("stop", "bench")
    times = [wall([LOFT, "snap", "bench", f"s{next(snaps)}"], up.env) for _ in range(N)]
    up.loft("start", "bench")
    return stats_ms(times)


def in_process(up: Loft) -> dict[str, Any]:
    from loft.client import Client

    os.environ["LOFT_DATA_DIR"] = up.env["LOFT_DATA_DIR"]
    with Client.light(f"unix://{up.data_dir / 'run' / 'api.sock'}") as c:
        c.workspaces()
        ls, snap = [], []
        for i in range(N):
            t = time.perf_counter()
            c.workspaces()
            ls.append(time.perf_counter() - t)
            t = time.perf_counter()
            c.snapshot("bench", f"inproc-{i}")
            snap.append(time.perf_counter() - t)
    return {"ls": stats_ms(ls), "snap": stats_ms(snap)}


def fifreeze(rounds: int) -> dict[str, Any]:
    """FIFREEZE of a fresh, loop-mounted ext4 with a little dirty data synced first."""
    from loft.runtime.freeze import freeze, thaw

    with tempfile.TemporaryDirectory(prefix="loft-bench-freeze-") as tmp:
        image, mnt = Path(tmp) / "fs.img", Path(tmp) / "mnt"
        with open(image, "wb") as f:
            f.truncate(256 << 20)
        mnt.mkdir()
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
        times = []
        try:
            for i in range(rounds):
                (mnt / f"f{i}").write_bytes(b"x" * 10000)
                os.sync()
                t = time.perf_counter()
                freeze(mnt)
                times.append(time.perf_counter() - t)
                thaw(mnt)
                time.sleep(0.1)
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    return stats_ms(times)


def import_times(env: dict[str, str]) -> list[dict[str, Any]]:
    """The costliest imports of ``loft ls`` (cumulative, microseconds)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "loft.cli", "ls"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows: list[dict[str, Any]] = []
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        own, cumulative, name = parts[0].split(":")[1].strip(), parts[1].strip(), parts[2]
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append(
            {
                "module": name.strip(),
                "depth": depth,
                "self_us": int(own),
                "cumulative_us": int(cumulative),
            }
        )
    return sorted(rows, key=lambda r: -int(r["cumulative_us"]))[:TOP_IMPORTS]


def main() -> None:
    import loft

    compileall.compile_dir(os.path.dirname(loft.__file__), quiet=1)
    with loft_up() as up:
        log("creating the workspace")
        up.new("bench")
        env = up.env
        log(f"{N} rounds of each command")
        snaps = iter(range(10**6))
        report = {
            "benchmark": "cli_latency",
            "goal_ms": 150,
            "bytecode": "compiled first, as an installed package has it",
            "loft_ls": rounds([LOFT, "ls"], env),
            "loft_snap": stats_ms(
                [wall([LOFT, "snap", "bench", f"s{next(snaps)}"], env) for _ in range(N)]
            ),
            "anchors": {
                "loft_snap_stopped": stopped_snaps(up, snaps),
                "fifreeze_loop_ext4": fifreeze(N),
                "python_c_pass": rounds([sys.executable, "-c", "pass"], env),
                "loft_help": rounds([LOFT, "--help"], env),
                "loft_node_info": rounds([LOFT, "node", "info"], env),
                "in_process_light_client": in_process(up),
            },
            "importtime_loft_ls_top": import_times(env),
        }
    emit(report)


if __name__ == "__main__":
    main()

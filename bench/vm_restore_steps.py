"""Where a VM's restore spends its time, on a data dir that copies and on one that
reflinks, side by side in one run.

A live fork of a 256 MiB guest (64 MiB written to its tmpfs, so its memory image holds
~90 MiB) is restored LOFT_BENCH_N times (default 5) on a data dir on the benchmark's
disk (ext4 here: the RAM file is copied, data ranges only) and on one on XFS with
reflinks, loop-backed by a file on that same disk (the RAM file shares the image's
blocks; the guest pages them in). Each step of ``VmRuntime.restore`` is timed in place:
the RAM file's copy, QEMU started, the state loaded, ``cont`` to the agent's answer
(the guest's first page faults), the restore's last steps (clock, RNG, MAC); then the
first command's round trip and QEMU's resident memory. Needs root, QEMU, ``mkfs.xfs``
and ``make guest``. Prints JSON.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import ROOT, emit, log, stats_ms, workdir

for sub in ("runtime", "node", "interop", "envstore"):
    sys.path.insert(0, str(ROOT / "tests" / sub))

from vm_support import sh, vms, xfs_mount  # noqa: E402

import loft.runtime.vm as vm_module  # noqa: E402
from loft.runtime.spec import ExecRequest  # noqa: E402

N = int(os.environ.get("LOFT_BENCH_N", "5"))
#: The steps of a restore, by the name of what runs them (module functions, then methods).
STEPS = {"copy_sparse": "ram_copy", "load_state": "load_state",
         "connect_agent": "cont_to_agent_ready"}  # fmt: skip
METHODS = {"_launch": "qemu_started", "_after_restore": "clock_rng_mac"}


@contextmanager
def timed_steps() -> Iterator[dict[str, list[float]]]:
    """Every call of a restore's steps timed (seconds, by step) while inside."""
    times: dict[str, list[float]] = {}
    saved: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, step: str) -> None:
        f: Callable[..., Any] = getattr(owner, name)
        saved.append((owner, name, f))

        @functools.wraps(f)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.monotonic()
            try:
                return f(*args, **kwargs)
            finally:
                times.setdefault(step, []).append(time.monotonic() - t0)

        setattr(owner, name, timed)

    for name, step in STEPS.items():
        wrap(vm_module, name, step)
    for name, step in METHODS.items():
        wrap(vm_module.VmRuntime, name, step)
    try:
        yield times
    finally:
        for owner, name, f in saved:
            setattr(owner, name, f)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def measure(root: Path) -> dict[str, Any]:
    """Live forks restored on a data dir under ``root``: each step's times."""
    steps: dict[str, list[float]] = {}
    total, first, rss = [], [], []
    with vms(root) as node:
        rt = node.runtime
        for i in range(N):
            src = node.spec(name=f"s{i}")
            rt.start(src)
            sh(node, src.id, "head -c 67108864 /dev/zero > /dev/shm/fill")
            rt.freeze(src.id)
            snap = rt.snapshot(src.id)
            node.node.node.loft("volume", "snapshot", src.id, "f")
            node.node.node.loft("volume", "fork", f"{src.id}@f", f"f{i}")
            rt.thaw(src.id)
            fork = node.spec(name=f"f{i}", volume=False)
            with timed_steps() as times:
                t0 = time.monotonic()
                st = rt.restore(fork, snap, fork=True)
                total.append(time.monotonic() - t0)
            for step, samples in times.items():
                steps.setdefault(step, []).extend(samples)
            t0 = time.monotonic()
            done = rt.run(fork.id, ExecRequest(("echo", "hi")), timeout=60)
            assert done.stdout == b"hi\n", done
            first.append(time.monotonic() - t0)
            rss.append(_rss_mib(st.pid))
            rt.stop(fork.id)
            rt.stop(src.id)
            log(f"{root}: restore {total[-1] * 1000:.0f} ms")
    return {
        "restore": stats_ms(total),
        **{step: stats_ms(samples) for step, samples in steps.items()},
        "first_command_after": stats_ms(first),
        "resident_after_first_command_mib": sorted(rss)[len(rss) // 2],
    }


def main() -> None:
    with workdir("vm-restore") as tmp:
        fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(tmp)],
                            check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        copying = measure(tmp / "plain")
        with xfs_mount(tmp, 8 << 30) as mnt:
            reflinking = measure(mnt)
    emit({"benchmark": "vm_restore_steps", "rounds": N, "memory_mib": 256,
          "results": {f"data_dir_{fs}": copying, "data_dir_xfs_loop": reflinking}})  # fmt: skip


if __name__ == "__main__":
    main()

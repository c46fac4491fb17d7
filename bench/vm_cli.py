"""How long do a VM workspace's operations take through the CLI, as a user sees them?

Against a real ``loft up`` (disk service, node agent, control plane; QEMU TCG, a 256 MiB
guest), wall time of the CLI processes, as root on the node (the control plane's local
socket):

- ``loft new --runtime vm`` -> the first output of ``loft exec`` (boot);
- ``loft stop`` (a suspend, and the upload of its image to the chunk store), and a
  second ``loft stop`` after ``start`` and 1 MiB written (an incremental upload);
- ``loft start`` -> the first output of ``loft exec`` (warm resume);
- ``loft fork --live`` -> the first output of ``loft exec`` in the fork.

Anchors in the same run: the same operations on a sandbox (runc), and a ``loft exec``
in a running VM alone (the CLI's own round trip). LOFT_BENCH_N (default 3) sets the
rounds. Needs root, runc, QEMU and ``make guest``. Prints JSON.
"""

from __future__ import annotations

import os
import time
from typing import Any

from _common import ROOT, emit, log, stats_ms
from _loftup import Loft, loft_up

N = int(os.environ.get("LOFT_BENCH_N", "3"))


def _echo(up: Loft, name: str) -> None:
    out = up.loft("exec", name, "--", "echo", "hi").stdout
    assert out == "hi\n", out


def _new(up: Loft, name: str, *args: str) -> None:
    up.loft("new", name, "--spec", str(up.lock_file), "--size", "1G", "--memory", "256M", *args)


def measure(up: Loft, runtime: str) -> dict[str, Any]:
    new, stop, stop2, start, fork, exec_ = [], [], [], [], [], []
    for i in range(N):
        name = f"{runtime[:2]}{i}"
        t0 = time.monotonic()
        _new(up, name, "--runtime", runtime)
        _echo(up, name)
        new.append(time.monotonic() - t0)
        t0 = time.monotonic()
        _echo(up, name)
        exec_.append(time.monotonic() - t0)
        t0 = time.monotonic()
        up.loft("stop", name)
        stop.append(time.monotonic() - t0)
        t0 = time.monotonic()
        up.loft("start", name)
        _echo(up, name)
        start.append(time.monotonic() - t0)
        up.loft("exec", name, "--", "sh", "-c", "head -c 1048576 /dev/urandom > /tmp/more")
        t0 = time.monotonic()
        up.loft("stop", name)
        stop2.append(time.monotonic() - t0)
        up.loft("start", name)
        if runtime == "vm":
            t0 = time.monotonic()
            up.loft("fork", name, f"{name}-f", "--live")
            _echo(up, f"{name}-f")
            fork.append(time.monotonic() - t0)
            up.loft("rm", f"{name}-f")
        up.loft("rm", name)
        log(f"{runtime} round {i}: new {new[-1]:.2f} s, stop {stop[-1]:.2f} s, "
            f"start {start[-1]:.2f} s")  # fmt: skip
    out = {
        "new_to_first_exec_output": stats_ms(new),
        "exec_round_trip": stats_ms(exec_),
        "stop": stats_ms(stop),
        "second_stop_after_a_little_work": stats_ms(stop2),
        "start_to_first_exec_output": stats_ms(start),
    }
    if fork:
        out["fork_live_to_first_exec_output_in_the_fork"] = stats_ms(fork)
    return out


def main() -> None:
    os.environ.setdefault("LOFT_VM_GUEST", str(ROOT / "build" / "guest"))
    with loft_up() as up:
        vm = measure(up, "vm")
        sandbox = measure(up, "sandbox")
    emit({"benchmark": "vm_cli", "accel": "tcg", "rounds": N, "vm": vm, "anchor_sandbox": sandbox})


if __name__ == "__main__":
    main()

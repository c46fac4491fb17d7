"""What does outbound networking (``nat``) cost a VM workspace, and how fast is it?

On real QEMU (TCG, ``-M microvm``, one vCPU, 256 MiB) with the workspace volume served by
loft's disk service, and the "outside" of tests/runtime/egress_support.py (network
namespaces on this machine, nothing leaves it), alternating rounds of:

- boot -> agent ready and warm resume -> first output, for a VM without a NIC
  (``none``, the anchor) and one with (``nat``: its network namespace, policy and
  slirp4netns made before QEMU starts, the guest's ``eth0`` configured by its init);
- a 64 MiB HTTP download into the ``nat`` guest (busybox ``wget`` to ``/dev/null``) from
  a server behind the stack, and as the anchor the same download by ``python3`` from the
  stack's own namespace (no VM, no slirp).

LOFT_BENCH_N (default 3) sets the rounds. Needs root, QEMU and ``make guest``. Prints JSON.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from _common import ROOT, emit, log, stats_ms, workdir

for sub in ("runtime", "node", "interop", "envstore"):
    sys.path.insert(0, str(ROOT / "tests" / sub))

from egress_support import ALLOWED, BULK_BYTES, BULK_PORT, outside  # noqa: E402
from vm_support import vms  # noqa: E402

from loft.runtime.spec import ExecRequest, Network  # noqa: E402
from loft.runtime.vm import VmRuntime  # noqa: E402

N = int(os.environ.get("LOFT_BENCH_N", "3"))
URL = f"http://{ALLOWED}:{BULK_PORT}/"
_FETCH = (
    "import sys, urllib.request\n"
    "n = 0\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=60) as r:\n"
    "    while b := r.read(1 << 20): n += len(b)\n"
    "print(n)\n"
)


def _echo(rt: VmRuntime, ws: str) -> None:
    done = rt.run(ws, ExecRequest(("echo", "hi")), timeout=60)
    assert done.stdout == b"hi\n", done


def _download(rt: VmRuntime, ws: str) -> float:
    t0 = time.monotonic()
    done = rt.run(ws, ExecRequest(("sh", "-c", f"wget -q -O - {URL} | wc -c"), user=0, cwd="/"),
                  timeout=300)  # fmt: skip
    seconds = time.monotonic() - t0
    assert done.status == 0 and int(done.stdout) == BULK_BYTES, done
    return seconds


def _download_direct(egress: str) -> float:
    t0 = time.monotonic()
    out = subprocess.run(["ip", "netns", "exec", egress, "python3", "-c", _FETCH, URL],
                         capture_output=True, check=True, timeout=300).stdout  # fmt: skip
    seconds = time.monotonic() - t0
    assert int(out) == BULK_BYTES
    return seconds


def main() -> None:
    boot: dict[str, list[float]] = {"none": [], "nat": []}
    resume: dict[str, list[float]] = {"none": [], "nat": []}
    guest: list[float] = []
    direct: list[float] = []
    with outside() as egress, workdir("vm-net") as root, vms(root, egress) as node:
        rt = node.runtime
        for i in range(N):
            for net in (Network.NONE, Network.NAT):
                spec = node.spec(network=net)
                t0 = time.monotonic()
                rt.start(spec)
                boot[net.value].append(time.monotonic() - t0)
                rt.suspend(spec.id)
                t0 = time.monotonic()
                rt.resume(spec.id)
                _echo(rt, spec.id)
                resume[net.value].append(time.monotonic() - t0)
                if net is Network.NAT:
                    guest.append(_download(rt, spec.id))
                    direct.append(_download_direct(egress.name))
                rt.stop(spec.id)
            log(f"round {i + 1}/{N}: boot {boot['none'][-1]:.2f}/{boot['nat'][-1]:.2f} s, "
                f"download {BULK_BYTES / guest[-1] / 2**20:.1f} MiB/s")  # fmt: skip
    mib = BULK_BYTES / 2**20
    result: dict[str, Any] = {
        "boot_to_agent": {k: stats_ms(v) for k, v in boot.items()},
        "warm_resume_to_first_output": {k: stats_ms(v) for k, v in resume.items()},
        "download_mib": mib,
        "download_into_guest": stats_ms(guest),
        "download_into_guest_mib_s": round(mib / sorted(guest)[len(guest) // 2], 1),
        "anchor_download_in_stack_namespace": stats_ms(direct),
        "anchor_download_mib_s": round(mib / sorted(direct)[len(direct) // 2], 1),
    }
    emit({"benchmark": "vm_net", "accel": "tcg", "memory_mib": 256, "rounds": N, **result})


if __name__ == "__main__":
    main()

"""How fast does a VM workspace boot, suspend and resume, and what does a resumed one hold?

On real QEMU (TCG, ``-M microvm``, one vCPU) with the workspace volume served by loft's
disk service, for guests of 256 MiB and 1 GiB, each with 64 MiB written to its tmpfs
(touched RAM), agent-side times:

- boot -> agent ready (``start`` returns once the guest agent answers), and the first
  command's round trip (``echo``);
- suspend (``stop`` + device state saved beside the RAM file), hot resume (``cont``),
  warm resume (a new QEMU maps the RAM file and loads the state), each to the first
  command's output after it;
- the state file's size, and QEMU's resident memory right after a warm resume and after
  the first command (pages come in from the RAM file as the guest touches them);
- a live fork: the memory snapshot alone, and the source's whole pause (freeze, memory
  image, volume snapshot through the CLI, thaw), then
  the fork's restore to its first command's output and its resident memory; and the
  suspend of that fork;
- the image uploaded to the chunk store (and what it stores), then a cold restore with
  the node's images removed, to the first command's output;
- a suspend image into the chunk store (``upload_suspend``: time, extents written, bytes
  of new chunks: round 0 into an empty store, later rounds share chunks with the VMs
  before them), and a second suspend + upload of the same VM after it ran a little
  (1 MiB written, 1 s): what an incremental upload costs; then a cold resume on an empty
  data dir (a runtime of its own, an empty chunk cache): fetch from the chunk store,
  warm resume, first command's output;
- the suspend of a restored VM (a live fork), now that it runs on its own sparse copy
  of the image's RAM, against the same fork restored the way it was before (the image
  mapped ``share=off``, whose suspend streams all of its RAM): restore time and suspend
  time and size of each.

Anchor in the same run: the classic way to save the same running guest, a migration of
its whole RAM to a file (``migrate`` without ``x-ignore-shared``), time and bytes.
Goals (issue 14, TCG): boot <= 3 s, warm resume <= 0.5 s, live fork <= 1 s, cold
resume of a 256 MB guest <= 3 s.
LOFT_BENCH_N (default 5) sets the rounds. Needs root, QEMU and ``make guest``. Prints JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit, log, stats_ms, workdir

for sub in ("runtime", "node", "interop", "envstore"):
    sys.path.insert(0, str(ROOT / "tests" / sub))

from vm_support import GUEST, vms  # noqa: E402

from loft.blockstore import Blockstore  # noqa: E402
from loft.config import Settings  # noqa: E402
from loft.runtime.interface import RuntimeSnapshot  # noqa: E402
from loft.runtime.persist import write_private  # noqa: E402
from loft.runtime.spec import ExecRequest, WorkspaceSpec  # noqa: E402
from loft.runtime.vm import VmRuntime  # noqa: E402
from loft.runtime.vm_image import decode_record  # noqa: E402
from loft.runtime.vm_migrate import load_state  # noqa: E402
from loft.runtime.vm_process import connect_agent, launch  # noqa: E402
from loft.runtime.vm_qemu import GuestImage  # noqa: E402

N = int(os.environ.get("LOFT_BENCH_N", "5"))
MIB = 1 << 20
#: The disk root a suspend image is said to belong with (the runtime does not check it).
DISK = "d" * 64


def _echo(rt: VmRuntime, ws: str) -> float:
    t0 = time.monotonic()
    done = rt.run(ws, ExecRequest(("echo", "hi")), timeout=60)
    assert done.stdout == b"hi\n", done
    return time.monotonic() - t0


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    return 0


def _full_migration(rt: VmRuntime, ws: str, dest: Path) -> dict[str, Any]:
    """The anchor: the same guest's whole RAM and devices migrated to a file."""
    qmp = rt._live[ws].qmp
    qmp.execute("stop")
    qmp.execute("migrate-set-capabilities",
                {"capabilities": [{"capability": "x-ignore-shared", "state": False}]})  # fmt: skip
    qmp.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    t0 = time.monotonic()
    qmp.execute("migrate", {"uri": f"exec:cat > {dest}"})
    while (qmp.execute("query-migrate") or {}).get("status") not in ("completed", "failed"):
        time.sleep(0.005)
    seconds = time.monotonic() - t0
    qmp.execute("cont")
    size = dest.stat().st_size
    dest.unlink()
    return {"seconds": round(seconds, 3), "bytes": size}


def _restore_shared_image(rt: VmRuntime, spec: WorkspaceSpec, snap: RuntimeSnapshot) -> None:
    """The anchor: a restore as it was before each VM got its own RAM file, the image's
    RAM mapped ``share=off`` (named in ``ram.json``, which the runtime still reads)."""
    rec = decode_record(snap.state)
    rt._prepare(spec, rt.memory_images.env(rec))
    write_private(rt.dir(spec.id) / "ram.json", json.dumps(
        {"image": rec.ram_from, "memory_mib": rec.memory_mib}).encode())  # fmt: skip
    vm = launch(spec, rt._machine(spec), GuestImage.at(GUEST), incoming=True)
    rt._live[spec.id] = vm
    load_state(vm.qmp, rt.images / rec.image / "state")
    rt._cont(vm)
    vm.agent = connect_agent(vm)
    rt._after_restore(vm)


def _cold_resume(node: Any, rt: VmRuntime, spec: WorkspaceSpec, data_dir: Path) -> float:
    """Seconds from nothing on ``data_dir`` to the first output of ``spec`` resumed from
    its suspend image in the chunk store (fetch, warm resume, ``echo``)."""
    data_dir.mkdir(mode=0o700)
    bs = Blockstore.from_settings(
        Settings.from_env({**node.node.node.env, "LOFT_DATA_DIR": str(data_dir)})
    )
    other = VmRuntime(data_dir, rt.disk, guest=GUEST, bs=bs)
    try:
        t0 = time.monotonic()
        assert other.fetch_suspend(spec, DISK)
        other.start(spec)
        _echo(other, spec.id)
        return time.monotonic() - t0
    finally:
        other.stop(spec.id)
        bs.close()


def _stored(node: Any, volume: str) -> dict[str, int]:
    """What the image's volume holds: extents written (not all zeros), bytes stored."""
    info = node.node.bs.info(volume)
    return {"extents_written": info.extents_written, "extents_total": info.extents_total,
            "bytes_stored": info.bytes_stored}  # fmt: skip


def measure(memory: int, root: Path) -> dict[str, Any]:
    boot, first, suspend, hot, warm = [], [], [], [], []
    pause, memsnap, fork, resuspend, upload, cold = [], [], [], [], [], []
    up_first, up_second, second_total, cold_resume = [], [], [], []
    stored_first: list[int] = []
    stored_second: list[int] = []
    fork_before, resuspend_before = [], []
    up1: Any = None
    up2: Any = None
    state_bytes = rss_resumed = rss_after = rss_fork = resuspend_bytes = before_bytes = 0
    stored: dict[str, int] = {}
    anchor: dict[str, Any] = {}
    with vms(root) as node:
        rt = node.runtime
        for i in range(N):
            spec = node.spec(memory=memory, name=f"b{memory >> 20}-{i}")
            t0 = time.monotonic()
            rt.start(spec)
            boot.append(time.monotonic() - t0)
            first.append(_echo(rt, spec.id))
            done = rt.run(
                spec.id,
                ExecRequest(("sh", "-c", "head -c 67108864 /dev/zero > /dev/shm/fill"), user=0),
            )
            assert done.status == 0, done
            # hot: suspend keeping QEMU, cont
            t0 = time.monotonic()
            rt.suspend(spec.id, keep=True)
            suspend.append(time.monotonic() - t0)
            t0 = time.monotonic()
            rt.resume(spec.id)
            _echo(rt, spec.id)
            hot.append(time.monotonic() - t0)
            # warm: QEMU quits, a new one resumes from the RAM file and the state
            rt.suspend(spec.id)
            state_bytes = (rt.dir(spec.id) / "state").stat().st_size
            t0 = time.monotonic()
            st = rt.resume(spec.id)
            rss_resumed = _rss(st.pid)
            _echo(rt, spec.id)
            warm.append(time.monotonic() - t0)
            rss_after = _rss(st.pid)
            if i == 0:
                anchor = _full_migration(rt, spec.id, root / "full-state")
            # the suspend image into the chunk store (before this VM's memory snapshot,
            # whose chunks it would share); again after it ran a little
            rt.suspend(spec.id)
            up1 = rt.upload_suspend(spec.id, DISK)
            up_first.append(up1.seconds)
            stored_first.append(up1.stored_bytes)
            rt.resume(spec.id)
            little = "head -c 1048576 /dev/urandom > /dev/shm/more; sleep 1"
            assert rt.run(spec.id, ExecRequest(("sh", "-c", little), user=0)).status == 0
            t0 = time.monotonic()
            rt.suspend(spec.id)
            up2 = rt.upload_suspend(spec.id, DISK)
            second_total.append(time.monotonic() - t0)
            up_second.append(up2.seconds)
            stored_second.append(up2.stored_bytes)
            rt.resume(spec.id)
            # live fork: freeze, memory image, volume snapshot and fork, thaw; then the fork
            t0 = time.monotonic()
            rt.freeze(spec.id)
            t1 = time.monotonic()
            snap = rt.snapshot(spec.id)
            memsnap.append(time.monotonic() - t1)
            node.node.node.loft("volume", "snapshot", spec.id, "f")
            rt.thaw(spec.id)
            pause.append(time.monotonic() - t0)
            node.node.node.loft("volume", "fork", f"{spec.id}@f", f"{spec.id}-fork")
            fspec = node.spec(memory=memory, name=f"{spec.id}-fork", volume=False)
            t0 = time.monotonic()
            fst = rt.restore(fspec, snap, fork=True)
            _echo(rt, fspec.id)
            fork.append(time.monotonic() - t0)
            rss_fork = _rss(fst.pid)
            # a restored VM runs on its own RAM file: its suspend saves device state only
            t0 = time.monotonic()
            rt.suspend(fspec.id)
            resuspend.append(time.monotonic() - t0)
            resuspend_bytes = (rt.dir(fspec.id) / "state").stat().st_size
            rt.stop(fspec.id)
            # the same fork restored as before: the image mapped share=off
            t0 = time.monotonic()
            _restore_shared_image(rt, fspec, snap)
            _echo(rt, fspec.id)
            fork_before.append(time.monotonic() - t0)
            t0 = time.monotonic()
            rt.suspend(fspec.id)
            resuspend_before.append(time.monotonic() - t0)
            before_bytes = (rt.dir(fspec.id) / "state").stat().st_size
            rt.stop(fspec.id)
            # cold: the image only in the chunk store (as on another node)
            t0 = time.monotonic()
            vol = rt.upload_snapshot(snap)
            upload.append(time.monotonic() - t0)
            stored = _stored(node, vol)
            for image in rt.images.iterdir():
                shutil.rmtree(image)
            t0 = time.monotonic()
            rt.restore(fspec, snap, fork=True)
            _echo(rt, fspec.id)
            cold.append(time.monotonic() - t0)
            rt.stop(fspec.id)
            # cold: the suspend image uploaded once more, then an empty data dir (no VM
            # directory, an empty chunk cache) on the same catalog and chunk store, the
            # disk still served by this node
            rt.suspend(spec.id)
            rt.upload_suspend(spec.id, DISK)
            rt.stop(spec.id)
            cold_resume.append(_cold_resume(node, rt, spec, root / f"node-b-{i}"))
            rt.remove_suspend_upload(spec.id)
            rt.remove_snapshot(snap)
            log(f"{memory >> 20} MiB round {i}: boot {boot[-1]:.2f} s, warm {warm[-1]:.3f} s")
    return {
        "memory_mib": memory >> 20,
        "boot_to_agent_ready": stats_ms(boot),
        "first_command": stats_ms(first),
        "suspend": stats_ms(suspend),
        "hot_resume_to_first_output": stats_ms(hot),
        "warm_resume_to_first_output": stats_ms(warm),
        "state_file_bytes": state_bytes,
        "resident_after_warm_resume_mib": round(rss_resumed / MIB, 1),
        "resident_after_first_command_mib": round(rss_after / MIB, 1),
        "anchor_full_ram_migration": anchor,
        "memory_snapshot": stats_ms(memsnap),
        "snapshot_pause_with_volume_snapshot_cli": stats_ms(pause),
        "live_fork_to_first_output": stats_ms(fork),
        "resident_of_fork_after_first_command_mib": round(rss_fork / MIB, 1),
        "suspend_of_a_restored_vm": stats_ms(resuspend),
        "state_file_bytes_of_a_restored_vm": resuspend_bytes,
        "anchor_restore_sharing_the_image_to_first_output": stats_ms(fork_before),
        "anchor_suspend_of_a_vm_restored_sharing_the_image": stats_ms(resuspend_before),
        "anchor_state_file_bytes_of_a_vm_restored_sharing_the_image": before_bytes,
        "suspend_upload": stats_ms(up_first),
        "suspend_upload_extents_written": f"{up1.extents_written} / {up1.extents_total}",
        "suspend_upload_bytes_stored_by_round": stored_first,
        "second_suspend_upload": stats_ms(up_second),
        "second_suspend_and_upload": stats_ms(second_total),
        "second_suspend_upload_extents_written": up2.extents_written,
        "second_suspend_upload_bytes_stored_by_round": stored_second,
        "cold_resume_from_chunk_store_to_first_output": stats_ms(cold_resume),
        "upload_to_chunk_store": stats_ms(upload),
        "image_volume": stored,
        "cold_restore_to_first_output": stats_ms(cold),
    }


def main() -> None:
    results = []
    for memory in (256 * MIB, 1024 * MIB):
        with workdir("vm") as root:
            results.append(measure(memory, root))
    emit({"benchmark": "vm_ops", "accel": "tcg", "rounds": N, "results": results})


if __name__ == "__main__":
    main()

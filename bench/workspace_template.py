"""Workspace volumes from templates: what a size costs, and build-per-size vs grow.

On a private node (SQLite catalog, file chunk store, a real ``loft disk serve``), for
workspace sizes of 1, 16 and 64 GiB (4 MiB extents), measures:

- ``build``: the template of that size, built once (mkfs + its data ranges + snapshot);
- ``fork``: ``create_workspace_volume`` once the template exists (median of 10);
- ``attach`` / ``detach``: nbdfuse + loop + mount of a fork, and the way back;
- ``first_mount_dirty_extents``: what mounting and unmounting a fresh fork wrote.

And the alternative to one template per size, for 16 and 64 GiB: a fork of the 1 GiB
filesystem in a volume of the target size, grown online with ``resize2fs`` after attach
(``e2fsck -f`` + ``resize2fs``, offline: online growth needs CAP_SYS_RESOURCE, which
some hosts drop from root; its time, and the extents it left dirty, which every such
workspace commits and stores). Build-per-size wins when a build (paid once per node and
size) costs less than what growing costs every workspace.

    .venv/bin/python bench/workspace_template.py [--quick]

Needs root (loop devices, mounts), nbdfuse, e2fsprogs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import GIB, MIB, ROOT, emit, log, stats_ms, workdir

for sub in ("interop", "node", "runtime"):
    sys.path.insert(0, str(ROOT / "tests" / sub))

from attachtool import Served  # noqa: E402

from loft.runtime.attach import attach, detach  # noqa: E402
from loft.runtime.template import (  # noqa: E402
    BASE_SNAPSHOT,
    create_workspace_volume,
    ensure_template,
    format_image,
    write_image,
)

EXTENT = 4 * MIB


def _dirty_extents(s: Served, volume: str) -> int:
    info = json.loads(s.node.loft("volume", "info", volume, "--json").stdout)
    return int(info.get("extents_dirty") or 0)


def _attach_cycle(s: Served, volume: str, workspace: str) -> dict[str, Any]:
    started = time.perf_counter()
    att = attach(s.bs, volume, workspace, socket=s.attach_socket)
    attached = time.perf_counter() - started
    started = time.perf_counter()
    detach(att)
    return {"attach": attached, "detach": time.perf_counter() - started}


def per_size(s: Served, size: int, forks: int) -> dict[str, Any]:
    label = f"{size // GIB}GiB"
    started = time.perf_counter()
    ensure_template(s.bs, size, EXTENT)
    build = time.perf_counter() - started
    fork_times = []
    for i in range(forks):
        started = time.perf_counter()
        create_workspace_volume(s.bs, f"{label}-{i}", size=size, extent_size=EXTENT)
        fork_times.append(time.perf_counter() - started)
    cycles = [_attach_cycle(s, f"{label}-{i}", f"ws-{label}-{i}") for i in range(3)]
    log(f"{label}: build {build:.2f} s, fork {statistics.median(fork_times) * 1000:.1f} ms")
    return {
        "build_s": round(build, 3),
        "fork": stats_ms(fork_times),
        "attach": stats_ms([c["attach"] for c in cycles]),
        "detach": stats_ms([c["detach"] for c in cycles]),
        "first_mount_dirty_extents": _dirty_extents(s, f"{label}-0"),
    }


@contextlib.contextmanager
def _block_device(s: Served, volume: str) -> Iterator[str]:
    """The volume as a loop device on nbdfuse (attach's first two steps, no mount)."""
    with tempfile.TemporaryDirectory(dir=s.data_dir) as d:
        (Path(d) / "fuse").mkdir()
        # The pid file outside the FUSE directory: nbdfuse writes it once mounted there.
        fuse_file, pidfile = Path(d) / "fuse" / "disk", Path(d) / "pid"
        uri = f"nbd+unix:///{volume}?socket={s.attach_socket}"
        fuse = subprocess.Popen(["nbdfuse", "-P", str(pidfile), str(fuse_file), uri])
        try:
            deadline = time.monotonic() + 30
            while not pidfile.exists():
                assert fuse.poll() is None and time.monotonic() < deadline, "nbdfuse failed"
                time.sleep(0.01)
            device = subprocess.run(
                ["losetup", "-f", "--show", "--direct-io=on", str(fuse_file)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            try:
                yield device
            finally:
                subprocess.run(["losetup", "-d", device], check=False)
        finally:
            subprocess.run(["fusermount3", "-u", str(fuse_file.parent)], check=False)
            fuse.wait(30)


def grown(s: Served, size: int) -> dict[str, Any]:
    """A 1 GiB filesystem forked into a ``size`` volume and grown with resize2fs."""
    label = f"grow-{size // GIB}GiB"
    with tempfile.TemporaryDirectory(dir=s.data_dir) as scratch:
        image = format_image(Path(scratch), GIB)
        s.bs.heads.create(
            label, size=size, extent_size=EXTENT, durability="local", commit_interval=5.0
        )
        write_image(s.bs, label, image)
    s.bs.snapshot(label, BASE_SNAPSHOT)
    s.bs.fork(f"{label}@{BASE_SNAPSHOT}", f"{label}-ws")
    # Online growth (resize2fs on the mounted filesystem) needs CAP_SYS_RESOURCE, which
    # this kind of host drops from root: grow it offline, between nbdfuse and the mount.
    started = time.perf_counter()
    with _block_device(s, f"{label}-ws") as device:
        for cmd in (["e2fsck", "-fy", device], ["resize2fs", device]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    grow = time.perf_counter() - started
    dirty = _dirty_extents(s, f"{label}-ws")
    log(f"{label}: e2fsck + resize2fs {grow:.2f} s, {dirty} extents dirty")
    return {"fsck_and_resize2fs_s": round(grow, 3), "dirty_extents": dirty, "dirty_mib": dirty * 4}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer forks")
    args = parser.parse_args()
    forks = 3 if args.quick else 10
    report: dict[str, Any] = {
        "benchmark": "workspace_template",
        "question": "template build, fork, attach per workspace size; build per size vs grow",
        "extent_size": EXTENT,
        "results": {},
    }
    with workdir("template") as root:
        s = Served(root)
        try:
            s.node.serve()
            for size in (GIB, 16 * GIB, 64 * GIB):
                report["results"][f"{size // GIB}GiB"] = per_size(s, size, forks)
            for size in (16 * GIB, 64 * GIB):
                report["results"][f"grow_1GiB_to_{size // GIB}GiB"] = grown(s, size)
        finally:
            s.cleanup()
    emit(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

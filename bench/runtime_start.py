"""How fast does a sandbox workspace start, and what does an idle one cost the node?

On real runc with the example environment (python3 git curl …) and loop-backed ext4
volumes, agent-side time (what the node agent spends; no network, no volume attach):

- create -> first output: ``start`` of a never-started volume (usr-merge links, /etc
  seeded inside) then ``exec echo`` until its first byte arrives;
- stop -> start -> first output: the same volume again (already seeded);
- exec round trip: ``exec true`` to its exit status;
- an idle workspace's cost: the resident memory of every process it keeps (runc itself
  exits after each command: no shim stays), and its cgroup's memory use.

Anchors in the same run: ``runc run`` of a minimal bundle (runc's own spec, no user
namespace, the same environment bound read-only) running ``echo``, and ``bwrap`` running
``echo`` with the same environment at /usr. Goals: both start numbers <= 300 ms.
LOFT_BENCH_N (default 10) sets the rounds. Needs root, runc, catatonit, bwrap. Prints JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import emit, log, stats_ms, workdir
from loft.isolation.userns import IdRange
from loft.runtime.ids import allocate_range
from loft.runtime.interface import Runtime
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.spec import EnvironmentView, ExecRequest, Limits, WorkspaceSpec

N = int(os.environ.get("LOFT_BENCH_N", "10"))
EXAMPLE = """[env]
debian = ["python3", "git", "curl"]
pypi   = ["requests==2.32.3"]
npm    = ["left-pad@1.3.0"]
"""
LOFT = str(Path(sys.executable).with_name("loft"))


def environment(work: Path) -> EnvironmentView:
    """The example environment, locked (and so built) into a store under ``work``."""
    from loft.envstore.lock import loads
    from loft.envstore.store import Store

    project, data = work / "project", work / "envdata"
    project.mkdir()
    (project / "loft.toml").write_text(EXAMPLE)
    env = {**os.environ, "LOFT_DATA_DIR": str(data)}
    subprocess.run([LOFT, "env", "lock"], cwd=project, env=env, check=True, capture_output=True)
    store = Store(data / "envstore")
    env_path = loads((project / "loft.lock").read_text()).env.path
    return EnvironmentView(store.real_store_dir, env_path, tuple(sorted(store.closure([env_path]))))


def volume(work: Path, name: str) -> tuple[Path, str]:
    """A fresh 256 MiB ext4 mounted nosuid,nodev: (mount point, loop device)."""
    image, mnt = work / f"{name}.img", work / name
    with open(image, "wb") as f:
        f.truncate(256 * 2**20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(["mount", "-o", "nosuid,nodev", dev, str(mnt)], check=True)
    return mnt, dev


def first_output(rt: Runtime, workspace: str) -> float:
    """Seconds from now until the first byte of ``echo`` in the workspace arrives."""
    t = time.perf_counter()
    proc = rt.exec(workspace, ExecRequest(("echo", "ready")), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    elapsed = time.perf_counter() - t
    proc.communicate()
    assert first == b"r", first
    return elapsed


def idle_cost(rt: SandboxRuntime, workspace: str) -> dict[str, int]:
    """Resident memory of the workspace's processes (its pid namespace) and its cgroup."""
    init = rt.status(workspace).pid
    ns = os.readlink(f"/proc/{init}/ns/pid")
    rss = procs = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            procs += 1
        except OSError:
            continue
    return {"processes": procs, "rss_bytes": rss, "cgroup_bytes": rt.stats(workspace).memory}


def anchor_runc(work: Path, env: EnvironmentView) -> list[float]:
    """``runc run`` of runc's own default spec, rootfs with the env at /usr, echo."""
    bundle, rootfs = work / "anchor", work / "anchor" / "rootfs"
    rootfs.mkdir(parents=True)
    for name in ("usr", "nix/store", "proc", "dev", "sys", "tmp"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        (rootfs / name).symlink_to(f"usr/{name}")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["/usr/bin/echo", "ready"])
    config["root"] = {"path": str(rootfs), "readonly": True}
    config["mounts"] += [
        {
            "destination": "/usr",
            "type": "bind",
            "source": str(env.store_dir / env.basename(env.path)),
            "options": ["rbind", "ro"],
        },
        {
            "destination": "/nix/store",
            "type": "bind",
            "source": str(env.store_dir),
            "options": ["rbind", "ro"],
        },
    ]
    (bundle / "config.json").write_text(json.dumps(config))
    samples = []
    for i in range(N):
        t = time.perf_counter()
        out = subprocess.run(
            [
                "runc",
                "--root",
                str(work / "anchor-state"),
                "run",
                "--bundle",
                str(bundle),
                f"anchor{i}",
            ],
            capture_output=True,
            check=True,
        )
        samples.append(time.perf_counter() - t)
        assert out.stdout == b"ready\n"
    return samples


def anchor_bwrap(env: EnvironmentView) -> list[float]:
    """bubblewrap running echo with the env at /usr (no user namespace of ours)."""
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        str(env.store_dir / env.basename(env.path)),
        "/usr",
        "--ro-bind",
        str(env.store_dir),
        "/nix/store",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    for name in ("bin", "lib", "lib64", "sbin"):
        argv += ["--symlink", f"usr/{name}", f"/{name}"]
    samples = []
    for _ in range(N):
        t = time.perf_counter()
        out = subprocess.run([*argv, "/usr/bin/echo", "ready"], capture_output=True, check=True)
        samples.append(time.perf_counter() - t)
        assert out.stdout == b"ready\n"
    return samples


def main() -> None:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("runc", "catatonit", "bwrap")):
        sys.exit("needs root, runc, catatonit and bwrap (make deps)")
    report: dict[str, Any] = {"rounds": N}
    with workdir("runtime") as work:
        os.chmod(work, 0o711)  # the workspaces' init must search down to the data dir
        log("building the example environment")
        env = environment(work)
        rt = SandboxRuntime(work / "data")
        mounts: list[tuple[Path, str]] = []
        used: list[IdRange] = []
        create, restart, round_trip = [], [], []
        try:
            for i in range(N):
                mnt, dev = volume(work, f"vol{i}")
                mounts.append((mnt, dev))
                used.append(allocate_range(used))
                spec = WorkspaceSpec(f"bench{i}", mnt, env, used[-1], Limits(memory=512 * 2**20))
                log(f"round {i + 1}/{N}")
                t = time.perf_counter()
                rt.start(spec)
                create.append(time.perf_counter() - t + first_output(rt, spec.id))
                rt.stop(spec.id, grace=0)
                t = time.perf_counter()
                rt.start(spec)
                restart.append(time.perf_counter() - t + first_output(rt, spec.id))
                for _ in range(3):
                    t = time.perf_counter()
                    assert rt.run(spec.id, ExecRequest(("true",))).status == 0
                    round_trip.append(time.perf_counter() - t)
                if i == 0:
                    time.sleep(1)
                    report["idle_workspace"] = idle_cost(rt, spec.id)
                rt.stop(spec.id, grace=0)
            report["create_to_first_output"] = stats_ms(create)
            report["stop_start_to_first_output"] = stats_ms(restart)
            report["exec_round_trip"] = stats_ms(round_trip)
            report["anchor_runc_run_echo"] = stats_ms(anchor_runc(work, env))
            report["anchor_bwrap_echo"] = stats_ms(anchor_bwrap(env))
        finally:
            for spec_id in [f"bench{i}" for i in range(N)]:
                try:
                    rt.stop(spec_id, grace=0)
                except Exception as e:  # clean up whatever is left, and say what
                    log(f"stop {spec_id}: {e}")
            for mnt, dev in mounts:
                subprocess.run(["umount", str(mnt)], check=False)
                subprocess.run(["losetup", "-d", dev], check=False)
    emit(report)


if __name__ == "__main__":
    main()

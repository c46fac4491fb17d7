"""How fast and how small are loft environments next to one rootfs image per environment?

Anchor: ``mmdebstrap`` (the Docker-style baseline: one full Debian tree per environment),
measured in the same run on the same package sets, with a shared .deb cache so neither
side pays for the network twice.

- cold lock of the example spec (python3 git curl + requests + left-pad) into an empty
  store, cold build of that lock into another empty store (downloads again), warm build;
- bytes on disk of 10 environments that differ by one package each (python3 + X), in one
  loft store, vs 10 mmdebstrap trees (``--variant=essential``, same packages);
- adding one package to an existing environment vs rebuilding the mmdebstrap tree.

Goals: warm <= 1 s, cold (python3+git+curl) <= 15 s, 10 envs <= 1.3x the bytes of one.
Set LOFT_BENCH_N (default 10) for fewer environments, LOFT_BENCH_MM_N (default N) to
build fewer mmdebstrap trees (each is a full rootfs; the total for N is then extrapolated
from their mean and reported as such; 0 skips the anchor). Prints JSON.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loft.envstore.build import build_lock, lock_spec
from loft.envstore.lock import dumps
from loft.envstore.resolve_debian import AptConfig
from loft.envstore.spec import parse_spec
from loft.envstore.store import Store

EXAMPLE = """[env]
debian = ["python3", "git", "curl"]
pypi   = ["requests==2.32.3"]
npm    = ["left-pad@1.3.0"]
"""
EXTRAS = ["jq", "less", "file", "tree", "bc", "zip", "unzip", "patch", "make", "rsync", "nano"]
LOFT = str(Path(sys.executable).with_name("loft"))
SOURCES = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
]


CPU: dict[str, float] = {}
SYS: dict[str, float] = {}


def become_subreaper() -> None:
    """Adopt orphaned descendants, so their CPU time is counted.

    bubblewrap's outer process exits as soon as it knows the sandbox's exit status,
    before its child (pid 1 of the sandbox) is reaped; that child is then re-parented to
    the nearest subreaper, and only the process that reaps it gets its rusage.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    """Reap adopted descendants that have exited (their rusage joins RUSAGE_CHILDREN)."""
    for _ in range(100):  # the last sandboxes may still be exiting: wait briefly
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
        except ChildProcessError:
            return
        time.sleep(0.01)


def timed(argv: list[str], env: dict[str, str], cwd: Path, label: str = "") -> float:
    """Wall seconds of a command; its CPU seconds (with all its children) go to CPU[label]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{argv} failed: {r.stderr[-2000:]}")
    wall = time.monotonic() - t0
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if label:
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        CPU[label] = round(cpu, 2)
        SYS[label] = round(after.ru_stime - before.ru_stime, 2)
    return wall


def tree_bytes(p: Path) -> int:
    """Allocated bytes of a tree (du), hard links counted once."""
    out = subprocess.run(["du", "-sx", "--block-size=1", str(p)], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def mmdebstrap(packages: list[str], dest: Path, cache: Path) -> float:
    """One rootfs tree with ``packages``, reusing (and filling) a shared .deb cache."""
    t0 = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        "mmdebstrap", "--quiet", "--variant=essential", "--include=" + ",".join(packages),
        "--skip=download/empty",
        f'--setup-hook=mkdir -p "$1"/var/cache/apt/archives && '
        f'find {cache} -name "*.deb" -exec cp -t "$1"/var/cache/apt/archives {{}} +',
        f"--customize-hook=sync-out /var/cache/apt/archives {cache}",
        "bookworm", str(dest), *SOURCES,
    ]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"mmdebstrap failed: {r.stderr[-2000:]}")
    return time.monotonic() - t0


def main() -> None:
    become_subreaper()
    n = int(os.environ.get("LOFT_BENCH_N", "10"))
    keep = os.environ.get("LOFT_BENCH_KEEP")
    base = Path(tempfile.mkdtemp(prefix="loft-bench-env-"))
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "goals": {"warm_build_s": 1.0, "cold_build_s": 15.0, "ten_envs_vs_one": 1.3},
    }
    try:
        apt = base / "apt"
        env = {**os.environ, "LOFT_APT_STATE": str(apt)}
        t0 = time.monotonic()
        AptConfig.for_host(apt).prepare()
        result["apt_index_prepare_s"] = round(time.monotonic() - t0, 2)

        # -- cold lock, cold build, warm build (the real CLI) ----------------------------
        proj = base / "project"
        proj.mkdir()
        (proj / "loft.toml").write_text(EXAMPLE)
        d1 = {**env, "LOFT_DATA_DIR": str(base / "d1")}
        result["cold_lock_s"] = round(timed([LOFT, "env", "lock"], d1, proj, "cold_lock"), 2)
        d2 = {**env, "LOFT_DATA_DIR": str(base / "d2")}
        result["cold_build_s"] = round(timed([LOFT, "env", "build"], d2, proj, "cold_build"), 2)
        result["warm_build_cli_s"] = round(timed([LOFT, "env", "build"], d2, proj, "warm"), 3)
        # CPU seconds of the whole process tree (resolvers, jails, hashing; the bench is a
        # subreaper so sandboxed processes count): what the wall clock would approach on
        # an idle machine with as many cores as the parallelism uses.
        result["cpu_s"] = dict(CPU)
        # The kernel's part of it: creating ~15k files. On ext4 without a journal every
        # inode allocation scans the group's recently deleted inodes, so this grows for
        # minutes after large deletions nearby (including an earlier run's clean-up).
        result["cpu_sys_s"] = dict(SYS)
        lock_text = (proj / "loft.lock").read_text()
        from loft.envstore.lock import loads

        lock = loads(lock_text)
        store2 = Store(base / "d2" / "envstore")
        t0 = time.monotonic()
        build_lock(lock, store2)
        result["warm_build_in_process_s"] = round(time.monotonic() - t0, 4)
        result["example_artefacts"] = len(lock.artefacts)
        result["example_closure_nar_bytes"] = store2.nar_sizes(store2.closure([lock.env.path]))
        shutil.rmtree(base / "d2", ignore_errors=True)

        # -- 10 environments differing by one package -------------------------------------
        os.environ["LOFT_APT_STATE"] = str(apt)
        store = Store(base / "d3" / "envstore")
        mirror = Store(base / "d1" / "envstore")
        extras = EXTRAS[:n]
        per_env: list[int] = []
        lock_times: list[float] = []
        for x in extras:
            spec = parse_spec(f'[env]\ndebian = ["python3", "{x}"]\n')
            t0 = time.monotonic()
            lk = lock_spec(spec, store, mirrors=[mirror])
            lock_times.append(time.monotonic() - t0)
            (base / f"{x}.lock").write_text(dumps(lk))
            per_env.append(tree_bytes(store.real_store_dir))
        one_env = per_env[0]
        result["loft"] = {
            "envs": n,
            "bytes_one_env": one_env,
            "bytes_all_envs": per_env[-1],
            "ratio_all_vs_one": round(per_env[-1] / one_env, 3),
            "lock_s_each": [round(t, 2) for t in lock_times],
        }
        # Adding one package to an existing environment (python3 + jq -> + EXTRAS[n]).
        spec = parse_spec(f'[env]\ndebian = ["python3", "{extras[0]}", "{EXTRAS[n]}"]\n')
        t0 = time.monotonic()
        lock_spec(spec, store, mirrors=[mirror])
        result["loft"]["add_one_package_s"] = round(time.monotonic() - t0, 2)

        # -- the anchor: one mmdebstrap tree per environment ------------------------------
        mm_n = int(os.environ.get("LOFT_BENCH_MM_N", str(n)))
        if mm_n <= 0:  # loft's side only (the anchor takes minutes per tree)
            print(json.dumps(result, indent=2, sort_keys=True))
            return
        cache = base / "debcache"
        cache.mkdir()
        mmdebstrap(["python3", "ca-certificates", extras[0]], base / "warmup", cache)
        shutil.rmtree(base / "warmup")
        mm_bytes: list[int] = []
        mm_times: list[float] = []
        for x in extras[:mm_n]:
            dest = base / "mm" / x
            mm_times.append(mmdebstrap(["python3", "ca-certificates", x], dest, cache))
            mm_bytes.append(tree_bytes(dest))
        t_add = mmdebstrap(
            ["python3", "ca-certificates", extras[0], EXTRAS[n]], base / "mm-add", cache
        )
        mm_total = sum(mm_bytes) if mm_n >= n else round(sum(mm_bytes) / mm_n * n)
        result["mmdebstrap"] = {
            "envs": n,
            "trees_built": mm_n,
            "bytes_each": mm_bytes,
            "bytes_one_env": mm_bytes[0],
            "bytes_all_envs": mm_total,
            "bytes_all_envs_extrapolated": mm_n < n,
            "ratio_all_vs_one": round(mm_total / mm_bytes[0], 3),
            "build_s_each": [round(t, 2) for t in mm_times],
            "add_one_package_s": round(t_add, 2),
        }
        result["loft_vs_mmdebstrap_bytes_all_envs"] = round(per_env[-1] / mm_total, 3)
        result["loadavg_end"] = os.getloadavg()[0]
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(base)], check=False)
    print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

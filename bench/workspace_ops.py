"""Workspaces through the node agent: how fast they are made, restarted, snapshotted and
forked, and what an idle one costs the node.

A node of its own (``loft up``: the disk service and the agent, file chunk store, SQLite
catalog) on real runc, nbdfuse, loop devices and ext4, with the example environment
already built and the 1 GiB template volume present (one warm-up workspace makes it).

- create -> first output: ``POST /v1/workspaces`` (catalog rows, profile, template fork,
  attach, sandbox start, /etc seed) then an exec of ``echo`` until its first byte arrives:
  **agent-side**, timed by a client on the agent's socket (goal <= 300 ms); and the same
  through the CLI (``loft new`` then ``loft exec``, each a Python process), reported apart;
- stop -> start -> first output, agent-side (goal <= 300 ms);
- snapshot of a running workspace: the writers' pause (FIFREEZE to FITHAW, as the agent
  measures it) against the MiB written since the last snapshot (goal <= 100 ms with
  <= 64 MiB dirty), and the whole snapshot's time;
- fork of a running workspace -> first command in the fork (goal <= 1 s);
- an idle workspace's memory: its own processes on the host (nbdfuse, the container's
  init; runc exits after each command, so no shim stays) as PSS and RSS, the growth of the
  agent and the disk service per workspace, and the workspace's cgroup (the kernel's
  charge for what runs inside, page cache included); and from these, how many idle
  workspaces fit in 4 GiB.

Anchors: in the same run, ``runc run`` of runc's own spec running ``echo`` (no user
namespace, no volume: what any runc-based sandbox pays at least); published, Daytona's
"< 90 ms" sandbox create, Fly Machines' ~300 ms boot, e2b's and Modal's ~1 s.
LOFT_BENCH_N (default 10) sets the rounds. Needs root, runc, catatonit, nbdfuse. Prints JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import MIB, emit, log, stats_ms, workdir
from loft.node import frames
from loft.node import workspace_api as wapi
from loft.node.client import call, open_stream
from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.oci import cgroup_path
from loft.runtime.spec import EnvironmentView
from runtime_start import LOFT, anchor_runc, environment

N = int(os.environ.get("LOFT_BENCH_N", "10"))
IDLE = int(os.environ.get("LOFT_BENCH_IDLE", "4"))
DIRTY_MIB = (0, 4, 16, 64, 128)
PUBLISHED = {
    "daytona_create_ms": "< 90",
    "fly_machines_boot_ms": "~300",
    "e2b_modal_sandbox_ms": "~1000",
}


class BenchNode:
    """``loft up`` on a data dir of its own under ``work``."""

    def __init__(self, work: Path, env: EnvironmentView) -> None:
        self.data_dir = work / "node"
        self.data_dir.mkdir(mode=0o700)
        (self.data_dir / "envstore").symlink_to(env.store_dir.parent.parent)
        self.env = {
            **os.environ,
            "LOFT_DATA_DIR": str(self.data_dir),
            "LOFT_CHUNKS": f"file://{work / 'chunks'}",
            "LOFT_CATALOG_URL": f"sqlite:///{work / 'catalog.db'}",
        }
        self.sock = str(self.data_dir / "run" / "agent.sock")
        self.log = open(work / "node.log", "ab")  # noqa: SIM115 (closed in stop)
        self.up = subprocess.Popen([LOFT, "up"], env=self.env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 120
        while not self._answers():
            if self.up.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"loft up did not start; see {work / 'node.log'}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            call(self.sock, wapi.NodeRequest(), wapi.NodeAnswer, timeout=5)
        except Exception:
            return False
        return True

    def call(self, req: object, answer: type[Any]) -> Any:
        return call(self.sock, req, answer, timeout=600)

    def pids(self) -> dict[str, int]:
        state = json.loads((self.data_dir / "run" / "up.json").read_text())
        return {name: int(v[0]) for name, v in state.items()}

    def stop(self) -> None:
        self.up.send_signal(signal.SIGINT)
        try:
            self.up.wait(300)
        except subprocess.TimeoutExpired:
            self.up.kill()
        self.log.close()


def first_output(node: BenchNode, name: str) -> float:
    """Seconds from now until the first byte of ``echo`` in workspace ``name`` arrives."""
    t = time.perf_counter()
    sock, initial = open_stream(node.sock, wapi.ExecWorkspaceRequest(name, ["echo", "ready"]))
    with sock:
        dec = frames.Decoder()
        if initial:  # b"" would mean the stream ended
            dec.receive_data(initial)
        while True:
            f = dec.next_frame()
            if f is frames.NEED_DATA:
                data = sock.recv(65536)
                assert data, "the exec ended before any output"
                dec.receive_data(data)
                continue
            assert isinstance(f, frames.Frame)
            if f.channel is frames.Channel.STDOUT and f.payload:
                elapsed = time.perf_counter() - t
                assert f.payload.startswith(b"r"), f.payload
                return elapsed
            assert f.channel not in (frames.Channel.EXIT, frames.Channel.ERROR), f


def create_request(name: str, spec: str) -> wapi.CreateWorkspaceRequest:
    return wapi.CreateWorkspaceRequest(name, spec=spec, spec_source="loft.lock", size=1 << 30,
                                       memory=256 * MIB)  # fmt: skip


def sh(node: BenchNode, name: str, script: str) -> str:
    r = subprocess.run([LOFT, "exec", name, "--", "sh", "-c", script], env=node.env,
                       capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    if r.returncode:
        raise SystemExit(f"{script!r} in {name}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def _kib(pid: int, field: str, source: str = "smaps_rollup") -> int:
    for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _ns_pids(init: int) -> list[int]:
    ns = os.readlink(f"/proc/{init}/ns/pid")
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _cgroup_memory(workspace_id: str) -> int:
    for d in cgroup_dirs(cgroup_path(workspace_id)):
        for name in ("memory.usage_in_bytes", "memory.current"):
            if (d / name).exists():
                return int((d / name).read_text())
    return 0


def idle_memory(node: BenchNode, spec: str) -> dict[str, Any]:
    """Per idle workspace: its host processes (PSS/RSS), the agent's and disk service's
    growth, its cgroup; measured over ``IDLE`` workspaces started at once."""
    svc = node.pids()
    before = {k: _kib(p, "Pss") for k, p in svc.items()}
    before_rss = {k: _kib(p, "VmRSS", "status") for k, p in svc.items()}
    infos = []
    for i in range(IDLE):
        node.call(create_request(f"idle{i}", spec), wapi.WorkspaceInfo)
        first_output(node, f"idle{i}")
        infos.append(node.call(wapi.GetWorkspaceRequest(f"idle{i}"), wapi.WorkspaceInfo))
    time.sleep(3)  # let the agent's and the workspaces' first-use allocations settle
    per: list[dict[str, int]] = []
    for ws in infos:
        att = json.loads((node.data_dir / "workspaces" / ws.id / "attach.json").read_text())
        nbdfuse = int(att["nbdfuse"][0])  # [pid, start time]
        inside = _ns_pids(ws.pid)
        per.append({
            "nbdfuse_pss": _kib(nbdfuse, "Pss"),
            "nbdfuse_rss": _kib(nbdfuse, "VmRSS", "status"),
            "container_processes": len(inside),
            "container_pss": sum(_kib(p, "Pss") for p in inside),
            "container_rss": sum(_kib(p, "VmRSS", "status") for p in inside),
            "cgroup": _cgroup_memory(ws.id),
        })  # fmt: skip
    after = {k: _kib(p, "Pss") for k, p in svc.items()}
    after_rss = {k: _kib(p, "VmRSS", "status") for k, p in svc.items()}
    share = {k: max(0, after[k] - before[k]) // IDLE for k in svc}
    share_rss = {k: max(0, after_rss[k] - before_rss[k]) // IDLE for k in svc}
    mean = {k: sum(p[k] for p in per) // len(per) for k in per[0]}
    host_pss = mean["nbdfuse_pss"] + mean["container_pss"] + sum(share.values())
    total = host_pss + mean["cgroup"]
    for i in range(IDLE):
        node.call(wapi.RemoveWorkspaceRequest(f"idle{i}"), wapi.RemovedAnswer)
    return {
        "workspaces_measured": IDLE,
        "per_workspace_mean_bytes": mean,
        "agent_share_pss_bytes": share.get("agent", 0),
        "disk_service_share_pss_bytes": share.get("disk", 0),
        "agent_share_rss_bytes": share_rss.get("agent", 0),
        "disk_service_share_rss_bytes": share_rss.get("disk", 0),
        "services_pss_bytes": after,
        "host_processes_pss_mib": round(host_pss / MIB, 2),
        "cgroup_mib": round(mean["cgroup"] / MIB, 2),
        "total_mib": round(total / MIB, 2),
        "fit_in_4_gib": (4 << 30) // total,
        "fit_in_4_gib_note": "host processes (PSS) + agent/disk-service growth + cgroup "
        "charge, per idle workspace (a shell-less one after an exec of echo)",
    }


def main() -> None:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("runc", "catatonit", "nbdfuse")):
        sys.exit("needs root, runc, catatonit and nbdfuse (make deps)")
    report: dict[str, Any] = {"rounds": N, "published_anchors": PUBLISHED}
    with workdir("workspaces") as work:
        os.chmod(work, 0o711)  # the workspaces' init must search down to the data dir
        log("building the example environment")
        env = environment(work)
        spec = (work / "project" / "loft.lock").read_text()
        node = BenchNode(work, env)
        try:
            log("warm-up: the template volume and the environment's closure")
            node.call(create_request("warm", spec), wapi.WorkspaceInfo)
            first_output(node, "warm")

            create, create_api, exec_first, cli, restart = [], [], [], [], []
            for i in range(N):
                log(f"create round {i + 1}/{N}")
                t = time.perf_counter()
                node.call(create_request(f"c{i}", spec), wapi.WorkspaceInfo)
                made = time.perf_counter() - t
                first = first_output(node, f"c{i}")
                create.append(made + first)
                create_api.append(made)
                exec_first.append(first)
                node.call(wapi.StopWorkspaceRequest(f"c{i}"), wapi.WorkspaceInfo)
                t = time.perf_counter()
                node.call(wapi.StartWorkspaceRequest(f"c{i}"), wapi.WorkspaceInfo)
                restart.append(time.perf_counter() - t + first_output(node, f"c{i}"))
                node.call(wapi.RemoveWorkspaceRequest(f"c{i}"), wapi.RemovedAnswer)
                t = time.perf_counter()
                subprocess.run([LOFT, "new", f"cli{i}", "--spec", str(work / "project" /
                                "loft.lock"), "--size", "1G", "--memory", "256M"],
                               env=node.env, check=True, capture_output=True)  # fmt: skip
                out = subprocess.run([LOFT, "exec", f"cli{i}", "--", "echo", "ready"],
                                     env=node.env, check=True, capture_output=True)  # fmt: skip
                cli.append(time.perf_counter() - t)
                assert out.stdout == b"ready\n"
                node.call(wapi.RemoveWorkspaceRequest(f"cli{i}"), wapi.RemovedAnswer)
            report["create_to_first_output_agent"] = stats_ms(create)
            report["create_request_agent"] = stats_ms(create_api)
            report["exec_to_first_output_agent"] = stats_ms(exec_first)
            report["create_to_first_output_cli_wall"] = stats_ms(cli)
            report["stop_start_to_first_output_agent"] = stats_ms(restart)

            log("snapshots of a running workspace")
            node.call(create_request("snappy", spec), wapi.WorkspaceInfo)
            node.call(wapi.SnapWorkspaceRequest("snappy", "base"), wapi.SnapAnswer)
            snaps: list[dict[str, Any]] = []
            for mib in DIRTY_MIB:
                pauses, totals = [], []
                for r in range(3):
                    if mib:  # written, not synced: dirty in the page cache and below
                        sh(node, "snappy", "dd if=/dev/urandom of=/home/runner/d bs=1M "
                                           f"count={mib} conv=notrunc status=none")  # fmt: skip
                    ans = node.call(wapi.SnapWorkspaceRequest("snappy", f"d{mib}-{r}"),
                                    wapi.SnapAnswer)  # fmt: skip
                    pauses.append(ans.pause_ms / 1000)
                    totals.append(ans.total_ms / 1000)
                snaps.append({"dirty_mib": mib, "pause": stats_ms(pauses),
                              "snapshot_total": stats_ms(totals)})  # fmt: skip
            report["snapshot_running_pause_vs_dirty"] = snaps

            log("forks of a running workspace")
            forks = []
            for i in range(N):
                t = time.perf_counter()
                node.call(wapi.ForkWorkspaceRequest("snappy", f"f{i}"), wapi.WorkspaceInfo)
                forks.append(time.perf_counter() - t + first_output(node, f"f{i}"))
                node.call(wapi.RemoveWorkspaceRequest(f"f{i}"), wapi.RemovedAnswer)
            report["fork_running_to_first_command_agent"] = stats_ms(forks)
            node.call(wapi.RemoveWorkspaceRequest("snappy"), wapi.RemovedAnswer)

            log("idle workspaces' memory")
            report["idle_workspace_memory"] = idle_memory(node, spec)
            node.call(wapi.RemoveWorkspaceRequest("warm"), wapi.RemovedAnswer)
        finally:
            node.stop()
        log("anchor: runc run echo")
        report["anchor_runc_run_echo"] = stats_ms(anchor_runc(work, env))
    emit(report)


if __name__ == "__main__":
    main()

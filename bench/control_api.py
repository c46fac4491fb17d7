"""What does the control plane's API cost in front of a real node?

Against ``loft up`` (disk service, node agent, control plane; real runc, nbdfuse, loop,
ext4), over HTTP on loopback with bearer tokens (the SDK, ``loft.client`` on httpx):

- **create -> first exec output**: ``POST /v1/workspaces`` (environment already in the
  store, template present) then ``POST …/exec`` of ``echo`` until its first output line;
  anchors: e2b ~1 s, the workspaces issue's 300 ms agent-side goal;
- **100 concurrent clients** (20 per user, 5 users, one workspace each), each listing its
  workspaces and exec'ing ``echo`` in turn: p50/p99 per operation and the error count
  (goal: 0). Anchor in the same run: the same load sent straight to the node agent's
  socket (root only; what the control plane adds is the difference).

LOFT_BENCH_N (default 5) sets the create rounds, LOFT_BENCH_OPS (default 6) each
client's operations. Needs root, runc and catatonit. Prints JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import emit, log, stats_ms
from _loftup import Loft, loft_up
from loft.api import CreateWorkspace, EnvSpec, ExecRequest, Limits
from loft.client import Client

N = int(os.environ.get("LOFT_BENCH_N", "5"))
OPS = int(os.environ.get("LOFT_BENCH_OPS", "6"))
USERS = 5
CLIENTS_PER_USER = 20
SMALL = {"size": 1 << 30, "limits": Limits(memory=256 << 20)}
#: Seconds an ``echo`` of the load may take before it counts as an error.
EXEC_TIMEOUT = 30.0


def percentiles(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)
    if not ms:
        return {"n": 0}

    def pick(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1)

    return {
        "n": len(ms),
        "p50_ms": pick(0.5),
        "p90_ms": pick(0.9),
        "p99_ms": pick(0.99),
        "max_ms": round(ms[-1], 1),
        "mean_ms": round(statistics.fmean(ms), 1),
    }


def first_output(c: Client, name: str) -> float:
    """When (perf_counter) the first output of ``echo`` arrived; the stream is read to
    its end after that."""
    first = 0.0
    for event in c.exec_stream(name, ExecRequest(["echo", "ready"])):
        if event.type == "stdout" and not first:
            first = time.perf_counter()
        elif event.type == "error" or (event.type == "exit" and not first):
            raise RuntimeError(f"exec ended without output: {event}")
    return first


def create_to_first_exec(up: Loft) -> dict[str, Any]:
    spec = EnvSpec(spec=up.lock_file.read_text())
    create, first, total = [], [], []
    with Client(up.url, up.admin_token, timeout=600) as c:
        for i in range(N + 1):
            t0 = time.perf_counter()
            c.create_workspace(CreateWorkspace(f"c{i}", spec, **SMALL))  # type: ignore[arg-type]
            t1 = time.perf_counter()
            t2 = first_output(c, f"c{i}")
            c.delete_workspace(f"c{i}")
            if i == 0:
                continue  # the first builds the template of this size
            create.append(t1 - t0)
            first.append(t2 - t1)
            total.append(t2 - t0)
    return {
        "create_to_first_output": stats_ms(total),
        "create": stats_ms(create),
        "exec_first_output": stats_ms(first),
        "anchors_ms": {"e2b_sandbox_create": 1000, "workspaces_issue_agent_side_goal": 300},
    }


def load(work: Callable[[int, int], tuple[str, float]]) -> dict[str, Any]:
    """USERS * CLIENTS_PER_USER threads, each running OPS operations of ``work``."""
    samples: dict[str, list[float]] = {"list": [], "exec": []}
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(USERS * CLIENTS_PER_USER)

    def client(u: int, k: int) -> None:
        start.wait()
        for op in range(OPS):
            try:
                kind, took = work(u, k * OPS + op)
            except Exception as e:  # counted, not raised: the run goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:200])
                continue
            with lock:
                samples[kind].append(took)

    threads = [
        threading.Thread(target=client, args=(u, k))
        for u in range(USERS)
        for k in range(CLIENTS_PER_USER)
    ]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {
        "clients": len(threads),
        "operations": sum(len(v) for v in samples.values()) + len(errors),
        "errors": len(errors),
        "first_errors": errors[:5],
        "wall_s": round(wall, 2),
        "ops_per_s": round((sum(len(v) for v in samples.values())) / wall, 1),
        "list": percentiles(samples["list"]),
        "exec": percentiles(samples["exec"]),
    }


def concurrent_clients(up: Loft) -> dict[str, Any]:
    spec = EnvSpec(spec=up.lock_file.read_text())
    tokens = [json.loads(up.loft("user", "add", f"u{u}", "--json").stdout)["token"]
              for u in range(USERS)]  # fmt: skip
    ids = []
    for token in tokens:
        with Client(up.url, token, timeout=600) as c:
            ids.append(c.create_workspace(CreateWorkspace("w", spec, **SMALL)).id)  # type: ignore[arg-type]
    clients = {
        (u, k): Client(up.url, tokens[u], timeout=120)
        for u in range(USERS)
        for k in range(CLIENTS_PER_USER)
    }

    def through_api(u: int, i: int) -> tuple[str, float]:
        c = clients[(u, i // OPS)]
        t = time.perf_counter()
        if i % 2 == 0:
            assert len(c.workspaces()) == 1
            return "list", time.perf_counter() - t
        r = c.exec("w", ["echo", "hi"], timeout=EXEC_TIMEOUT)
        assert r.code == 0 and r.stdout == b"hi\n", r
        return "exec", time.perf_counter() - t

    agent = str(up.data_dir / "run" / "agent.sock")

    def straight_to_node(u: int, i: int) -> tuple[str, float]:
        from loft.node import frames
        from loft.node import workspace_api as wapi
        from loft.node.client import call, open_stream

        t = time.perf_counter()
        if i % 2 == 0:
            call(agent, wapi.ListWorkspacesRequest(), wapi.WorkspacesAnswer, timeout=120)
            return "list", time.perf_counter() - t
        sock, initial = open_stream(agent, wapi.ExecWorkspaceRequest(ids[u], ["echo", "hi"]))
        sock.settimeout(EXEC_TIMEOUT)  # an exec that never ends is an error, not a hang
        with sock:
            sock.sendall(frames.encode(frames.eof()))
            dec = frames.Decoder()
            if initial:  # b"" would mean the end of the stream
                dec.receive_data(initial)
            while True:
                f = dec.next_frame()
                if f is frames.NEED_DATA:
                    dec.receive_data(sock.recv(65536))
                    continue
                assert isinstance(f, frames.Frame), "the node ended the exec early"
                if f.channel is frames.Channel.EXIT:
                    break
        return "exec", time.perf_counter() - t

    try:
        log(f"{USERS * CLIENTS_PER_USER} clients through the API")
        api = load(through_api)
        log("the same load straight to the node agent")
        node = load(straight_to_node)
    finally:
        for c in clients.values():
            c.close()
    return {"through_api": api, "anchor_straight_to_node_agent": node}


def main() -> None:
    with loft_up() as up:
        log(f"create -> first exec output, {N} rounds")
        created = create_to_first_exec(up)
        report = {
            "benchmark": "control_api",
            "create_first_exec": created,
            "concurrent": concurrent_clients(up),
        }
    emit(report)


if __name__ == "__main__":
    main()

"""A node agent in memory: a real :class:`~loft.control.nodeclient.NodeClient` that keeps
workspaces, files, snapshots and environment generations in dicts (the memory chunk
store's habit: the test double is a backend, not a mock).

Its behaviour comes from fields a test sets: ``latency`` (seconds every call takes),
``hang`` (every call waits until it is cleared: a wedged agent) and ``down`` (every call
fails as an unreachable agent does). Commands run in a tiny interpreter: ``echo``,
``cat``, ``env``, ``pwd``, ``sleep``, ``true``, ``false``, ``exit N``; anything else is
"command not found" (127), as a shell would say.

Three things are real processes on the host, so the streams the control plane carries
are tested end to end (:mod:`loft.control.fakeprocs`): the ``[run] command`` of a
workspace's spec runs with ``/bin/sh -c`` while it is running (started on every start,
killed at stop, its output kept for ``logs``); a terminal is a real shell under a real
PTY; and ``connect`` opens a TCP connection to that port on the host's loopback. So the
fake's workspaces share the host's network and user: it isolates nothing, and exists
for tests and benchmarks only.

It runs on one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import posixpath
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from loft.api import EnvGeneration, EnvSpec, EnvState, ExecRequest, Limits, Snapshot
from loft.control.errors import Conflict, Invalid, NodeUnavailable, NotFound, NotListening
from loft.control.fakeprocs import PtyShell, RunLog, Server
from loft.control.nodeclient import RUNNER, Exited, NodeWorkspace, Output, RuntimeState, Terminal
from loft.envstore.runspec import parse_run
from loft.telemetry import MeterReport

__all__ = ["FakeNode", "FakeWorkspace"]


@dataclass
class FakeWorkspace:
    """One workspace of the fake node."""

    spec: NodeWorkspace
    state: str
    files: dict[str, bytes] = field(default_factory=dict)
    snapshots: dict[str, tuple[Snapshot, dict[str, bytes]]] = field(default_factory=dict)
    generations: list[EnvGeneration] = field(default_factory=list)
    current: int = 1
    #: what its ``[run] command`` wrote, across starts
    log: RunLog = field(default_factory=RunLog)
    #: the ``[run] command`` while it runs
    server: Server | None = None
    terminals: list[PtyShell] = field(default_factory=list)


@dataclass
class FakeNode:
    """A node agent whose state lives in this object."""

    name: str = "fake"
    #: seconds every call takes
    latency: float = 0.0
    #: every call waits while this is set (a wedged agent)
    hang: bool = False
    #: every call fails as an unreachable agent's does
    down: bool = False
    workspaces: dict[str, FakeWorkspace] = field(default_factory=dict)
    #: how many calls were made, by method (tests check what reached the node)
    calls: dict[str, int] = field(default_factory=dict)
    #: when a session the node served itself last moved bytes, by id (:meth:`touch`)
    node_activity: dict[str, float] = field(default_factory=dict)
    #: what ``disk_stats`` reports (NBD, chunk store): nothing counted, unless a test says
    disk_counts: tuple[MeterReport, MeterReport] = (MeterReport(), MeterReport())
    #: what ``commit_lags`` reports, by volume
    commit_lag: dict[str, float] = field(default_factory=dict)
    #: where the processes of workspaces run (a temporary directory unless given)
    root: Path | None = None
    _own_root: bool = False

    async def _enter(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.down:
            raise NodeUnavailable(
                f"node {self.name} is unreachable", hint="is the node agent running?"
            )
        while self.hang:
            await asyncio.sleep(0.02)
        if self.latency:
            await asyncio.sleep(self.latency)

    def _get(self, id: str) -> FakeWorkspace:
        ws = self.workspaces.get(id)
        if ws is None:
            raise NotFound(f"node {self.name} has no workspace {id}")
        return ws

    def _state(self, ws: FakeWorkspace) -> RuntimeState:
        return RuntimeState(ws.spec.id, ws.state, self.name)

    async def ping(self) -> None:
        await self._enter("ping")

    async def states(self, ids: Sequence[str]) -> dict[str, RuntimeState]:
        await self._enter("states")
        return {i: self._state(self.workspaces[i]) for i in ids if i in self.workspaces}

    async def create(self, ws: NodeWorkspace) -> RuntimeState:
        await self._enter("create")
        if ws.id in self.workspaces:
            raise Conflict(f"node {self.name} already has workspace {ws.id}")
        made = FakeWorkspace(ws, "stopped")
        made.generations.append(EnvGeneration(1, ws.env, time.time()))
        self.workspaces[ws.id] = made
        if ws.start:
            await self._run_server(made)
        return self._state(made)

    async def start(self, id: str) -> RuntimeState:
        await self._enter("start")
        ws = self._get(id)
        if ws.state != "running":
            await self._run_server(ws)
        return self._state(ws)

    async def stop(self, id: str, cold: bool = False) -> RuntimeState:
        await self._enter("stop")
        ws = self._get(id)
        await self._halt(ws)
        return self._state(ws)

    async def delete(self, id: str) -> None:
        await self._enter("delete")
        await self._halt(self._get(id))
        del self.workspaces[id]

    def _workdir(self, ws: FakeWorkspace) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="loft-fakenode-"))
            self._own_root = True
        path = self.root / ws.spec.id
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    async def _run_server(self, ws: FakeWorkspace) -> None:
        """Running: start the spec's ``[run] command``, as a node does on every start."""
        ws.state = "running"
        env = self._current_env(ws)
        run = parse_run(env.spec) if env.spec is not None else None
        if run is not None:
            ws.server = await Server.start(run.command, self._workdir(ws), ws.log)

    async def _halt(self, ws: FakeWorkspace) -> None:
        """Stopped: nothing of the workspace runs any more."""
        ws.state = "stopped"
        server, ws.server = ws.server, None
        terminals, ws.terminals = ws.terminals, []
        for term in terminals:
            await term.close()
        if server is not None:
            await server.stop()

    def _current_env(self, ws: FakeWorkspace) -> EnvSpec:
        env = next((g.env for g in ws.generations if g.number == ws.current), None)
        return env or ws.spec.env

    async def set_limits(self, id: str, limits: Limits) -> None:
        await self._enter("set_limits")
        ws = self._get(id)
        ws.spec = replace(ws.spec, limits=limits)

    async def snapshot(self, id: str, name: str, memory: bool = True) -> Snapshot:
        await self._enter("snapshot")
        return self._snapshot(self._get(id), name, auto=False)

    def _snapshot(self, ws: FakeWorkspace, name: str, *, auto: bool) -> Snapshot:
        if name in ws.snapshots:
            raise Conflict(f"workspace {ws.spec.name} already has a snapshot {name}")
        snap = Snapshot(name, time.time(), auto)
        ws.snapshots[name] = (snap, dict(ws.files))
        return snap

    async def snapshots(self, id: str) -> list[Snapshot]:
        await self._enter("snapshots")
        return [snap for snap, _ in self._get(id).snapshots.values()]

    async def delete_snapshot(self, id: str, name: str) -> None:
        await self._enter("delete_snapshot")
        ws = self._get(id)
        if ws.snapshots.pop(name, None) is None:
            raise NotFound(f"workspace {ws.spec.name} has no snapshot {name}")

    async def restore(self, id: str, snapshot: str) -> tuple[str, bool]:
        await self._enter("restore")
        ws = self._get(id)
        if snapshot not in ws.snapshots:
            raise NotFound(f"workspace {ws.spec.name} has no snapshot {snapshot}")
        undo = f"before-restore-{len(ws.snapshots) + 1}"
        self._snapshot(ws, undo, auto=True)
        ws.files = dict(ws.snapshots[snapshot][1])
        return undo, ws.state == "running"

    async def fork(
        self,
        source: str,
        snapshot: str | None,
        target: NodeWorkspace,
        live: bool = False,
        new_machine_id: bool = False,
    ) -> RuntimeState:
        await self._enter("fork")
        src = self._get(source)
        if live and src.spec.runtime != "vm":
            raise Invalid(f"--live forks a running VM; {src.spec.name} is a {src.spec.runtime}")
        if new_machine_id and not live:
            raise Invalid("a new machine-id is for a live fork")
        if target.id in self.workspaces:
            raise Conflict(f"node {self.name} already has workspace {target.id}")
        if snapshot is not None and snapshot not in src.snapshots:
            raise NotFound(f"workspace {src.spec.name} has no snapshot {snapshot}")
        files = src.files if snapshot is None else src.snapshots[snapshot][1]
        made = FakeWorkspace(target, "stopped", dict(files))
        made.generations = list(src.generations)
        made.current = src.current
        self.workspaces[target.id] = made
        if target.start:
            await self._run_server(made)
        return self._state(made)

    async def exec(self, id: str, req: ExecRequest) -> AsyncIterator[Output | Exited]:
        await self._enter("exec")
        ws = self._get(id)
        if ws.state != "running":
            raise Conflict(f"workspace {ws.spec.name} is not running", hint="start it first")
        return self._run(ws, req)

    async def _run(self, ws: FakeWorkspace, req: ExecRequest) -> AsyncIterator[Output | Exited]:
        prog, args = req.command[0], req.command[1:]
        if prog == "echo":
            yield Output("stdout", (" ".join(args) + "\n").encode())
        elif prog == "cat":
            for path in args or ["-"]:
                if path == "-":
                    yield Output("stdout", req.stdin.encode())
                elif (data := ws.files.get(posixpath.join(req.cwd or "/", path))) is None:
                    yield Output("stderr", f"cat: {path}: No such file or directory\n".encode())
                    yield Exited(1)
                    return
                else:
                    yield Output("stdout", data)
        elif prog == "env":
            yield Output("stdout", "".join(f"{k}={v}\n" for k, v in req.env.items()).encode())
        elif prog == "pwd":
            yield Output("stdout", f"{req.cwd or '/root'}\n".encode())
        elif prog == "sleep":
            seconds = float(args[0]) if args else 0.0
            await asyncio.sleep(min(seconds, req.timeout))
            if seconds > req.timeout:
                yield Output("stderr", b"killed: timed out\n")
                yield Exited(124)
                return
        elif prog in ("exit", "false", "true"):
            code = {"true": 0, "false": 1}.get(prog) or (int(args[0]) if args else 0)
            yield Exited(code & 0xFF)
            return
        else:
            yield Output("stderr", f"{prog}: command not found\n".encode())
            yield Exited(127)
            return
        yield Exited(0)

    async def read_file(self, id: str, path: str, max_bytes: int) -> bytes:
        await self._enter("read_file")
        ws = self._get(id)
        data = ws.files.get(posixpath.normpath(path))
        if data is None:
            raise NotFound(f"{path}: no such file in workspace {ws.spec.name}")
        if len(data) > max_bytes:
            raise Invalid(f"{path} holds {len(data)} bytes, over the {max_bytes} read at once")
        return data

    async def write_file(self, id: str, path: str, data: bytes) -> None:
        await self._enter("write_file")
        self._get(id).files[posixpath.normpath(path)] = bytes(data)

    async def delete_file(self, id: str, path: str) -> None:
        await self._enter("delete_file")
        ws = self._get(id)
        if ws.files.pop(posixpath.normpath(path), None) is None:
            raise NotFound(f"{path}: no such file in workspace {ws.spec.name}")

    def _env(self, ws: FakeWorkspace) -> EnvState:
        return EnvState(ws.current, list(ws.generations))

    async def env(self, id: str) -> EnvState:
        await self._enter("env")
        return self._env(self._get(id))

    async def env_switch(self, id: str, env: EnvSpec) -> EnvState:
        await self._enter("env_switch")
        ws = self._get(id)
        number = ws.generations[-1].number + 1
        ws.generations.append(EnvGeneration(number, env, time.time()))
        ws.current = number
        return self._env(ws)

    async def env_rollback(self, id: str, generation: int | None) -> EnvState:
        await self._enter("env_rollback")
        ws = self._get(id)
        target = ws.current - 1 if generation is None else generation
        if not any(g.number == target for g in ws.generations):
            raise NotFound(f"workspace {ws.spec.name} has no environment generation {target}")
        ws.current = target
        return self._env(ws)

    # --- streams -------------------------------------------------------------------------

    def _running(self, id: str) -> FakeWorkspace:
        ws = self._get(id)
        if ws.state != "running":
            raise Conflict(f"workspace {ws.spec.name} is not running", hint="start it first")
        return ws

    async def connect(
        self, id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self._enter("connect")
        ws = self._running(id)
        try:
            return await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        except ConnectionRefusedError:
            raise NotListening(
                f"nothing listens on port {port} in workspace {ws.spec.name}",
                hint="start the server, or give the spec a [run] command",
            ) from None

    async def terminal(self, id: str, rows: int, cols: int, user: int = RUNNER) -> Terminal:
        # Every shell of the fake node is the host's own process: ``user`` is not used.
        await self._enter("terminal")
        ws = self._running(id)
        shell = PtyShell.spawn(self._workdir(ws), rows, cols)
        ws.terminals.append(shell)
        return shell

    def touch(self, id: str) -> None:
        """A session the node served itself (a forward) moved bytes now."""
        self.node_activity[id] = time.time()

    async def activity(self, ids: Sequence[str]) -> Mapping[str, float]:
        await self._enter("activity")
        return {i: self.node_activity[i] for i in ids if i in self.node_activity}

    async def logs(self, id: str, tail: int, follow: bool) -> AsyncIterator[bytes]:
        await self._enter("logs")
        return self._get(id).log.read(tail, follow)

    async def disk_stats(self) -> tuple[MeterReport, MeterReport]:
        await self._enter("disk_stats")
        return self.disk_counts

    async def commit_lags(self) -> Mapping[str, float]:
        await self._enter("commit_lags")
        return dict(self.commit_lag)

    async def close(self) -> None:
        """End every process of every workspace, and remove their directories."""
        for ws in self.workspaces.values():
            await self._halt(ws)
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

"""A node agent in memory: a real :class:`~loft.control.nodeclient.NodeClient` that keeps
workspaces, files, snapshots and environment generations in dicts (the memory chunk
store's habit: the test double is a backend, not a mock).

Its behaviour comes from fields a test sets: ``latency`` (seconds every call takes),
``hang`` (every call waits until it is cleared: a wedged agent) and ``down`` (every call
fails as an unreachable agent does). Commands run in a tiny interpreter: ``echo``,
``cat``, ``env``, ``pwd``, ``sleep``, ``true``, ``false``, ``exit N``; anything else is
"command not found" (127), as a shell would say.

It runs on one event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import posixpath
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from loft.api import EnvGeneration, EnvSpec, EnvState, ExecRequest, Limits, Snapshot
from loft.control.errors import Conflict, Invalid, NodeUnavailable, NotFound
from loft.control.nodeclient import Exited, NodeWorkspace, Output, RuntimeState

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
        made = FakeWorkspace(ws, "running" if ws.start else "stopped")
        made.generations.append(EnvGeneration(1, ws.env, time.time()))
        self.workspaces[ws.id] = made
        return self._state(made)

    async def start(self, id: str) -> RuntimeState:
        await self._enter("start")
        ws = self._get(id)
        ws.state = "running"
        return self._state(ws)

    async def stop(self, id: str) -> RuntimeState:
        await self._enter("stop")
        ws = self._get(id)
        ws.state = "stopped"
        return self._state(ws)

    async def delete(self, id: str) -> None:
        await self._enter("delete")
        self._get(id)
        del self.workspaces[id]

    async def set_limits(self, id: str, limits: Limits) -> None:
        await self._enter("set_limits")
        ws = self._get(id)
        ws.spec = replace(ws.spec, limits=limits)

    async def snapshot(self, id: str, name: str) -> Snapshot:
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

    async def fork(self, source: str, snapshot: str | None, target: NodeWorkspace) -> RuntimeState:
        await self._enter("fork")
        src = self._get(source)
        if target.id in self.workspaces:
            raise Conflict(f"node {self.name} already has workspace {target.id}")
        if snapshot is not None and snapshot not in src.snapshots:
            raise NotFound(f"workspace {src.spec.name} has no snapshot {snapshot}")
        files = src.files if snapshot is None else src.snapshots[snapshot][1]
        made = FakeWorkspace(target, "running" if target.start else "stopped", dict(files))
        made.generations = list(src.generations)
        made.current = src.current
        self.workspaces[target.id] = made
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

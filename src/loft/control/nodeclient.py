"""The seam between the control plane and a node agent: :class:`NodeClient`.

The control plane owns users, tokens and workspace records; the node owns runtime state
(is it running, its disk, snapshots, environment generations, processes). Every route
that needs the node calls one method of this interface with the workspace's **id** (the
record's primary key; names are the control plane's business and per user), so nothing a
tenant sends ever names a node-side object directly.

Rules every implementation keeps:

- methods are coroutines; the control plane bounds each with a deadline and answers 503
  when it passes (:func:`loft.control.deps.on_node`), so an implementation may block but
  must be cancellable;
- failures are :mod:`loft.control.errors` types: :class:`NotFound` for an id, snapshot or
  file the node does not know, :class:`Conflict` for a state that forbids the operation
  (exec in a stopped workspace, a snapshot name taken), :class:`Invalid` for a value the
  node refuses (a file too large, a path it will not touch), :class:`NodeUnavailable`
  when it cannot be reached;
- ``create`` and ``fork`` are called once the control plane has written the record
  (``workspaces``): :class:`NodeWorkspace` carries what is in it, and a real node reads
  the row itself by id (a fleet shares the catalog), adds its runtime state and never
  writes the record; on a refusal the control plane deletes the record again;
- ``set_limits`` may take effect at the workspace's next start (a node reads the limits
  from the record whenever it starts one);
- ``start`` (and so every wake) also starts the workspace's ``[run] command``
  (:mod:`loft.envstore.runspec`) when its spec has one, and keeps its output for
  ``logs``; ``stop`` ends it and every terminal and connection into the workspace.

Streams (``connect``, ``terminal``, ``logs``, like ``exec``) are opened by a call under
the node deadline and then live as long as their user keeps them; closing them is the
caller's job.

Implementations: :class:`loft.control.fakenode.FakeNode` (in memory, for tests and
benchmarks) and :class:`loft.control.agentnode.AgentNode` (the node agent's API on its
root-only Unix socket; TLS with a client certificate between machines is the next
transport). An operation a node's API lacks is :class:`Unimplemented` (501), never a
silent no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from loft.api import EnvSpec, EnvState, ExecRequest, Limits, Snapshot
from loft.telemetry import MeterReport

__all__ = [
    "RUNNER",
    "Exited",
    "NodeClient",
    "NodeWorkspace",
    "Output",
    "RuntimeState",
    "Terminal",
]

#: The workspace's own user inside it (uid 1000): whom files, terminals and execs act as
#: unless told.
RUNNER = 1000


@dataclass(frozen=True, slots=True)
class NodeWorkspace:
    """What a node needs to make a workspace: its id, who and what it is for, its
    software, runtime and resources, and whether to start it."""

    id: str
    owner: str
    name: str
    env: EnvSpec
    runtime: str
    size: int
    limits: Limits
    start: bool


@dataclass(frozen=True, slots=True)
class RuntimeState:
    """A workspace as its node sees it: one of :data:`loft.api.STATES`, the node, and
    what the node reports besides (None: it did not say)."""

    id: str
    state: str
    node: str
    env_generation: int | None = None
    env_path: str | None = None
    memory_used: int | None = None
    pids_used: int | None = None


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes a command wrote to its standard output or error."""

    stream: Literal["stdout", "stderr"]
    data: bytes


@dataclass(frozen=True, slots=True)
class Exited:
    """The command ended with this exit code (the last item of an exec's stream)."""

    code: int


class Terminal(Protocol):
    """A shell on a terminal (PTY) in a workspace. The node keeps it running while its
    client reads; :meth:`close` hangs it up (SIGHUP, then SIGKILL)."""

    async def read(self) -> bytes:
        """What the terminal wrote next (waiting for it); ``b""`` once the shell ended
        and everything it wrote has been read."""
        ...

    async def write(self, data: bytes) -> None:
        """Type ``data`` (waits while the terminal's input is full)."""
        ...

    async def resize(self, rows: int, cols: int) -> None:
        """Set the window size (the shell gets SIGWINCH)."""
        ...

    async def wait(self) -> int:
        """The shell's exit status (its ``$?``, or 128 + the signal that ended it)."""
        ...

    async def close(self) -> None:
        """Hang up, and wait for the shell to end."""
        ...


class NodeClient(Protocol):
    """One node agent, as the control plane uses it. See the module's rules."""

    async def ping(self) -> None:
        """Return when the node answers; raise :class:`NodeUnavailable` otherwise."""
        ...

    async def states(self, ids: Sequence[str]) -> dict[str, RuntimeState]:
        """The runtime state of each id the node knows (unknown ids are left out)."""
        ...

    async def create(self, ws: NodeWorkspace) -> RuntimeState:
        """Make the workspace (disk, environment), and start it if ``ws.start``."""
        ...

    async def start(self, id: str) -> RuntimeState:
        """Start a stopped workspace (a no-op for a running one)."""
        ...

    async def stop(self, id: str, cold: bool = False) -> RuntimeState:
        """Stop a workspace, committing its disk (a no-op for a stopped one). A VM is
        suspended, its memory kept for the next start, unless ``cold``."""
        ...

    async def delete(self, id: str) -> None:
        """Stop the workspace if it runs and delete it with its disk and snapshots."""
        ...

    async def set_limits(self, id: str, limits: Limits) -> None:
        """Apply new resource limits (now if it runs, else at its next start)."""
        ...

    async def snapshot(self, id: str, name: str, memory: bool = True) -> Snapshot:
        """Snapshot the workspace's disk now, running or not (a running VM's memory
        too, unless not ``memory``)."""
        ...

    async def snapshots(self, id: str) -> list[Snapshot]:
        """The workspace's snapshots, oldest first."""
        ...

    async def delete_snapshot(self, id: str, name: str) -> None:
        """Delete one snapshot."""
        ...

    async def restore(self, id: str, snapshot: str) -> tuple[str, bool]:
        """Point the workspace's disk at a snapshot; return the automatic snapshot that
        holds the replaced state (restoring it undoes this), and whether the workspace
        was stopped and started again around it."""
        ...

    async def fork(
        self,
        source: str,
        snapshot: str | None,
        target: NodeWorkspace,
        live: bool = False,
        new_machine_id: bool = False,
    ) -> RuntimeState:
        """Make ``target`` from ``source``'s snapshot, or from its state now when
        ``snapshot`` is None (a running source keeps running). ``live``: a VM's running
        copy from its memory (:class:`Invalid` for a sandbox); ``new_machine_id``: with a
        new ``/etc/machine-id`` (:class:`Invalid` without ``live``)."""
        ...

    async def exec(self, id: str, req: ExecRequest) -> AsyncIterator[Output | Exited]:
        """Start a command in a running workspace. Returning means it started; iterating
        yields its output as it comes and, last, :class:`Exited`."""
        ...

    async def read_file(self, id: str, path: str, max_bytes: int) -> bytes:
        """A file's bytes; :class:`Invalid` when it holds more than ``max_bytes``."""
        ...

    async def write_file(self, id: str, path: str, data: bytes) -> None:
        """Create or replace a file (its directory must exist)."""
        ...

    async def delete_file(self, id: str, path: str) -> None:
        """Remove a file."""
        ...

    async def env(self, id: str) -> EnvState:
        """The workspace's environment generations."""
        ...

    async def env_switch(self, id: str, env: EnvSpec) -> EnvState:
        """Build ``env`` and make it the current generation."""
        ...

    async def env_rollback(self, id: str, generation: int | None) -> EnvState:
        """Make an earlier generation current (None: the one before the current)."""
        ...

    async def connect(
        self, id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``port`` on the workspace's own loopback (what the preview
        proxy forwards to): :class:`Conflict` when it is not running,
        :class:`~loft.control.errors.NotListening` when nothing accepts on that port."""
        ...

    async def terminal(self, id: str, rows: int, cols: int, user: int = RUNNER) -> Terminal:
        """A login shell as ``user`` (a uid inside) on a new terminal of this size in a
        running workspace."""
        ...

    async def activity(self, ids: Sequence[str]) -> Mapping[str, float]:
        """When (epoch seconds) each workspace last moved bytes through a session the
        node served without the control plane (a forward, a shell or exec opened on the
        node); ids with none are left out. The idle reaper adds what it saw itself."""
        ...

    async def logs(self, id: str, tail: int, follow: bool) -> AsyncIterator[bytes]:
        """The output of the workspace's ``[run] command``: the last ``tail`` bytes kept
        (across starts; the node keeps a bounded amount), then, with ``follow``, what it
        writes as it comes, until the caller stops iterating."""
        ...

    async def disk_stats(self) -> tuple[MeterReport, MeterReport]:
        """What the node's disk service counted since it started: its NBD requests and
        its chunk store operations (latency by operation, bytes by direction)."""
        ...

    async def commit_lags(self) -> Mapping[str, float]:
        """Per volume, the age in seconds of its oldest flushed write not yet committed
        to the chunk store (0 when all are)."""
        ...

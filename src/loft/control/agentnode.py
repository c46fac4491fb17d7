"""The real :class:`~loft.control.nodeclient.NodeClient`: a node agent reached over its
node API (``run/agent.sock``, root only; between machines the same API over TLS with a
client certificate will be a second transport of this class).

Each call is one HTTP/1.1 request on a fresh connection, on the control plane's event
loop (no thread per call); exec upgrades its connection to frames
(:mod:`loft.node.frames`) and turns them into :class:`Output` and :class:`Exited`, its
input written by a task of its own on the raw socket, so a command that ends before
reading it (the node closes the connection under the write) loses no output. The
node is called by workspace **id** and reads the record the control plane wrote; it
writes only runtime state.

Mapped onto the node API:

- files are commands in the workspace as runner (uid 1000, whose workspace it is, so
  what the API writes is theirs and what they cannot touch the API cannot either):
  ``head -c`` bounded by the read limit, ``cat >`` fed by the request body, ``rm``; a
  stopped workspace answers 409 like exec;
- limits live in the record, which the node reads at every start: a change applies at
  the workspace's next start;
- the node keeps environment generations as store paths, not as the specs they were
  built from, so :meth:`AgentNode.env` reports the current generation and its path;
- the streams of sleep and wake are the node's own: ``connect`` (a TCP connection into
  the workspace, raw bytes after the ``101``; a 502 there is nothing listening), a
  terminal is an exec with a tty running the login shell, ``logs`` the run command's
  kept output as frames, ``activity`` a report;
- commit lag is the disk service's count for each running workspace's volume, as the
  agent collects it.

Failures: no answer (no socket, refused, reset) is :class:`NodeUnavailable`; a node's
404/409/400 are :class:`NotFound`/:class:`Conflict`/:class:`BadRequest` with its message
and hint; anything else the node says is a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from loft.api import EnvGeneration, EnvSpec, EnvState, ExecRequest, Limits, Snapshot
from loft.control.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Invalid,
    NodeUnavailable,
    NotFound,
    NotListening,
)
from loft.control.nodeclient import (
    RUNNER,
    Exited,
    NodeWorkspace,
    Output,
    RuntimeState,
    Terminal,
)
from loft.node import frames
from loft.node import workspace_api as wapi
from loft.node.frames import Channel, Decoder
from loft.node.jsoncodec import CodecError, decode, encode
from loft.telemetry import MeterReport

__all__ = ["AgentNode", "BadGateway"]

A = TypeVar("A")
#: Largest answer read from a node (a listing of many workspaces fits many times).
MAX_ANSWER = 8 << 20
#: Largest response head.
_MAX_HEAD = 64 << 10
_CHUNK = 256 << 10
#: A connection's read buffer for the preview proxy (asyncio's default).
_STREAM_LIMIT = 64 << 10
#: A terminal's status when it was hung up or its node went away (128 + SIGHUP).
_HUNG_UP = 129


class BadGateway(ApiError):
    """The node answered something the control plane cannot use."""

    status = 502


class AgentNode:
    """One node agent on this machine, over its Unix socket."""

    def __init__(self, socket: Path, name: str = "local") -> None:
        self.socket = socket
        self.name = name

    # --- one request ---------------------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.socket), limit=_MAX_HEAD)
        except OSError as e:
            raise NodeUnavailable(
                f"cannot reach the node agent at {self.socket}: {e.strerror or e}",
                hint="is `loft up` (or `loft node agent`) running?",
            ) from None

    @staticmethod
    def _head(method: str, path: str, body: bytes, extra: str = "") -> bytes:
        return (
            f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        ).encode() + body

    async def _request(self, req: object, answer: type[A]) -> A:
        op = wapi.WORKSPACE_API.find(req)
        assert op is not None and op.answer is answer, (req, answer)
        body = self._body(op.method, op.path_params, req)
        reader, writer = await self._open()
        try:
            writer.write(self._head(op.method, op.url(req), body, "Connection: close\r\n"))
            await writer.drain()
            status, headers = await _read_head(reader)
            length = int(headers.get("content-length", "-1"))
            if not 0 <= length <= MAX_ANSWER:
                raise BadGateway(f"the node's answer has no length or is too large ({length})")
            data = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError) as e:
            raise NodeUnavailable(
                f"the node agent broke off: {getattr(e, 'strerror', None) or e}",
                hint="retry; an operator should check the node agent",
            ) from None
        finally:
            writer.close()
        if status != 200:
            raise _error(status, data)
        try:
            decoded: A = decode(answer, json.loads(data))
        except (ValueError, CodecError) as e:
            raise BadGateway(f"the node sent a malformed answer: {e}") from None
        return decoded

    @staticmethod
    def _body(method: str, path_params: Sequence[str], req: object) -> bytes:
        if method != "POST":
            return b""
        return json.dumps({k: v for k, v in encode(req).items() if k not in path_params}).encode()

    async def _switch(
        self, req: object, errors: Mapping[int, type[ApiError]] | None = None
    ) -> tuple[socket.socket, bytes]:
        """Open a stream operation; the connection (non-blocking) once it switched, and
        the bytes that came after the ``101``. ``errors`` maps a status of the node's
        to an error of this operation's own."""
        op = wapi.WORKSPACE_API.find(req)
        assert op is not None and op.stream
        body = self._body(op.method, op.path_params, req)
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                await loop.sock_connect(sock, str(self.socket))
            except OSError as e:
                raise NodeUnavailable(
                    f"cannot reach the node agent at {self.socket}: {e.strerror or e}",
                    hint="is `loft up` (or `loft node agent`) running?",
                ) from None
            extra = f"Connection: upgrade\r\nUpgrade: {frames.UPGRADE}\r\n"
            await loop.sock_sendall(sock, self._head(op.method, op.url(req), body, extra))
            data = b""
            while b"\r\n\r\n" not in data:
                more = await loop.sock_recv(sock, 65536)
                if not more or len(data) > _MAX_HEAD:
                    raise NodeUnavailable("the node agent closed the stream's request early")
                data += more
            head, _, rest = data.partition(b"\r\n\r\n")
            status, headers = _parse_head(head)
            if status != 101:
                length = min(int(headers.get("content-length", "0") or 0), MAX_ANSWER)
                while len(rest) < length:
                    more = await loop.sock_recv(sock, 65536)
                    if not more:
                        break
                    rest += more
                raise _error(status, rest[:length], errors)
        except OSError as e:
            _close(sock)
            raise NodeUnavailable(f"the node agent broke off: {e.strerror or e}") from None
        except BaseException:
            _close(sock)
            raise
        return sock, rest

    async def _stream(self, req: object) -> tuple[socket.socket, Decoder]:
        """Open a stream operation that speaks frames; the connection and a decoder
        holding what came after the ``101``."""
        sock, rest = await self._switch(req)
        decoder = Decoder()
        if rest:  # b"" would mean the end of the stream
            decoder.receive_data(rest)
        return sock, decoder

    # --- NodeClient ------------------------------------------------------------------------

    def _state(self, info: wapi.WorkspaceInfo) -> RuntimeState:
        return RuntimeState(
            info.id,
            info.phase,
            info.node or self.name,
            info.env_generation,
            info.env_path,
            info.memory_used,
            info.pids_used,
        )

    async def ping(self) -> None:
        await self._request(wapi.NodeRequest(), wapi.NodeAnswer)

    async def states(self, ids: Sequence[str]) -> dict[str, RuntimeState]:
        if len(ids) == 1:  # the common case (one workspace's page): one row, not all
            try:
                info = await self._request(wapi.GetWorkspaceRequest(ids[0]), wapi.WorkspaceInfo)
            except NotFound:
                return {}
            return {info.id: self._state(info)}
        wanted = set(ids)
        listing = await self._request(wapi.ListWorkspacesRequest(), wapi.WorkspacesAnswer)
        return {w.id: self._state(w) for w in listing.workspaces if w.id in wanted}

    async def create(self, ws: NodeWorkspace) -> RuntimeState:
        req = wapi.CreateWorkspaceRequest(ws.id, start=ws.start)
        return self._state(await self._request(req, wapi.WorkspaceInfo))

    async def start(self, id: str) -> RuntimeState:
        try:
            info = await self._request(wapi.StartWorkspaceRequest(id), wapi.WorkspaceInfo)
        except Conflict:
            info = await self._request(wapi.GetWorkspaceRequest(id), wapi.WorkspaceInfo)
            if info.phase != "running":
                raise
        return self._state(info)

    async def stop(self, id: str, cold: bool = False) -> RuntimeState:
        req = wapi.StopWorkspaceRequest(id, cold)
        return self._state(await self._request(req, wapi.WorkspaceInfo))

    async def delete(self, id: str) -> None:
        await self._request(wapi.RemoveWorkspaceRequest(id), wapi.RemovedAnswer)

    async def set_limits(self, id: str, limits: Limits) -> None:
        # The node reads limits from the record at every start: nothing to send.
        await self._request(wapi.GetWorkspaceRequest(id), wapi.WorkspaceInfo)

    async def snapshot(self, id: str, name: str, memory: bool = True) -> Snapshot:
        ans = await self._request(wapi.SnapWorkspaceRequest(id, name, memory), wapi.SnapAnswer)
        pause = ans.pause_ms if ans.running else None
        return Snapshot(ans.snapshot, time.time(), False, ans.version, pause)

    async def snapshots(self, id: str) -> list[Snapshot]:
        ans = await self._request(wapi.ListSnapshotsRequest(id), wapi.SnapshotsAnswer)
        return [Snapshot(s.name, s.created_at, s.auto, s.version) for s in ans.snapshots]

    async def delete_snapshot(self, id: str, name: str) -> None:
        await self._request(wapi.RemoveSnapshotRequest(id, name), wapi.SnapshotRemovedAnswer)

    async def restore(self, id: str, snapshot: str) -> tuple[str, bool]:
        req = wapi.RestoreWorkspaceRequest(id, snapshot)
        ans = await self._request(req, wapi.RestoreWorkspaceAnswer)
        return ans.undo_snapshot, ans.restarted

    async def fork(
        self,
        source: str,
        snapshot: str | None,
        target: NodeWorkspace,
        live: bool = False,
        new_machine_id: bool = False,
    ) -> RuntimeState:
        req = wapi.ForkWorkspaceRequest(
            source, target.id, snapshot or "", target.start, live, new_machine_id
        )
        return self._state(await self._request(req, wapi.WorkspaceInfo))

    async def exec(self, id: str, req: ExecRequest) -> AsyncIterator[Output | Exited]:
        return await self._exec(id, req, req.user, req.stdin.encode())

    async def _exec(
        self, id: str, req: ExecRequest, user: int, stdin: bytes
    ) -> AsyncIterator[Output | Exited]:
        node_req = wapi.ExecWorkspaceRequest(
            id,
            list(req.command),
            env=[f"{k}={v}" for k, v in req.env.items()],
            cwd=req.cwd,
            user=user,
        )
        sock, decoder = await self._stream(node_req)
        feeding = asyncio.ensure_future(_feed(sock, stdin))
        return _events(sock, feeding, decoder, req.timeout)

    async def _run(self, id: str, argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, bytes]:
        """A command as runner: (status, stdout, stderr)."""
        out, err = bytearray(), bytearray()
        code = -1
        events = await self._exec(id, ExecRequest(argv, timeout=120.0), RUNNER, stdin)
        async for event in events:
            if isinstance(event, Exited):
                code = event.code
            elif event.stream == "stdout":
                out += event.data
            else:
                err += event.data
        return code, bytes(out), bytes(err)

    async def read_file(self, id: str, path: str, max_bytes: int) -> bytes:
        code, out, err = await self._run(id, ["head", "-c", str(max_bytes + 1), "--", path])
        _file_error(code, err, path)
        if len(out) > max_bytes:
            raise Invalid(f"{path} holds more than the {max_bytes} bytes read at once")
        return out

    async def write_file(self, id: str, path: str, data: bytes) -> None:
        code, _, err = await self._run(id, ["sh", "-c", 'cat > "$1"', "sh", path], data)
        _file_error(code, err, path)

    async def delete_file(self, id: str, path: str) -> None:
        code, _, err = await self._run(id, ["rm", "--", path])
        _file_error(code, err, path)

    async def env(self, id: str) -> EnvState:
        info = await self._request(wapi.GetWorkspaceRequest(id), wapi.WorkspaceInfo)
        return _env_state(info.env_generation, info.env_path)

    async def env_switch(self, id: str, env: EnvSpec) -> EnvState:
        req = wapi.SwitchEnvRequest(id, list(env.packages), env.spec or "", "the spec")
        ans = await self._request(req, wapi.EnvAnswer)
        return _env_state(ans.generation, ans.env_path, env)

    async def env_rollback(self, id: str, generation: int | None) -> EnvState:
        ans = await self._request(wapi.RollbackEnvRequest(id, generation), wapi.EnvAnswer)
        return _env_state(ans.generation, ans.env_path)

    async def connect(
        self, id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock, rest = await self._switch(wapi.ConnectRequest(id, port), {502: NotListening})
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_STREAM_LIMIT, loop=loop)
        if rest:  # the workspace's server may speak first (the bytes came with the 101)
            reader.feed_data(rest)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
        except BaseException:
            _close(sock)
            raise
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def terminal(self, id: str, rows: int, cols: int, user: int = RUNNER) -> Terminal:
        req = wapi.ExecWorkspaceRequest(
            id, list(wapi.SHELL), user=user, tty=True, rows=rows, cols=cols
        )
        sock, decoder = await self._stream(req)
        return _AgentTerminal(sock, decoder)

    async def activity(self, ids: Sequence[str]) -> Mapping[str, float]:
        ans = await self._request(wapi.ActivityRequest(), wapi.ActivityAnswer)
        wanted = set(ids)
        return {a.id: a.at for a in ans.workspaces if a.id in wanted}

    async def logs(self, id: str, tail: int, follow: bool) -> AsyncIterator[bytes]:
        sock, decoder = await self._stream(wapi.LogsRequest(id, tail, follow))
        return _log_chunks(sock, decoder)

    async def disk_stats(self) -> tuple[MeterReport, MeterReport]:
        ans = await self._request(wapi.DiskStatsRequest(), wapi.DiskStatsAnswer)
        return ans.nbd, ans.chunk_store

    async def commit_lags(self) -> Mapping[str, float]:
        ans = await self._request(wapi.CommitLagsRequest(), wapi.CommitLagsAnswer)
        return {v.volume: v.seconds for v in ans.volumes}


def _env_state(number: int | None, path: str | None, env: EnvSpec | None = None) -> EnvState:
    if number is None:
        return EnvState(0, [])
    return EnvState(number, [EnvGeneration(number, env, None, path)])


def _file_error(code: int, err: bytes, path: str) -> None:
    if code == 0:
        return
    text = err.decode(errors="replace").strip().splitlines()
    why = text[-1] if text else f"exit status {code}"
    if "No such file" in why or "Not a directory" in why:
        raise NotFound(f"{path}: no such file in the workspace")
    raise Invalid(f"{path}: {why}")


async def _feed(sock: socket.socket, stdin: bytes) -> None:
    """The command's standard input, then its end. Apart from the reading (a failed
    write must not lose output already received): a command that ends without reading
    its input closes the connection under this, which is no error."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(OSError):
        for at in range(0, len(stdin), _CHUNK):
            frame = frames.Frame(Channel.STDIN, stdin[at : at + _CHUNK])
            await loop.sock_sendall(sock, frames.encode(frame))
        await loop.sock_sendall(sock, frames.encode(frames.eof()))


async def _events(
    sock: socket.socket, feeding: asyncio.Future[None], decoder: Decoder, timeout: float
) -> AsyncIterator[Output | Exited]:
    """The frames of an exec as events; past ``timeout`` the connection closes (the node
    then ends the process) and the command is reported killed (124, as timeout(1))."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            frame = decoder.next_frame()
            if frame is frames.NEED_DATA:
                left = deadline - loop.time()
                try:
                    data = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(left, 0))
                except TimeoutError:
                    yield Output("stderr", b"killed: timed out\n")
                    yield Exited(124)
                    return
                except OSError as e:
                    raise NodeUnavailable(f"the node agent broke off: {e.strerror or e}") from None
                decoder.receive_data(data)
                continue
            if frame is None:
                raise NodeUnavailable("the node agent closed the command's stream early")
            assert isinstance(frame, frames.Frame)
            if frame.channel is Channel.STDOUT:
                yield Output("stdout", frame.payload)
            elif frame.channel is Channel.STDERR:
                yield Output("stderr", frame.payload)
            elif frame.channel is Channel.EXIT:
                status = frames.json_of(frame).get("status")
                yield Exited(status & 0xFF if isinstance(status, int) else 255)
                return
            elif frame.channel is Channel.ERROR:
                obj = frames.json_of(frame)
                raise Conflict(str(obj.get("error")), hint=obj.get("hint"))
    except frames.RemoteProtocolError as e:
        raise BadGateway(f"the node sent a malformed frame: {e}") from None
    finally:
        feeding.cancel()
        _close(sock)


async def _frames(sock: socket.socket, decoder: Decoder) -> AsyncGenerator[frames.Frame, None]:
    """The frames the node sends until it closes the connection (or breaks it off)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            frame = decoder.next_frame()
            if frame is frames.NEED_DATA:
                try:
                    data = await loop.sock_recv(sock, 65536)
                except OSError:
                    data = b""
                decoder.receive_data(data)
                continue
            if frame is None:
                return
            assert isinstance(frame, frames.Frame)
            yield frame
    except frames.RemoteProtocolError as e:
        raise BadGateway(f"the node sent a malformed frame: {e}") from None


async def _log_chunks(sock: socket.socket, decoder: Decoder) -> AsyncIterator[bytes]:
    """A run command's output as the node sends it, until it ends the stream (or the
    caller stops iterating, which closes it)."""
    try:
        async for frame in _frames(sock, decoder):
            if frame.channel is Channel.STDOUT:
                yield frame.payload
            elif frame.channel is Channel.ERROR:
                return
    finally:
        _close(sock)


class _AgentTerminal:
    """A shell on a terminal, as an exec stream of the node's with ``tty``: output from
    STDOUT frames, input as STDIN frames, RESIZE, and the exit from EXIT. Closing the
    connection is the hang-up (the node sends SIGHUP, then SIGKILL)."""

    def __init__(self, sock: socket.socket, decoder: Decoder) -> None:
        self._sock = sock
        self._frames = _frames(sock, decoder)
        self._status: int | None = None
        self._ended = asyncio.Event()
        self._sending = asyncio.Lock()

    def _end(self, status: int) -> None:
        if self._status is None:
            self._status = status
        self._ended.set()

    async def read(self) -> bytes:
        while not self._ended.is_set():
            try:
                frame = await anext(self._frames)
            except (StopAsyncIteration, BadGateway):
                self._end(_HUNG_UP)  # the node went away without an exit status
                break
            if frame.channel in (Channel.STDOUT, Channel.STDERR):
                return frame.payload
            if frame.channel is Channel.EXIT:
                status = frames.json_of(frame).get("status")
                self._end(status & 0xFF if isinstance(status, int) else 255)
            elif frame.channel is Channel.ERROR:
                self._end(255)
        return b""

    async def _send(self, frame: frames.Frame) -> None:
        if self._ended.is_set():
            return
        loop = asyncio.get_running_loop()
        async with self._sending:
            with contextlib.suppress(OSError):  # the shell ended: its end is read()'s news
                await loop.sock_sendall(self._sock, frames.encode(frame))

    async def write(self, data: bytes) -> None:
        for at in range(0, len(data), _CHUNK):
            await self._send(frames.Frame(Channel.STDIN, data[at : at + _CHUNK]))

    async def resize(self, rows: int, cols: int) -> None:
        await self._send(frames.resize(rows, cols))

    async def wait(self) -> int:
        await self._ended.wait()
        assert self._status is not None
        return self._status

    async def close(self) -> None:
        self._end(_HUNG_UP)
        _close(self._sock)
        # A read under way still iterates the frames: it ends on the closed socket.
        with contextlib.suppress(RuntimeError):
            await self._frames.aclose()


def _close(sock: socket.socket) -> None:
    """Close a socket the loop may still watch for a cancelled ``sock_recv`` or
    ``sock_sendall``: unregistered first, so the loop's late clean-up cannot unregister
    whoever gets the same descriptor number next (and never wake them)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ValueError, OSError):  # already closed
        fd = sock.fileno()
        if fd >= 0:
            loop.remove_reader(fd)
            loop.remove_writer(fd)
    sock.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise BadGateway("the node's answer head is too large") from None
    return _parse_head(head.rstrip(b"\r\n"))


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise BadGateway(f"malformed status line from the node: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _error(
    status: int, data: bytes, errors: Mapping[int, type[ApiError]] | None = None
) -> ApiError:
    try:
        obj: Any = json.loads(data)
        message, hint = str(obj["error"]), obj.get("hint")
    except (ValueError, KeyError, TypeError):
        return BadGateway(f"the node answered {status}: {data[:200]!r}")
    kinds: dict[int, type[ApiError]] = {400: BadRequest, 404: NotFound, 409: Conflict}
    kind = {**kinds, **(errors or {})}.get(status, BadGateway)
    return kind(message, hint=hint if isinstance(hint, str) else None)

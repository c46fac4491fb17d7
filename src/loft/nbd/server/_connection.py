"""One client connection: a thin asyncio layer over :class:`loft.nbd.protocol.Connection`.

Requests are served on the event loop thread when the backend says the range is
resident (page cache, a local working copy): that is the fast path, with no task or
thread per request. FLUSH, FUA writes and ranges that need a fetch run on the server's
worker threads and are answered when they finish, possibly out of order -- but a
request that overlaps an earlier unfinished one (and either modifies data) waits for
it, so overlapping requests take effect in arrival order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from loft.nbd import protocol as p
from loft.nbd.backends.base import Backend
from loft.nbd.server._errno import errno_for
from loft.nbd.server._exports import Export
from loft.nbd.server._tls import peer_identity
from loft.nbd.server._validate import ExportView, validate_request

if TYPE_CHECKING:
    from loft.nbd.server._server import NBDServer

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_INFLIGHT",
    "MAX_OPTIONS",
    "SPARSE_READ_MIN",
    "NBDConnection",
]

log = logging.getLogger("loft.nbd")

#: Seconds a client has to finish the handshake (a silent client must not hold a slot).
HANDSHAKE_TIMEOUT = 30.0
#: Options accepted per connection (a client looping over options is misbehaving).
MAX_OPTIONS = 1024
#: Requests queued or running on worker threads before the server stops reading from
#: this client (back-pressure instead of unbounded memory).
MAX_INFLIGHT = 64
#: READs at least this long are answered sparsely (OFFSET_HOLE for zero extents) when
#: structured replies are on; shorter ones are not worth a block-status lookup.
SPARSE_READ_MIN = 64 * 1024

# Plain ints: enum comparisons cost more than the rest of a request's bookkeeping.
_READ, _WRITE, _FLUSH = int(p.Command.READ), int(p.Command.WRITE), int(p.Command.FLUSH)
_TRIM, _ZERO, _CACHE = int(p.Command.TRIM), int(p.Command.WRITE_ZEROES), int(p.Command.CACHE)
_BS, _DISC = int(p.Command.BLOCK_STATUS), int(p.Command.DISC)
_MODIFYING = frozenset((_WRITE, _TRIM, _ZERO))
_FUA, _NO_HOLE, _DF = int(p.CmdFlag.FUA), int(p.CmdFlag.NO_HOLE), int(p.CmdFlag.DF)
_FAST_ZERO, _REQ_ONE = int(p.CmdFlag.FAST_ZERO), int(p.CmdFlag.REQ_ONE)
_ZERO_FLAG = int(p.StateFlag.ZERO)
_NEED_DATA, _PAUSED = p.NEED_DATA, p.PAUSED

#: Metadata contexts loft serves, with the fixed id each gets when selected.
BASE_ALLOCATION = "base:allocation"
ALLOCATION_DEPTH = "qemu:allocation-depth"
_CONTEXT_IDS = {BASE_ALLOCATION: 1, ALLOCATION_DEPTH: 2}

#: Socket buffer size asked for (the kernel caps it at net.core.[rw]mem_max).
SOCKET_BUFFER = 4 * 1024 * 1024
#: Replies are batched into one writelines per burst of received requests, up to this
#: many buffers (a 4 KiB READ reply is two): fewer sendmsg calls is most of what a small
#: request costs on a busy core.
BATCH_BUFFERS = 64
#: But a backend call that may sleep (a write throttled on dirty pages) must not hold
#: back replies to requests already done, or the client's queue runs dry: before an
#: inline change, and after each write reply, a batch this long goes out.
BATCH_BUFFERS_BEFORE_SLEEP = 8
#: READ replies at least this large are written at once, not batched.
_WRITE_NOW = 128 * 1024

_ReadPieces = list[tuple[int, int, Any]]  # (offset, length, data or None for a hole)


def _grow_socket_buffers(transport: asyncio.BaseTransport) -> None:
    """Ask for socket buffers that hold a few large requests/replies: one writev moves a
    whole 1 MiB READ reply instead of several trips through the event loop."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


class _WouldBlock(Exception):
    """An inline read found its data not in memory; retry it on a worker thread."""


def _nowait_reader(backend: Backend) -> Callable[[int, int], Any]:
    def read(offset: int, length: int) -> Any:
        data = backend.pread_nowait(offset, length)
        if data is None:
            raise _WouldBlock
        return data

    return read


def _overlaps(a: p.Request, b: p.Request) -> bool:
    if a.command not in _MODIFYING and b.command not in _MODIFYING:
        return False
    if a.command == _FLUSH or b.command == _FLUSH:
        return False
    return a.offset < b.offset + b.length and b.offset < a.offset + a.length


class NBDConnection(asyncio.BufferedProtocol):
    """The server side of one NBD connection."""

    def __init__(self, server: NBDServer, *, trusted: bool, tls_required: bool) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._proto = p.Connection(p.SERVER)
        self._transport: asyncio.BaseTransport | None = None
        self._trusted = trusted
        self._tls_required = tls_required
        self._tls = False
        self.identity: str | None = None
        self.peer = ""
        self.export: Export | None = None
        self._backend: Backend | None = None
        self._view = ExportView(0, 0, False, False)
        self._contexts: dict[int, str] = {}
        self._meta_export: str | None = None
        self._ops: list[p.Request] = []
        self._waiting: deque[p.Request] = deque()
        self._write_paused = False
        self._reading_paused = False
        #: handshake work in flight off the loop (a TLS upgrade, an export lookup):
        #: nothing more is read or processed until it is done
        self._suspended = False
        #: exports resolved off the loop for the option being answered (blocking lookups)
        self._resolved: dict[str, Export | None] | None = None
        self._closing = False
        self._closed = False
        self._wrote = False
        self._options = 0
        self.requests = 0
        self.started = time.time()
        self._timer: asyncio.TimerHandle | None = None
        #: replies produced while processing one batch of received requests, written
        #: with a single writelines (one syscall instead of one per reply)
        self._batch: list[Any] | None = None

    # --- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._transport is not None:  # start_tls re-attaches us to the TLS transport
            return
        self._transport = transport
        _grow_socket_buffers(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        self._server._register(self)
        self._timer = self._loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        self._write(self._proto.send_buffers(p.Greeting()))
        log.info("nbd.connect peer=%s", self.peer)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._proto.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        # A megabyte WRITE arrives in several reads (the client's socket buffer is
        # smaller): until its payload is complete there is nothing to decode.
        if self._proto.buffer_updated(nbytes):
            self._process()

    def eof_received(self) -> bool:
        self._proto.receive_data(b"")
        self._process()
        return True  # keep the write side open until in-flight requests are answered

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        self._server._unregister(self)
        log.info(
            "nbd.disconnect peer=%s export=%s requests=%d",
            self.peer,
            self.export.name if self.export else "",
            self.requests,
        )

    # --- plumbing -------------------------------------------------------------------

    def _write(self, buffers: list[Any]) -> None:
        batch = self._batch
        if batch is not None:
            batch += buffers
            if len(batch) >= BATCH_BUFFERS:
                self._flush_batch(batch)
            return
        t = self._transport
        if t is not None and not self._closed and not t.is_closing():
            t.writelines(buffers)  # type: ignore[attr-defined]

    def _flush_batch(self, batch: list[Any]) -> None:
        """Write what the batch holds now (the list object stays the batch)."""
        self._batch = None
        self._write(batch[:])
        batch.clear()
        self._batch = batch

    def _send(self, event: object) -> None:
        self._write(self._proto.send_buffers(event))

    def _busy(self) -> bool:
        return (
            self._write_paused
            or self._suspended
            or len(self._ops) + len(self._waiting) >= MAX_INFLIGHT
        )

    def _update_reading(self) -> None:
        t = self._transport
        if t is None or self._closed or t.is_closing():
            return
        want_pause = self._busy()
        if want_pause and not self._reading_paused:
            t.pause_reading()  # type: ignore[attr-defined]
            self._reading_paused = True
        elif not want_pause and self._reading_paused:
            t.resume_reading()  # type: ignore[attr-defined]
            self._reading_paused = False

    def _abort(self, why: str) -> None:
        log.warning("nbd.drop peer=%s reason=%s", self.peer, why)
        self._closing = True
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]

    def _close(self) -> None:
        self._closing = True
        batch, self._batch = self._batch, None
        if batch:  # replies produced in this batch go out before the close
            self._write(batch[:])
            batch.clear()
        if self._transport is not None:
            self._transport.close()

    def _handshake_timeout(self) -> None:
        if self._backend is None and not self._closed:
            self._abort("handshake timeout")

    def _process(self) -> None:
        if self._batch is not None:  # re-entered from a callback inside a batch
            return
        proto = self._proto
        batch: list[Any] = []
        self._batch = batch
        try:
            while not (
                self._closing
                or self._write_paused
                or self._suspended
                or len(self._ops) + len(self._waiting) >= MAX_INFLIGHT
            ):
                try:
                    event = proto.next_event()
                except p.RemoteProtocolError as e:
                    self._batch = None
                    self._abort(f"protocol error: {e}")
                    return
                if event is _NEED_DATA or event is _PAUSED:
                    break
                if type(event) is p.Request:
                    self._on_request(event)
                else:
                    self._on_handshake(event)
        finally:
            self._batch = None
        if batch:
            self._write(batch)
        self._update_reading()

    # --- handshake ------------------------------------------------------------------

    def _lookup(self, name: str) -> Export | None:
        resolved = self._resolved
        export = resolved.get(name) if resolved is not None else self._server.exports.lookup(name)
        if export is None:
            return None
        if not self._trusted:
            authz = self._server.authorizer
            if authz is None or not authz.allows(self.identity, export.name):
                return None  # refused exactly like an unknown export
        return export

    def _on_handshake(self, event: object) -> None:
        etype = type(event)
        if etype is p.ConnectionClosed:
            self._client_closed()
            return
        if etype is p.ClientFlags:
            assert isinstance(event, p.ClientFlags)
            if not event.fixed_newstyle:
                self._abort("client does not speak fixed newstyle")
            return
        self._options += 1
        if self._options > MAX_OPTIONS:
            self._abort("too many options")
            return
        option = self._proto.current_option
        assert option is not None
        if (
            self._tls_required
            and not self._tls
            and etype
            not in (
                p.StartTLSOption,
                p.AbortOption,
            )
        ):
            if etype is p.ExportNameOption:
                self._abort("EXPORT_NAME before STARTTLS on a TLS-only listener")
            else:
                self._send(p.OptionError(option, p.OptionReplyType.ERR_TLS_REQD, "TLS required"))
            return
        handler = _OPTION_HANDLERS.get(etype)
        if handler is None:
            if isinstance(event, p.InvalidOption):
                self._send(p.OptionError(option, p.OptionReplyType.ERR_INVALID, event.reason))
            else:
                self._send(p.OptionError(option, p.OptionReplyType.ERR_UNSUP, "unsupported"))
            return
        if etype in _RESOLVING and self._server.exports.blocking:
            # The catalog may take milliseconds (or a failover) to answer: resolve on a
            # worker thread so other connections' requests keep flowing meanwhile.
            self._suspended = True
            self._update_reading()
            self._server._spawn(self._resolve_then_answer(handler, event, option))
            return
        handler(self, event, option)

    async def _resolve_then_answer(self, handler: Any, event: Any, option: int) -> None:
        exports = self._server.exports
        field = _RESOLVING[type(event)]
        name = getattr(event, field) if field else ""

        def resolve() -> dict[str, Export | None]:
            if type(event) is p.ListOption:
                return {e.name: e for e in exports.exports()}
            return {name: exports.lookup(name)}

        try:
            resolved = await self._loop.run_in_executor(None, resolve)
        except Exception as e:
            self._abort(f"export lookup failed: {e}")
            return
        if self._closed:
            return
        self._resolved = resolved
        try:
            handler(self, event, option)
        finally:
            self._resolved = None
        self._suspended = False
        self._update_reading()
        self._process()

    def _transmission_flags(self, backend: Backend) -> int:
        tf = p.TransmissionFlag
        flags = tf.HAS_FLAGS
        writable = backend.can_write()
        if not writable:
            flags |= tf.READ_ONLY
        if backend.can_flush():
            flags |= tf.SEND_FLUSH | tf.SEND_FUA
        if writable:
            flags |= tf.SEND_WRITE_ZEROES
            if backend.can_trim():
                flags |= tf.SEND_TRIM
            if backend.can_fast_zero():
                flags |= tf.SEND_FAST_ZERO
        if backend.can_cache():
            flags |= tf.SEND_CACHE
        if backend.can_multi_conn():
            flags |= tf.CAN_MULTI_CONN
        if self._proto.structured_replies:
            flags |= tf.SEND_DF
        return int(flags)

    def _opt_export_name(self, event: p.ExportNameOption, option: int) -> None:
        export = self._lookup(event.name)
        if export is None:
            # EXPORT_NAME has no error reply: the spec's answer is a hard disconnect.
            self._abort(f"unknown export {event.name!r}")
            return
        flags = self._transmission_flags(export.backend)
        self._send(p.ExportNameReply(export.backend.size, flags))
        self._enter_transmission(export, flags)

    def _opt_info(self, event: p.InfoOption | p.GoOption, option: int) -> None:
        export = self._lookup(event.name)
        if export is None:
            self._send(
                p.OptionError(option, p.OptionReplyType.ERR_UNKNOWN, f"no export {event.name!r}")
            )
            return
        backend = export.backend
        flags = self._transmission_flags(backend)
        send = self._send
        send(p.OptionInfoExport(option, backend.size, flags))
        if p.InfoType.NAME in event.info_requests:
            send(p.OptionInfoName(option, export.name))
        if p.InfoType.DESCRIPTION in event.info_requests and export.description:
            send(p.OptionInfoDescription(option, export.description[: p.MAX_NAME_LENGTH]))
        bs = backend.block_sizes()
        send(p.OptionInfoBlockSize(option, bs.minimum, bs.preferred, bs.maximum))
        send(p.OptionAck(option))
        if isinstance(event, p.GoOption):
            if self._meta_export != export.name:
                self._contexts = {}
            self._enter_transmission(export, flags)

    def _enter_transmission(self, export: Export, flags: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.export = export
        self._backend = export.backend
        self._view = ExportView(
            export.backend.size, flags, self._proto.structured_replies, bool(self._contexts)
        )
        log.info("nbd.open peer=%s export=%s flags=0x%x", self.peer, export.name, flags)

    def _opt_list(self, event: p.ListOption, option: int) -> None:
        resolved = self._resolved
        listing = resolved.values() if resolved is not None else self._server.exports.exports()
        for export in listing:
            if export is None:
                continue
            if self._lookup(export.name) is not None:
                desc = export.description[: p.MAX_NAME_LENGTH]
                self._send(p.OptionServer(option, export.name, desc))
        self._send(p.OptionAck(option))

    def _opt_abort(self, event: p.AbortOption, option: int) -> None:
        self._send(p.OptionAck(option))
        self._close()

    def _opt_structured(self, event: p.StructuredReplyOption, option: int) -> None:
        self._send(p.OptionAck(option))

    def _opt_meta(
        self, event: p.ListMetaContextOption | p.SetMetaContextOption, option: int
    ) -> None:
        is_set = isinstance(event, p.SetMetaContextOption)
        if is_set:  # SET replaces the selection even when it fails
            self._contexts = {}
            self._meta_export = None
        if not self._proto.structured_replies:
            self._send(
                p.OptionError(
                    option, p.OptionReplyType.ERR_INVALID, "negotiate structured replies first"
                )
            )
            return
        export = self._lookup(event.export_name)
        if export is None:
            self._send(
                p.OptionError(
                    option, p.OptionReplyType.ERR_UNKNOWN, f"no export {event.export_name!r}"
                )
            )
            return
        available = [BASE_ALLOCATION]
        if export.backend.can_allocation_depth():
            available.append(ALLOCATION_DEPTH)
        if not event.queries and not is_set:
            chosen = available
        else:
            chosen = []
            for q in event.queries:
                for name in available:
                    if (q == name or (q.endswith(":") and name.startswith(q))) and (
                        name not in chosen
                    ):
                        chosen.append(name)
        for name in chosen:
            cid = _CONTEXT_IDS[name] if is_set else 0
            self._send(p.OptionMetaContext(option, cid, name))
        if is_set:
            self._contexts = {_CONTEXT_IDS[n]: n for n in chosen}
            self._meta_export = export.name
        self._send(p.OptionAck(option))

    def _opt_starttls(self, event: p.StartTLSOption, option: int) -> None:
        ctx = self._server.ssl_context
        if ctx is None:
            self._send(p.OptionError(option, p.OptionReplyType.ERR_UNSUP, "TLS not configured"))
            return
        if self._tls:
            self._send(p.OptionError(option, p.OptionReplyType.ERR_INVALID, "TLS already on"))
            return
        self._send(p.OptionAck(option))
        # Stop reading now: the client's TLS hello must reach the TLS layer, not us.
        self._suspended = True
        self._update_reading()
        self._server._spawn(self._start_tls())

    async def _start_tls(self) -> None:
        t = self._transport
        ctx = self._server.ssl_context
        assert t is not None and ctx is not None
        try:
            new = await self._loop.start_tls(
                t,  # type: ignore[arg-type]
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (TimeoutError, OSError, ConnectionError, Exception) as e:
            self._abort(f"TLS handshake failed: {e}")
            return
        if new is None:
            self._abort("TLS handshake failed")
            return
        self._transport = new
        self._reading_paused = False
        self._tls = True
        self.identity = peer_identity(new.get_extra_info("peercert"))
        self._contexts = {}
        self._meta_export = None
        try:
            self._proto.tls_established()
        except p.ProtocolError as e:
            self._abort(str(e))
            return
        log.info("nbd.tls peer=%s identity=%s", self.peer, self.identity)
        self._suspended = False
        self._process()

    # --- transmission ---------------------------------------------------------------

    def _client_closed(self) -> None:
        self._closing = True
        self._maybe_finish()

    def _on_request(self, req: p.Request) -> None:
        self.requests += 1
        command = req.command
        if command == _DISC:
            self._client_closed()
            return
        err = validate_request(command, req.flags, req.offset, req.length, self._view)
        if err:
            self._reply_error(req, err, "invalid request")
            return
        if self._ops or self._waiting:
            for other in self._ops:
                if _overlaps(req, other):
                    self._waiting.append(req)
                    return
            for other in self._waiting:
                if _overlaps(req, other):
                    self._waiting.append(req)
                    return
        self._start(req)

    def _start(self, req: p.Request) -> None:
        backend = self._backend
        assert backend is not None
        command = req.command
        if command in _MODIFYING:
            self._wrote = True
            batch = self._batch
            if batch is not None and len(batch) >= BATCH_BUFFERS_BEFORE_SLEEP:
                self._flush_batch(batch)
        if not (
            command == _FLUSH
            or (req.flags & _FUA and command in _MODIFYING)
            or (command == _ZERO and not backend.can_zero())
            or not backend.is_resident(req.offset, req.length)
        ):
            try:
                result = self._execute(req, True)
            except _WouldBlock:
                pass  # data not in memory after all: read it on a worker thread
            except Exception as e:
                self._reply_failure(req, e)
                return
            else:
                if command == _WRITE and backend.copies_writes:
                    self._proto.recycle(req.payload)
                self._reply(req, result)
                return
        self._ops.append(req)
        fut = self._loop.run_in_executor(self._server.executor, self._execute, req, False)
        fut.add_done_callback(partial(self._op_done, req))

    def _op_done(self, req: p.Request, fut: asyncio.Future[Any]) -> None:
        self._ops.remove(req)
        if fut.cancelled():
            self._reply_error(req, p.Errno.ESHUTDOWN, "server shutting down")
        elif (exc := fut.exception()) is not None:
            self._reply_failure(req, exc)
        else:
            self._reply(req, fut.result())
        if self._waiting:
            waiting, self._waiting = self._waiting, deque()
            for r in waiting:
                if any(_overlaps(r, o) for o in self._ops) or any(
                    _overlaps(r, o) for o in self._waiting
                ):
                    self._waiting.append(r)
                else:
                    self._start(r)
        if self._closing:
            self._maybe_finish()
        else:
            self._process()

    def _execute(self, req: p.Request, inline: bool) -> Any:
        """Run one validated request against the backend (any thread; no transport).

        ``inline`` (on the event loop): reads use ``pread_nowait`` and raise
        :class:`_WouldBlock` instead of waiting for the disk."""
        backend = self._backend
        assert backend is not None
        command = req.command
        if command == _READ:
            if (
                self._view.structured_replies
                and req.length >= SPARSE_READ_MIN
                and not req.flags & _DF
                and backend.can_extents()
            ):
                read = _nowait_reader(backend) if inline else backend.pread
                return self._sparse_read(backend, read, req.offset, req.length)
            if not inline:
                return backend.pread(req.offset, req.length)
            data = backend.pread_nowait(req.offset, req.length)
            if data is None:
                raise _WouldBlock
            return data
        if command == _WRITE:
            assert req.payload is not None
            backend.pwrite(req.offset, req.payload, bool(req.flags & _FUA))
        elif command == _FLUSH:
            backend.flush()
        elif command == _ZERO:
            backend.zero(
                req.offset,
                req.length,
                fua=bool(req.flags & _FUA),
                may_trim=not req.flags & _NO_HOLE,
                fast_only=bool(req.flags & _FAST_ZERO),
            )
        elif command == _TRIM:
            backend.trim(req.offset, req.length, bool(req.flags & _FUA))
        elif command == _CACHE:
            backend.cache(req.offset, req.length)
        elif command == _BS:
            return self._block_status(backend, req)
        return None

    @staticmethod
    def _sparse_read(
        backend: Backend, read: Callable[[int, int], Any], offset: int, length: int
    ) -> _ReadPieces:
        end = offset + length
        pieces: _ReadPieces = []
        pos = offset
        data_start = -1
        while pos < end:
            extents = backend.extents(pos, end - pos)
            if not extents:
                break
            for n, flags in extents:
                n = min(n, end - pos)
                if n <= 0:
                    continue
                if flags & _ZERO_FLAG:
                    if data_start >= 0:
                        pieces.append((data_start, pos - data_start, None))
                        data_start = -1
                    pieces.append((pos, n, False))
                elif data_start < 0:
                    data_start = pos
                pos += n
                if pos >= end:
                    break
        if pos < end and data_start < 0:
            data_start = pos
        if data_start >= 0:
            pieces.append((data_start, end - data_start, None))
        out: _ReadPieces = []
        for off, n, kind in pieces:
            out.append((off, n, read(off, n) if kind is None else None))
        return out

    def _block_status(self, backend: Backend, req: p.Request) -> list[tuple[int, list[Any]]]:
        out = []
        for cid, name in self._contexts.items():
            if name == BASE_ALLOCATION:
                raw = backend.extents(req.offset, req.length)
            else:
                raw = backend.allocation_depth(req.offset, req.length)
            extents: list[tuple[int, int]] = []
            left = req.length
            for n, flags in raw:
                n = min(n, left)
                if n <= 0:
                    continue
                if extents and extents[-1][1] == flags:
                    extents[-1] = (extents[-1][0] + n, flags)
                else:
                    extents.append((n, flags))
                left -= n
                if left == 0:
                    break
            if not extents:
                raise OSError(5, "backend reported no extents")
            if req.flags & _REQ_ONE:
                extents = extents[:1]
            out.append((cid, extents))
        return out

    # --- replies --------------------------------------------------------------------

    def _reply_failure(self, req: p.Request, exc: BaseException) -> None:
        errno = errno_for(exc)
        log.warning(
            "nbd.request_failed peer=%s cmd=%s offset=%d length=%d errno=%d error=%r",
            self.peer,
            req.command,
            req.offset,
            req.length,
            errno,
            exc,
        )
        self._reply_error(req, errno, str(exc)[:200])

    def _reply_error(self, req: p.Request, errno: int, message: str) -> None:
        if self._view.structured_replies and req.command in (_READ, _BS):
            self._send(p.ErrorChunk(req.handle, errno, message))
        else:
            self._send(p.SimpleReply(req.handle, errno))

    def _reply(self, req: p.Request, result: Any) -> None:
        command = req.command
        handle = req.handle
        if command == _READ:
            if not isinstance(result, list):
                buffers = self._proto.send_read_data(handle, req.offset, result)
                if req.length >= _WRITE_NOW and self._batch is not None:
                    # Large data goes out at once instead of waiting for the rest of
                    # the batch: the client gets bytes sooner and memory stays bounded.
                    self._batch += buffers
                    self._flush_batch(self._batch)
                else:
                    self._write(buffers)
            else:
                last = len(result) - 1
                for i, (off, n, data) in enumerate(result):
                    if data is None:
                        self._send(p.OffsetHoleChunk(handle, off, n, i == last))
                    else:
                        self._send(p.OffsetDataChunk(handle, off, data, i == last))
        elif command == _BS:
            last = len(result) - 1
            for i, (cid, extents) in enumerate(result):
                self._send(p.BlockStatusChunk(handle, cid, tuple(extents), i == last))
        else:
            ok = self._proto.send_ok(handle)
            batch = self._batch
            if batch is not None:
                batch.append(ok)
                if len(batch) >= BATCH_BUFFERS_BEFORE_SLEEP:
                    self._flush_batch(batch)
            else:
                self._write([ok])

    def _maybe_finish(self) -> None:
        if self._ops or self._waiting or self._closed:
            return
        backend = self._backend
        if backend is not None and self._wrote and backend.can_flush():
            # A clean disconnect flushes (best effort): many clients never send FLUSH.
            self._wrote = False
            fut = self._loop.run_in_executor(self._server.executor, backend.flush)
            fut.add_done_callback(self._flushed_on_close)
            return
        self._close()

    def _flushed_on_close(self, fut: asyncio.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("nbd.flush_on_close_failed peer=%s error=%r", self.peer, fut.exception())
        self._close()

    def info(self) -> dict[str, Any]:
        """What this connection is doing (for status listings)."""
        return {
            "peer": self.peer,
            "identity": self.identity,
            "export": self.export.name if self.export else None,
            "tls": self._tls,
            "requests": self.requests,
            "inflight": len(self._ops) + len(self._waiting),
            "since": self.started,
        }


#: Options that look exports up, with the event field naming the export (LIST: all).
_RESOLVING: dict[type, str] = {
    p.ExportNameOption: "name",
    p.GoOption: "name",
    p.InfoOption: "name",
    p.ListOption: "",
    p.ListMetaContextOption: "export_name",
    p.SetMetaContextOption: "export_name",
}

_OPTION_HANDLERS: dict[type, Any] = {
    p.ExportNameOption: NBDConnection._opt_export_name,
    p.GoOption: NBDConnection._opt_info,
    p.InfoOption: NBDConnection._opt_info,
    p.ListOption: NBDConnection._opt_list,
    p.AbortOption: NBDConnection._opt_abort,
    p.StructuredReplyOption: NBDConnection._opt_structured,
    p.ListMetaContextOption: NBDConnection._opt_meta,
    p.SetMetaContextOption: NBDConnection._opt_meta,
    p.StartTLSOption: NBDConnection._opt_starttls,
}

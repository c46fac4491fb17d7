"""One client connection: transport, batching and ordering, over the sans-I/O protocol.

This is the nbdkit ``connections.c`` of loft's server: it owns the socket, turns bytes
into events (:class:`loft.nbd.protocol.Connection`), hands options to the handshake
(:mod:`._handshake`) and requests to the dispatcher (:mod:`._dispatch`), and writes the
replies. Requests are served on the event loop thread when the backend says the range is
resident (page cache, a local working copy): that is the fast path, with no task or
thread per request, and small plain READs skip even the event objects, taken from the
receive buffer in bursts (``_read_burst``). FLUSH, FUA writes, WRITEs of
``OFFLOAD_WRITE`` bytes or more and ranges that need a fetch run on the server's worker
threads and are answered when they finish, possibly out of order; large WRITEs that only
copy into the page cache run one after another, in the connection's lane (``_lane``). A
request that overlaps an earlier unfinished one (and either modifies data) waits for it,
so overlapping requests take effect in arrival order.

Memory is bounded by what a connection does, not by how long it lives: the receive
buffer is allocated on the first read and dropped again when the connection is idle
(``sweep``), big socket buffers are asked for only once a client reaches transmission,
and the bytes of requests and replies in flight are charged to the connection's and the
server's byte budgets (:mod:`._budget`): a client that stops reading its replies stops
being read from, instead of growing the server.

Longer than most modules because it is the one place where a connection's bytes move:
what is read, what runs, what is written back and what that holds. The rules it applies
live elsewhere: options in ``_handshake``, requests in ``_dispatch``, budgets in
``_budget``.
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
from loft.nbd.backends.base import Backend, Buffer
from loft.nbd.server._budget import LARGE_REQUEST
from loft.nbd.server._dispatch import SPARSE_READ_MIN, WouldBlock, execute
from loft.nbd.server._errno import errno_for
from loft.nbd.server._exports import Export
from loft.nbd.server._handshake import (
    ABORT,
    CLOSE,
    ENTER,
    RESOLVE,
    START_TLS,
    Answer,
    Negotiation,
    resolve_exports,
)
from loft.nbd.server._lane import Lane
from loft.nbd.server._tls import peer_identity
from loft.nbd.server._validate import ExportView, validate_request
from loft.telemetry import NBD

if TYPE_CHECKING:
    from loft.nbd.server._server import NBDServer

__all__ = ["HANDSHAKE_TIMEOUT", "MAX_INFLIGHT", "OFFLOAD_WRITE", "NBDConnection"]

log = logging.getLogger("loft.nbd")

#: Seconds a client has to finish the handshake (a silent client must not hold a slot).
HANDSHAKE_TIMEOUT = 30.0
#: Requests queued or running on worker threads before the server stops reading from
#: this client (back-pressure on their number; their bytes have budgets, _budget.py).
MAX_INFLIGHT = 64
#: Reply bytes a transport may hold without being charged to the budgets: up to its
#: high-water mark (64 KiB in uvloop) it keeps accepting replies, beyond it the
#: connection stops reading (pause_writing), and a client that does not read is charged
#: for everything queued.
QUEUED_FREE = 64 * 1024
#: Under TLS the encrypted replies wait in the TCP transport, which tells only the TLS
#: layer when it drains: a connection with replies queued there looks again after this
#: long, doubling up to DRAIN_POLL_MAX while nothing moves.
DRAIN_POLL_MIN = 0.002
DRAIN_POLL_MAX = 0.5

# Plain ints: enum comparisons cost more than the rest of a request's bookkeeping.
_READ, _WRITE, _FLUSH = int(p.Command.READ), int(p.Command.WRITE), int(p.Command.FLUSH)
_ZERO, _BS, _DISC = int(p.Command.WRITE_ZEROES), int(p.Command.BLOCK_STATUS), int(p.Command.DISC)
_MODIFYING = frozenset((_WRITE, int(p.Command.TRIM), _ZERO))
#: Commands whose bytes stay in memory while they are in flight (READ: its reply data;
#: WRITE: its payload). TRIM, WRITE_ZEROES and CACHE lengths are effects, not buffers.
_HOLDING = frozenset((_READ, _WRITE))
_FUA = int(p.CmdFlag.FUA)
#: Each command's name in the latency counts (and the direction of the bytes it moves).
_OP_NAMES = {int(c): c.name.lower() for c in p.Command}
_DIRECTIONS = {_READ: "read", _WRITE: "write"}
_NEED_DATA, _PAUSED, _REQUEST = p.NEED_DATA, p.PAUSED, p.Request

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
#: WRITEs at least this large run on a worker thread (the connection's lane, see
#: :mod:`._lane`) even when their range is resident: the event loop receives the next
#: payload while the worker copies this one into the page cache, so the two copies use
#: both cores. Measured with fio (sequential writes at depth 8, loft's file server,
#: alternating with nbdkit), inline against the lane: 256 KiB writes went from 1,390-1,560
#: to 1,710-1,900 MB/s and 1 MiB from 1,670-2,340 (then through ``run_in_executor``) to
#: 2,930-2,990; 128 KiB writes lose 8%, where the hand-off costs more than the copy it
#: overlaps.
OFFLOAD_WRITE = 256 * 1024


def _grow_socket_buffers(transport: asyncio.BaseTransport) -> None:
    """Ask for socket buffers that hold a few large requests/replies: one writev moves a
    whole 1 MiB READ reply instead of several trips through the event loop. Only once a
    client is in transmission: the kernel may then queue megabytes for it."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)


def _cost(req: p.Request) -> int:
    """Bytes ``req`` holds while in flight."""
    return req.length if req.command in _HOLDING else 0


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
        self._proto = p.Connection(
            p.SERVER, pool=server.payload_pool, hold_payloads_from=LARGE_REQUEST
        )
        self._transport: asyncio.BaseTransport | None = None
        #: under TLS, the TCP transport below it (the encrypted replies queue there)
        self._raw: asyncio.BaseTransport | None = None
        self._nego = Negotiation(
            server.exports,
            server.authorizer,
            trusted=trusted,
            tls_required=tls_required,
            tls_available=server.ssl_context is not None,
        )
        self.peer = ""
        self.export: Export | None = None
        self._backend: Backend | None = None
        #: the backend's bytes of a range when at hand, else None (see read_resident)
        self._resident_read: Callable[[int, int], Buffer | None] = self._read_resident
        self._view = ExportView(0, 0, False, False)
        #: the meta contexts selected in the handshake, by id (for BLOCK_STATUS)
        self._contexts: dict[int, str] = {}
        #: requests on worker threads, and requests waiting behind an overlapping one;
        #: both are charged to the account (see _start)
        self._ops: list[p.Request] = []
        self._waiting: deque[p.Request] = deque()
        self._account = server.budget.account(self._wake)
        #: reply bytes queued in the transport, as charged to the account
        self._queued = 0
        #: the charged payload of a WRITE being received, until its request arrives
        self._payload_charged = 0
        #: a large request (or, as its length, a held WRITE payload) that did not fit the
        #: budgets: nothing more is read until it is admitted (see _wake)
        self._deferred: p.Request | int | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drain_delay = DRAIN_POLL_MIN
        self._write_paused = False
        self._reading_paused = False
        #: no new request may be taken: MAX_INFLIGHT reached, a budget exhausted, or a
        #: request deferred (kept up to date by _settle, so the loop tests one flag)
        self._full = False
        #: handshake work in flight off the loop (a TLS upgrade, an export lookup):
        #: nothing more is read or processed until it is done
        self._suspended = False
        self._registered = False
        self._handshaking = True
        self._closing = False
        self._closed = False
        self._wrote = False
        self.requests = 0
        #: when each request in flight arrived, by handle (its latency is to its reply)
        self._arrived: dict[int, float] = {}
        #: when the batch being processed was received; small READs answered in it since
        #: its replies last went out, and their bytes (timed together: _observe_inline)
        self._batch_started = 0.0
        self._inline_reads = 0
        self._inline_read_bytes = 0
        self._swept_requests = -1
        self.started = time.time()
        self._timer: asyncio.TimerHandle | None = None
        #: replies produced while processing one batch of received requests, written
        #: with a single writelines (one syscall instead of one per reply)
        self._batch: list[Any] | None = None
        #: where this connection's large WRITEs run (made at the first one)
        self._lane: Lane | None = None

    # --- asyncio callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._transport is not None:  # start_tls re-attaches us to the TLS transport
            return
        self._transport = transport
        self.peer = _peer_name(transport.get_extra_info("peername"))
        if not self._server._register(self):
            self._closing = self._closed = True
            transport.close()
            return
        self._registered = True
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
        self._account_queued()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._account_queued()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._registered:
            return
        self._registered = False
        self._closed = True
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        self._server._unregister(self, self._handshaking)
        # What nothing will release any more: queued replies, a half-received payload.
        # Requests on worker threads release theirs when they finish (_op_done).
        self._account_queued()
        if self._payload_charged:
            self._account.release(self._payload_charged)
            self._payload_charged = 0
        self._deferred = None
        self._account.close()
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
        if self._inline_reads:
            self._observe_inline()

    def _observe_inline(self) -> None:
        """Count the small READs answered since the batch's replies last went out. Each
        waited from the batch's arrival until now, when its reply was written: one
        clock reading and one count for them all, not two and one per request."""
        NBD.observe(
            "read",
            time.perf_counter() - self._batch_started,
            "read",
            self._inline_read_bytes,
            self._inline_reads,
        )
        self._inline_reads = self._inline_read_bytes = 0

    def _send(self, event: object) -> None:
        self._write(self._proto.send_buffers(event))

    def _busy(self) -> bool:
        # A payload being received is read to its end whatever else holds: it is
        # already admitted, and its request releases what it holds.
        return (
            self._write_paused
            or self._suspended
            or (self._full and not self._proto.receiving_payload)
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

    def _settle(self) -> None:
        """Decide whether more requests may be taken (after the requests in flight, the
        bytes charged or the server's budget changed)."""
        self._full = (
            self._deferred is not None
            or len(self._ops) + len(self._waiting) >= MAX_INFLIGHT
            or self._account.blocked()
        )

    def _release(self, n: int) -> None:
        """Give back ``n`` bytes; the connection may take requests again."""
        self._account.release(n)
        if self._full:
            self._settle()

    def _wake(self) -> None:
        """Something was released (here, or anywhere when the server's budget was what
        held this connection): admit what waits, then read on."""
        if self._closed:
            return
        deferred = self._deferred
        if deferred is not None:
            if type(deferred) is int:
                if not self._account.admit(deferred):
                    return
                self._deferred = None
                self._proto.accept_payload()
                self._payload_charged = deferred
            else:
                assert isinstance(deferred, p.Request)
                if not self._account.admit(deferred.length):
                    return
                self._deferred = None
                self._serve_admitted(deferred)
        self._settle()
        self._process()

    def _account_queued(self) -> None:
        """Charge the reply bytes queued in the transport beyond QUEUED_FREE (measured:
        the transport says when it pauses and resumes, not how it drains)."""
        queued = 0
        if not self._closed and self._transport is not None:
            queued = self._transport.get_write_buffer_size()  # type: ignore[attr-defined]
            if self._raw is not None:
                queued += self._raw.get_write_buffer_size()  # type: ignore[attr-defined]
            if queued <= QUEUED_FREE:
                queued = 0
        delta = queued - self._queued
        self._queued = queued
        if delta > 0:
            self._account.add(delta)
        elif delta < 0:
            self._release(-delta)
        if not queued:
            self._drain_delay = DRAIN_POLL_MIN
        elif not self._write_paused and self._drain_timer is None:
            # Queued below TLS, where no resume_writing will announce the drain.
            self._drain_timer = self._loop.call_later(self._drain_delay, self._drain_poll)
            self._drain_delay = min(2 * self._drain_delay, DRAIN_POLL_MAX)

    def _drain_poll(self) -> None:
        self._drain_timer = None
        before = self._queued
        self._account_queued()
        if self._queued < before:
            self._wake()

    def sweep(self) -> bool:
        """Called now and then by the server: a connection that received no request
        since the last call drops its receive buffer (allocated again on the next
        read), so idle connections cost a few KiB of objects each. True when idle."""
        idle = self.requests == self._swept_requests and not (self._ops or self._waiting)
        if idle:
            self._proto.trim()
        self._swept_requests = self.requests
        return idle

    def _fail(self, exc: BaseException) -> None:
        """An unexpected error while handling this client: log it and drop the client at
        once (its peers and the server go on)."""
        log.error("nbd.internal_error peer=%s error=%r", self.peer, exc, exc_info=exc)
        self._abort(f"internal error: {type(exc).__name__}")

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
        self._batch_started = time.perf_counter()
        # Small READs are first taken in bursts (see _read_burst), until one is not
        # answered at once or another request comes: from there on, one by one.
        bursts = self._backend is not None
        try:
            while not (
                self._closing
                or self._write_paused
                or self._suspended
                or (self._full and not proto.receiving_payload)
            ):
                if bursts:
                    try:
                        bursts = not (self._ops or self._waiting) and self._read_burst()
                    except Exception as e:  # as below: a bug ends this client, not the server
                        self._batch = None
                        self._fail(e)
                        return
                    continue
                try:
                    event = proto.next_event()
                except p.RemoteProtocolError as e:
                    self._batch = None
                    self._abort(f"protocol error: {e}")
                    return
                if event is _NEED_DATA or event is _PAUSED:
                    if event is _PAUSED and (held := proto.held_payload):
                        # A large WRITE's header: allocate its payload only if it fits.
                        if self._account.admit(held):
                            proto.accept_payload()
                            self._payload_charged = held
                            self._settle()
                            continue
                        self._defer(held)
                    break
                try:
                    if type(event) is _REQUEST:
                        self._on_request(event)
                    else:
                        self._on_handshake(event)
                except Exception as e:  # a bug must end this client now, not hang it
                    self._batch = None
                    self._fail(e)
                    return
        finally:
            self._batch = None
        if batch:
            self._write(batch)
        if self._inline_reads:
            self._observe_inline()
        self._update_reading()

    # --- handshake ------------------------------------------------------------------

    @property
    def identity(self) -> str | None:
        """The TLS client certificate's identity (None without TLS)."""
        return self._nego.identity

    def _on_handshake(self, event: object) -> None:
        if type(event) is p.ConnectionClosed:
            self._client_closed()
            return
        option = self._proto.current_option or 0
        answer = self._nego.answer(event, option, self._proto.structured_replies)
        if answer.action is RESOLVE:
            self._suspended = True
            self._update_reading()
            self._server._spawn(self._resolve_then_answer(event, option))
            return
        self._apply(answer)

    async def _resolve_then_answer(self, event: object, option: int) -> None:
        exports = self._server.exports
        try:
            resolved = await self._loop.run_in_executor(None, resolve_exports, exports, event)
        except Exception as e:
            self._abort(f"export lookup failed: {e}")
            return
        if self._closed:
            return
        try:
            answer = self._nego.answer(event, option, self._proto.structured_replies, resolved)
            self._suspended = False
            self._apply(answer)
        except Exception as e:  # a task that dies silently would leave the client waiting
            self._fail(e)
            return
        self._update_reading()
        self._process()

    def _apply(self, answer: Answer) -> None:
        """Send an answer's replies and do what it says next."""
        action = answer.action
        if action is ABORT:
            self._abort(answer.reason)
            return
        for reply in answer.replies:
            self._send(reply)
        if action is ENTER:
            assert answer.export is not None
            self._enter_transmission(answer.export, answer.flags)
        elif action is START_TLS:
            # Stop reading now: the client's TLS hello must reach the TLS layer, not us.
            self._suspended = True
            self._update_reading()
            self._server._spawn(self._start_tls())
        elif action is CLOSE:
            self._close()

    def _enter_transmission(self, export: Export, flags: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handshaking = False
        self._server._handshake_done()
        assert self._transport is not None
        _grow_socket_buffers(self._transport)
        self.export = export
        self._backend = export.backend
        self._resident_read = export.backend.read_resident or self._read_resident
        self._contexts = self._nego.contexts
        self._view = ExportView(
            export.backend.size, flags, self._proto.structured_replies, bool(self._contexts)
        )
        log.info("nbd.open peer=%s export=%s flags=0x%x", self.peer, export.name, flags)

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
        self._raw = t
        self._reading_paused = False
        try:
            self._nego.tls_started(peer_identity(new.get_extra_info("peercert")))
            self._proto.tls_established()
        except p.ProtocolError as e:
            self._abort(str(e))
            return
        except Exception as e:
            self._fail(e)
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
        if (
            command == _READ
            and not req.flags
            and 0 < req.length < SPARSE_READ_MIN
            and req.offset + req.length <= self._view.size
            and not (self._ops or self._waiting)
        ):
            self._read_small(req)
            return
        if command == _DISC:
            self._client_closed()
            return
        self._arrived[req.handle] = time.perf_counter()
        err = validate_request(command, req.flags, req.offset, req.length, self._view)
        if err:
            if self._payload_charged:  # a rejected WRITE: its payload is dropped
                self._release(self._payload_charged)
                self._payload_charged = 0
            self._reply_error(req, err, "invalid request")
            return
        if req.length >= LARGE_REQUEST and command in _HOLDING:
            if self._payload_charged:  # admitted when its header came (see _process)
                self._payload_charged = 0
            elif not self._account.admit(req.length):
                self._defer(req)
                return
            self._serve_admitted(req)
            return
        if (self._ops or self._waiting) and self._must_wait(req):
            self._account.add(_cost(req))
            self._waiting.append(req)
            self._settle()
            return
        self._start(req, False)

    def _read_burst(self) -> bool:
        """Answer the small plain READs waiting at the front of the received bytes
        from resident data, without an event object per request (the hot path of 4 KiB
        random reads; see Connection.peek_plain_reads). Nothing may be in flight: the
        READs then overlap nothing. True when the READs taken were all answered (more
        may follow); False when there were none, or the last one taken was not
        resident: it went to a worker thread, and what follows it takes the general
        path."""
        proto = self._proto
        reads = proto.peek_plain_reads(SPARSE_READ_MIN, self._view.size)
        if not reads:
            return False
        read = self._resident_read
        reply = proto.send_read_data
        batch = self._batch
        assert batch is not None  # called from _process only, inside its batch
        done = nbytes = 0
        missed = None
        for handle, offset, length in reads:
            try:
                data = read(offset, length)
            except Exception:  # the worker's read reports it (as the backend translates it)
                data = None
            if data is None:
                missed = p.Request.from_wire(_READ, handle, offset, length, 0, None)
                break
            batch += reply(handle, offset, data)
            done += 1
            nbytes += length
            if len(batch) >= BATCH_BUFFERS:
                break  # the flush below may pause writing: _process looks again
        self._inline_reads += done  # before the flush, which writes and times them
        self._inline_read_bytes += nbytes
        self.requests += done
        if missed is not None:
            proto.skip_plain_reads(done + 1)
            self.requests += 1
            self._arrived[missed.handle] = self._batch_started
            self._to_worker(missed, False)
        else:
            proto.skip_plain_reads(done)
        if len(batch) >= BATCH_BUFFERS:
            self._flush_batch(batch)
        return missed is None

    def _read_resident(self, offset: int, length: int) -> Buffer | None:
        """A backend's resident bytes when it has no read_resident of its own."""
        backend = self._backend
        assert backend is not None
        if backend.is_resident(offset, length):
            return backend.pread_nowait(offset, length)
        return None

    def _read_small(self, req: p.Request) -> None:
        """A small plain READ, valid and overlapping nothing in flight, that did not come
        in a burst (see _read_burst): answered at once from resident data, with none
        of the general path's steps (validation, dispatch, a clock reading per
        request), else read on a worker thread."""
        offset, length = req.offset, req.length
        try:
            data = self._resident_read(offset, length)
        except Exception:  # the worker's read reports it (as the backend translates it)
            data = None
        if data is None:
            self._arrived[req.handle] = self._batch_started
            self._to_worker(req, False)
            return
        batch = self._batch
        assert batch is not None  # called from _process only, inside its batch
        batch += self._proto.send_read_data(req.handle, offset, data)
        self._inline_reads += 1  # before a flush: that flush writes this reply, and times it
        self._inline_read_bytes += length
        if len(batch) >= BATCH_BUFFERS:
            self._flush_batch(batch)

    def _defer(self, what: p.Request | int) -> None:
        """Hold a large request, or a WRITE payload, until the budgets have room; read
        nothing more meanwhile."""
        self._deferred = what
        self._full = True

    def _must_wait(self, req: p.Request) -> bool:
        """``req`` overlaps an unfinished earlier request (one modifying data)."""
        for other in self._ops:
            if _overlaps(req, other):
                return True
        for other in self._waiting:  # noqa: SIM110 (plain loops: cheaper than any())
            if _overlaps(req, other):
                return True
        return False

    def _serve_admitted(self, req: p.Request) -> None:
        """Run a large request whose bytes are charged already."""
        if (self._ops or self._waiting) and self._must_wait(req):
            self._waiting.append(req)
            self._settle()
        elif self._start(req, True):
            self._release(req.length)
            if self._raw is not None:  # its reply may sit below TLS: see _account_queued
                self._account_queued()

    def _start(self, req: p.Request, charged: bool) -> bool:
        """Run ``req``: inline when its range is resident (True: it is answered), else on
        a worker thread (False), charged to the account until it is done."""
        backend = self._backend
        assert backend is not None
        command = req.command
        if command in _MODIFYING:
            self._wrote = True
            batch = self._batch
            if batch is not None and len(batch) >= BATCH_BUFFERS_BEFORE_SLEEP:
                self._flush_batch(batch)
        large_write = command == _WRITE and req.length >= OFFLOAD_WRITE
        if not (
            command == _FLUSH
            or large_write
            or (req.flags & _FUA and command in _MODIFYING)
            or (command == _ZERO and not backend.can_zero())
            or not backend.is_resident(req.offset, req.length)
        ):
            try:
                result = execute(backend, req, self._view.structured_replies, self._contexts, True)
            except WouldBlock:
                pass  # data not in memory after all: read it on a worker thread
            except Exception as e:
                self._reply_failure(req, e)
                return True
            else:
                if command == _WRITE and backend.copies_writes:
                    self._proto.recycle(req.payload)
                self._reply(req, result)
                return True
        # A large WRITE that only copies into the page cache goes to the lane, one after
        # another; one that must wait (a fetch, a commit near max_dirty, FUA's sync) runs
        # beside the others, as any request that waits does.
        in_lane = (
            large_write and not req.flags & _FUA and backend.is_resident(req.offset, req.length)
        )
        self._to_worker(req, charged, in_lane)
        return False

    def _to_worker(self, req: p.Request, charged: bool, in_lane: bool = False) -> None:
        """Run ``req`` on a worker thread (in the connection's lane if ``in_lane``),
        charged to the account until it is done."""
        backend = self._backend
        assert backend is not None
        if not charged:
            self._account.add(_cost(req))
        self._ops.append(req)
        self._settle()
        run = partial(execute, backend, req, self._view.structured_replies, self._contexts, False)
        if in_lane:
            lane = self._lane
            if lane is None:
                lane = self._lane = Lane(self._loop, self._server.executor)
            lane.submit(run, partial(self._op_finished, req))
            return
        fut = self._loop.run_in_executor(self._server.executor, run)
        fut.add_done_callback(partial(self._op_done, req))

    def _op_done(self, req: p.Request, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._op_finished(req, None, asyncio.CancelledError())
        elif (exc := fut.exception()) is not None:
            self._op_finished(req, None, exc)
        else:
            self._op_finished(req, fut.result(), None)

    def _op_finished(self, req: p.Request, result: Any, exc: BaseException | None) -> None:
        """A request run on a worker thread is done: answer it and start what waited."""
        self._ops.remove(req)
        if isinstance(exc, asyncio.CancelledError):
            self._reply_error(req, p.Errno.ESHUTDOWN, "server shutting down")
        elif exc is not None:
            self._reply_failure(req, exc)
        else:
            self._reply(req, result)
            backend = self._backend
            if req.command == _WRITE and backend is not None and backend.copies_writes:
                self._proto.recycle(req.payload)
        self._release(_cost(req))
        if self._waiting:
            waiting, self._waiting = self._waiting, deque()
            for r in waiting:
                if self._must_wait(r):
                    self._waiting.append(r)
                elif self._start(r, True):
                    self._release(_cost(r))
        # Replies written while the transport is paused add to its queue unannounced.
        self._account_queued()
        if self._closing:
            self._maybe_finish()
        else:
            self._wake()

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

    def _answered(self, req: p.Request) -> None:
        arrived = self._arrived.pop(req.handle, None)
        if arrived is not None:
            command = req.command
            direction = _DIRECTIONS.get(command, "")
            NBD.observe(
                _OP_NAMES.get(command, "other"),
                time.perf_counter() - arrived,
                direction,
                req.length if direction else 0,
            )

    def _reply_error(self, req: p.Request, errno: int, message: str) -> None:
        self._answered(req)
        if self._view.structured_replies and req.command in (_READ, _BS):
            self._send(p.ErrorChunk(req.handle, errno, message))
        else:
            self._send(p.SimpleReply(req.handle, errno))

    def _reply(self, req: p.Request, result: Any) -> None:
        self._answered(req)
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
            fut = self._loop.run_in_executor(self._server.executor, backend.flush_on_close)
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
            "tls": self._nego.tls,
            "requests": self.requests,
            "inflight": len(self._ops) + len(self._waiting),
            "since": self.started,
        }


def _peer_name(peer: object) -> str:
    """``host:port`` for a TCP peer (one word, as log fields are), ``unix`` otherwise."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "unix"

"""The sans-I/O connection object: bytes in, events out; events in, bytes out."""

from __future__ import annotations

import struct
from typing import Any

from loft.nbd.protocol import _events as ev
from loft.nbd.protocol import _state as st
from loft.nbd.protocol._constants import (
    MAX_PAYLOAD,
    REQUEST_HEADER,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    Command,
    ReplyFlag,
    ReplyType,
)
from loft.nbd.protocol._errors import LocalProtocolError, RemoteProtocolError
from loft.nbd.protocol._readers import (
    DIRECT_PAYLOAD_MIN,
    READERS,
    WriteHeader,
    read_plain_reads,
    read_request,
)
from loft.nbd.protocol._writers import WRITERS, Buffers

__all__ = ["INITIAL_RECEIVE_SIZE", "RECEIVE_BUFFER_SIZE", "Connection", "PayloadPool"]

#: Largest size the receive buffer grows to by itself, for headers and small payloads.
#: Large WRITE payloads are received straight into their own buffer, so this only needs
#: to hold many headers: 256 KiB takes a queue of 32 WRITEs of 4 KiB in one read.
RECEIVE_BUFFER_SIZE = 256 * 1024
#: The receive buffer is allocated on the first read at this size and doubles each time
#: a read fills it, up to RECEIVE_BUFFER_SIZE (a message longer than that, an option of
#: MAX_OPTION_LENGTH, gets a buffer of its size). trim() drops it: an idle connection
#: then holds no receive buffer at all (a connection used to cost 256 KiB from its
#: first byte; 3000 idle ones held 760 MiB).
INITIAL_RECEIVE_SIZE = 4096
#: Payload buffers at least this large are worth keeping for reuse (see recycle()).
RECYCLE_MIN = 64 * 1024
#: Bytes of spare payload buffers a connection keeps for itself when it is given no
#: pool: a client's queue depth of same-sized writes in flight needs no more.
DEFAULT_POOL_BYTES = 8 * 1024 * 1024
_DISC = int(Command.DISC)
_WRITE = int(Command.WRITE)
#: Structured OFFSET_DATA chunk header with its offset field, packed in one go.
_DATA_CHUNK = struct.Struct(">IHHQIQ")
_DONE = int(ReplyFlag.DONE)
_OFFSET_DATA = int(ReplyType.OFFSET_DATA)

#: The payload of a held WRITE (see Connection.held_payload): not received yet.
_HELD = bytearray()
#: Events that end (a simple reply) or may end (a chunk with DONE) a request's reply.
_REPLIES = frozenset(
    (
        ev.SimpleReply,
        ev.OffsetDataChunk,
        ev.OffsetHoleChunk,
        ev.BlockStatusChunk,
        ev.ErrorChunk,
        ev.NoneChunk,
    )
)


class PayloadPool:
    """Spare WRITE payload buffers, reused by later payloads of the same size instead of
    allocating and zero-filling megabytes per request. Bounded in bytes, so the spares
    of many connections never add up: a server gives all its connections one pool."""

    def __init__(self, max_bytes: int = DEFAULT_POOL_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._spare: list[bytearray] = []

    def take(self, length: int) -> bytearray | None:
        """A spare buffer of exactly ``length`` bytes (its old contents), or None."""
        spare = self._spare
        for i in range(len(spare)):
            if len(spare[i]) == length:
                self.bytes -= length
                return spare.pop(i)
        return None

    def give(self, buffer: bytearray) -> None:
        """Keep ``buffer`` for reuse, dropping the oldest spares to stay within bounds."""
        n = len(buffer)
        if n > self.max_bytes:
            return
        spare = self._spare
        while spare and self.bytes + n > self.max_bytes:
            self.bytes -= len(spare.pop(0))
        spare.append(buffer)
        self.bytes += n

    def clear(self) -> None:
        """Drop every spare buffer."""
        self._spare.clear()
        self.bytes = 0


class Connection:
    """One side of an NBD connection, without any I/O.

    Feed received bytes with :meth:`receive_data` (or, zero-copy, with
    :meth:`get_buffer` + :meth:`buffer_updated`), pull events with :meth:`next_event`
    until it returns :data:`NEED_DATA` or :data:`PAUSED`, and turn events into bytes
    with :meth:`send` / :meth:`send_buffers`.

    ``pool`` holds spare WRITE payload buffers (one of its own by default).
    ``hold_payloads_from``: a WRITE whose payload is at least this long is *held* once its
    header is parsed: :meth:`next_event` returns :data:`PAUSED` and :attr:`held_payload`
    says its length, and nothing of it is received until :meth:`accept_payload` -- so a
    server can decide whether it has the memory for the payload before allocating it.
    """

    def __init__(
        self,
        role: st.Sentinel,
        *,
        pool: PayloadPool | None = None,
        hold_payloads_from: int | None = None,
    ) -> None:
        if role not in (st.CLIENT, st.SERVER):
            raise LocalProtocolError("role must be CLIENT or SERVER")
        self.role = role
        self._st = st.ConnectionState()
        #: received bytes not yet parsed are _buf[_start:_end]; nothing is allocated
        #: before the first read (see INITIAL_RECEIVE_SIZE)
        self._buf = bytearray()
        self._start = 0
        self._end = 0
        #: the size the receive buffer is (re)allocated at, and the free space below
        #: which it is compacted or grown
        self._size = INITIAL_RECEIVE_SIZE
        self._min_free = INITIAL_RECEIVE_SIZE // 4
        #: bytes the current partial message needs in the buffer (a growth hint)
        self._need = 0
        self._no_zeroes = False
        self._greeting_no_zeroes = True
        #: client side: handle -> READ length of every request still waiting for its reply
        self._pending_reads: dict[int, int] = {}
        self._eof = False
        #: a WRITE whose payload is being received into its own buffer
        self._payload: bytearray | None = None
        self._payload_filled = 0
        self._payload_header: WriteHeader | None = None
        #: WRITE payload buffers handed back by :meth:`recycle`, reused by later payloads
        #: of the same size (the socket overwrites every byte, so no zero-filling)
        self._pool = pool if pool is not None else PayloadPool()
        self._hold_from = MAX_PAYLOAD + 1 if hold_payloads_from is None else hold_payloads_from
        #: set after a large WRITE (DIRECT_PAYLOAD_MIN): the next read takes one request
        #: header only, so that if another large payload follows, the socket writes it
        #: straight into its buffer instead of into the receive buffer, from where it
        #: would have to be copied
        self._header_only = False

    # --- state ----------------------------------------------------------------------

    @property
    def state(self) -> st.Sentinel:
        """The connection's current state sentinel."""
        return self._st.state

    @property
    def structured_replies(self) -> bool:
        """True once NBD_OPT_STRUCTURED_REPLY was acknowledged (reset by STARTTLS)."""
        return self._st.structured_replies

    @property
    def current_option(self) -> int | None:
        """The option being answered, in OPTION_REPLY."""
        return self._st.current_option

    @property
    def no_zeroes(self) -> bool:
        """Both sides agreed to leave out the 124 zero bytes after an EXPORT_NAME reply."""
        return self._no_zeroes

    def reply_length(self, handle: int) -> int | None:
        """Client side: the READ length of request ``handle`` (0: not a READ), or None
        when no request with that handle awaits its reply."""
        return self._pending_reads.get(handle)

    def tls_established(self) -> None:
        """Tell the connection the TLS handshake after STARTTLS succeeded."""
        if self._end != self._start:
            raise RemoteProtocolError("plaintext data after STARTTLS")
        try:
            self._st.tls_established()
        except ValueError as e:
            raise LocalProtocolError(str(e)) from None

    # --- receiving ------------------------------------------------------------------

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer for the next received bytes (see :meth:`buffer_updated`).

        While a large WRITE payload is incomplete this is the payload's own buffer, so
        the socket writes the data straight where it will stay.
        """
        payload = self._payload
        if payload is not None and self._payload_filled < len(payload):
            return memoryview(payload)[self._payload_filled :]
        buf = self._buf
        end = self._end
        if end == len(buf):  # the last read filled the buffer (or there is none yet)
            buf = self._make_room(grow=True)
            end = self._end
        elif self._start == end:
            self._start = self._end = end = 0
        else:
            free = len(buf) - end
            if free < self._min_free or free < self._need - (end - self._start):
                buf = self._make_room(grow=False)
                end = self._end
        if self._header_only and end - self._start < REQUEST_HEADER.size:
            return memoryview(buf)[end : self._start + REQUEST_HEADER.size]
        return memoryview(buf)[end:]

    def _make_room(self, grow: bool) -> bytearray:
        """Move the unparsed bytes to the front, into a larger buffer when the message
        being received needs one or when reads keep filling it (``grow``)."""
        buf = self._buf
        if grow and buf and self._size < RECEIVE_BUFFER_SIZE:
            self._size = min(2 * self._size, RECEIVE_BUFFER_SIZE)
            self._min_free = self._size // 4
        used = self._end - self._start
        want = max(self._size, self._need, used + self._min_free)
        if want > len(buf):
            new = bytearray(want)
            new[:used] = memoryview(buf)[self._start : self._end]
            self._buf = buf = new
        elif self._start:
            buf[:used] = memoryview(buf)[self._start : self._end]
        self._start, self._end = 0, used
        return buf

    def buffer_updated(self, nbytes: int) -> bool:
        """``nbytes`` were written into the buffer last returned by :meth:`get_buffer`.

        Returns False while a WRITE payload is still incomplete (no event can be ready:
        a caller may skip :meth:`next_event` until more data arrives)."""
        payload = self._payload
        if payload is not None and self._payload_filled < len(payload):
            self._payload_filled += nbytes
            return self._payload_filled >= len(payload)
        self._end += nbytes
        return True

    def trim(self) -> bool:
        """Give the receive buffer back when it holds nothing (an idle connection): the
        next read allocates a small one again. Returns True when it was dropped."""
        if self._start != self._end or self._payload is not None or self._need:
            return False
        self._buf = bytearray()
        self._start = self._end = 0
        self._size = INITIAL_RECEIVE_SIZE
        self._min_free = INITIAL_RECEIVE_SIZE // 4
        return True

    @property
    def buffered(self) -> int:
        """Bytes of memory this connection holds for received data: its receive buffer
        and the payload being received."""
        payload = self._payload
        return len(self._buf) + (len(payload) if payload is not None else 0)

    @property
    def held_payload(self) -> int:
        """The length of a held WRITE payload waiting for :meth:`accept_payload`, or 0."""
        if self._payload is _HELD:
            assert self._payload_header is not None
            return self._payload_header.length
        return 0

    @property
    def receiving_payload(self) -> bool:
        """An accepted WRITE payload is being received (its request is not complete)."""
        payload = self._payload
        return payload is not None and payload is not _HELD

    def accept_payload(self) -> None:
        """Start receiving the held WRITE payload (into a buffer of its own)."""
        header = self._payload_header
        if self._payload is not _HELD or header is None:
            raise LocalProtocolError("no WRITE payload is held")
        self._payload = None
        self._begin_payload(header)

    def _new_payload(self, length: int) -> bytearray:
        """A buffer for a WRITE payload of ``length`` bytes (a recycled one if any fits)."""
        spare = self._pool.take(length)
        return spare if spare is not None else bytearray(length)

    def recycle(self, payload: object) -> None:
        """Hand back the payload of a WRITE the caller is done with (nothing refers to it
        any more): a later payload of the same size reuses it instead of allocating and
        zero-filling megabytes. Small or foreign buffers are ignored."""
        if type(payload) is bytearray and len(payload) >= RECYCLE_MIN:
            self._pool.give(payload)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes; an empty ``data`` means the peer closed its side."""
        if self._eof and data:
            raise LocalProtocolError("data received after end of file")
        if not data:
            self._eof = True
            return
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            with self.get_buffer(len(view) - pos) as target:
                n = min(len(target), len(view) - pos)
                target[:n] = view[pos : pos + n]
            self.buffer_updated(n)
            pos += n

    def _begin_payload(self, header: WriteHeader) -> None:
        """Receive the rest of this WRITE straight into its own buffer (see get_buffer),
        starting with the part already in the receive buffer."""
        payload = self._new_payload(header.length)
        have = self._end - self._start
        payload[:have] = memoryview(self._buf)[self._start : self._end]
        self._start = self._end
        self._payload_header = header
        self._payload = payload
        self._payload_filled = have

    def next_event(self) -> object:
        """Return the next event, :data:`NEED_DATA` or :data:`PAUSED`.

        Raises :class:`RemoteProtocolError` (and enters ERROR) when the peer broke the
        protocol; the connection must then be closed.
        """
        state = self._st.state
        if state is st.TRANSMISSION and self.role is st.SERVER and self._payload is None:
            # The per-request hot path: only NBD_CMD_DISC changes the state here.
            try:
                got = read_request(self._buf, self._start, self._end, self)
            except RemoteProtocolError:
                self._st.state = st.ERROR
                raise
            if type(got) is int:
                return self._need_data()
            request: Any
            request, used = got  # type: ignore[misc]
            self._start += used
            if type(request) is WriteHeader:
                self._header_only = request.length >= DIRECT_PAYLOAD_MIN
                if request.length >= self._hold_from:
                    self._payload_header = request
                    self._payload = _HELD
                    return st.PAUSED
                self._begin_payload(request)
                return st.NEED_DATA
            command = request.command
            if command == _WRITE:
                self._header_only = request.length >= DIRECT_PAYLOAD_MIN
            else:
                self._header_only = False
                if command == _DISC:
                    self._st.process(request)
            return request
        if state is st.ERROR:
            raise RemoteProtocolError("connection is in the ERROR state")
        payload = self._payload
        if payload is not None:
            if payload is _HELD:
                return st.PAUSED
            if self._payload_filled < len(payload):
                return self._need_data()
            h = self._payload_header
            assert h is not None
            self._payload = self._payload_header = None
            event: object = ev.Request.from_wire(
                h.command, h.handle, h.offset, h.length, h.flags, payload
            )
        else:
            reader = READERS.get((self.role, state))
            if reader is None:
                if state is st.CLOSED:
                    return st.PAUSED if not self._eof else st.NEED_DATA
                return st.PAUSED
            try:
                got = reader(self._buf, self._start, self._end, self)
            except RemoteProtocolError:
                self._st.state = st.ERROR
                raise
            if type(got) is int:
                if got:
                    self._need = got
                return self._need_data()
            event, used = got  # type: ignore[misc]
            self._start += used
            self._need = 0
            if self.role is st.CLIENT and type(event) in _REPLIES and getattr(event, "done", True):
                self._pending_reads.pop(event.handle)  # type: ignore[attr-defined]
        err = self._st.process(event)
        if err is not None:  # a reader produced an event the state machine refuses
            self._st.state = st.ERROR
            raise RemoteProtocolError(err)
        if type(event) is ev.ClientFlags:
            self._no_zeroes = event.no_zeroes
        elif type(event) is ev.Greeting:
            self._greeting_no_zeroes = event.no_zeroes
        return event

    def peek_plain_reads(self, below: int, limit: int) -> list[tuple[int, int, int]]:
        """The plain small READs at the front of the received bytes, without consuming
        them: ``(handle, offset, length)`` of each READ with no flags, ``0 < length <
        below`` and ``offset + length <= limit``, up to the first request that is
        anything else and at most PLAIN_READS_MAX. Each is the request
        :meth:`next_event` would return next; :meth:`skip_plain_reads` consumes those
        the caller answered. A server's hot path: a 4 KiB random reader at depth 32
        sends 32 at once, and one unpack for them all costs less than an event object
        and two calls each. Empty outside the server's transmission phase and while a
        WRITE payload is being received."""
        if (
            self._payload is not None
            or self._st.state is not st.TRANSMISSION
            or self.role is not st.SERVER
        ):
            return []
        return read_plain_reads(self._buf, self._start, self._end, below, limit)

    def skip_plain_reads(self, n: int) -> None:
        """Consume the first ``n`` requests :meth:`peek_plain_reads` just returned."""
        used = n * REQUEST_HEADER.size
        if n < 0 or used > self._end - self._start:
            raise LocalProtocolError(f"cannot skip {n} requests: not received")
        if n:
            self._start += used
            self._header_only = False

    def _need_data(self) -> object:
        if self._eof:
            if self._start == self._end and self._payload is None:
                if self._st.state is st.CLOSED:
                    return st.NEED_DATA
                self._st.process(ev.ConnectionClosed())
                return ev.ConnectionClosed()
            self._st.state = st.ERROR
            raise RemoteProtocolError("connection closed in the middle of a message")
        return st.NEED_DATA

    # --- sending --------------------------------------------------------------------

    # Fast paths for the two replies almost every request gets. They are equivalent to
    # sending SimpleReply / OffsetDataChunk events, without building an event object.

    def _check_replying(self) -> None:
        state = self._st.state
        if (
            not (state is st.TRANSMISSION or (state is st.CLOSED and self._st.disconnect_requested))
            or self.role is not st.SERVER
        ):
            raise LocalProtocolError(f"cannot reply in state {state!r}")

    def send_ok(self, handle: int) -> bytes:
        """Bytes of a successful reply without data (a simple reply)."""
        self._check_replying()
        return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle)

    def send_read_data(
        self, handle: int, offset: int, data: bytes | bytearray | memoryview
    ) -> Buffers:
        """Buffers of a successful READ reply carrying ``data`` read at ``offset``: one
        final OFFSET_DATA chunk with structured replies, else a simple reply."""
        sm = self._st
        if sm.state is not st.TRANSMISSION or self.role is not st.SERVER:
            self._check_replying()  # the rarer states (a reply after DISC), or the error
        if sm.structured_replies:
            hdr = _DATA_CHUNK.pack(
                STRUCTURED_REPLY_MAGIC, _DONE, _OFFSET_DATA, handle, 8 + len(data), offset
            )
            return [hdr, data]
        return [SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, 0, handle), data]

    def send(self, event: object) -> bytes:
        """Return the bytes that put ``event`` on the wire (advancing the state)."""
        return b"".join(self.send_buffers(event))

    def send_buffers(self, event: object) -> Buffers:
        """Like :meth:`send`, but return a list of buffers so data is never copied."""
        writer = WRITERS.get(type(event))
        if writer is None:
            raise LocalProtocolError(f"{type(event).__name__} cannot be sent")
        if self._st.state is st.ERROR:
            raise LocalProtocolError("connection is in the ERROR state")
        err = self._st.process(event)
        if err is not None:
            raise LocalProtocolError(err)
        if type(event) is ev.ClientFlags:
            if event.no_zeroes and not self._greeting_no_zeroes:
                raise LocalProtocolError("server did not offer NO_ZEROES")
            self._no_zeroes = event.no_zeroes
        elif type(event) is ev.Request and self.role is st.CLIENT and event.command != Command.DISC:
            self._pending_reads[event.handle] = event.length if event.command == Command.READ else 0
        return writer(event, self._no_zeroes)

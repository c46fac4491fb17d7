"""The sans-I/O connection object: bytes in, events out; events in, bytes out."""

from __future__ import annotations

import struct
from typing import Any

from loft.nbd.protocol import _events as ev
from loft.nbd.protocol import _state as st
from loft.nbd.protocol._constants import (
    MAX_OPTION_LENGTH,
    REQUEST_HEADER,
    SIMPLE_REPLY,
    SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC,
    Command,
    ReplyFlag,
    ReplyType,
)
from loft.nbd.protocol._errors import LocalProtocolError, RemoteProtocolError
from loft.nbd.protocol._readers import DIRECT_PAYLOAD_MIN, READERS, WriteHeader, read_request
from loft.nbd.protocol._writers import WRITERS, Buffers

__all__ = ["RECEIVE_BUFFER_SIZE", "Connection"]

#: Size of the receive buffer for headers and small payloads. Large WRITE payloads are
#: received straight into their own buffer, so this only needs to hold many headers.
RECEIVE_BUFFER_SIZE = 256 * 1024
#: Payload buffers at least this large are worth keeping for reuse (see recycle()).
RECYCLE_MIN = 64 * 1024
#: How many recycled payload buffers a connection keeps (a client's queue depth of
#: same-sized writes in flight needs no more).
MAX_SPARE_PAYLOADS = 4
_DISC = int(Command.DISC)
_WRITE = int(Command.WRITE)
#: Structured OFFSET_DATA chunk header with its offset field, packed in one go.
_DATA_CHUNK = struct.Struct(">IHHQIQ")
_DONE = int(ReplyFlag.DONE)
_OFFSET_DATA = int(ReplyType.OFFSET_DATA)

#: Compact the receive buffer when less than this is free at its end.
_MIN_FREE = 64 * 1024
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


class Connection:
    """One side of an NBD connection, without any I/O.

    Feed received bytes with :meth:`receive_data` (or, zero-copy, with
    :meth:`get_buffer` + :meth:`buffer_updated`), pull events with :meth:`next_event`
    until it returns :data:`NEED_DATA` or :data:`PAUSED`, and turn events into bytes
    with :meth:`send` / :meth:`send_buffers`.
    """

    def __init__(self, role: st.Sentinel) -> None:
        if role not in (st.CLIENT, st.SERVER):
            raise LocalProtocolError("role must be CLIENT or SERVER")
        self.role = role
        self._st = st.ConnectionState()
        #: received bytes not yet parsed are _buf[_start:_end]
        self._buf = bytearray(RECEIVE_BUFFER_SIZE)
        self._start = 0
        self._end = 0
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
        self._spare_payloads: list[bytearray] = []
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
        if self._start == self._end:
            self._start = self._end = 0
        free = len(buf) - self._end
        if free < _MIN_FREE or free < self._need - (self._end - self._start):
            used = self._end - self._start
            want = max(len(buf), self._need, used + _MIN_FREE)
            if want > len(buf):
                new = bytearray(want)
                new[:used] = memoryview(buf)[self._start : self._end]
                self._buf = buf = new
            else:
                buf[:used] = memoryview(buf)[self._start : self._end]
            self._start, self._end = 0, used
        if self._header_only and self._end - self._start < REQUEST_HEADER.size:
            return memoryview(buf)[self._end : self._start + REQUEST_HEADER.size]
        return memoryview(buf)[self._end :]

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

    def _new_payload(self, length: int) -> bytearray:
        """A buffer for a WRITE payload of ``length`` bytes (a recycled one if any fits)."""
        spare = self._spare_payloads
        for i in range(len(spare)):
            if len(spare[i]) == length:
                return spare.pop(i)
        return bytearray(length)

    def recycle(self, payload: object) -> None:
        """Hand back the payload of a WRITE the caller is done with (nothing refers to it
        any more): a later payload of the same size reuses it instead of allocating and
        zero-filling megabytes. Small or foreign buffers are ignored."""
        if type(payload) is bytearray and len(payload) >= RECYCLE_MIN:
            spare = self._spare_payloads
            if len(spare) >= MAX_SPARE_PAYLOADS:
                spare.pop(0)
            spare.append(payload)

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
        self._check_replying()
        if self._st.structured_replies:
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


# A partial option can need more than the default buffer; make sure it can grow enough.
assert RECEIVE_BUFFER_SIZE >= 16 + MAX_OPTION_LENGTH

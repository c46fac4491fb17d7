"""Transmission phase: requests and replies round-trip, whole and byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as s
from nbd_helpers import ConnectionPair, feed

from loft.nbd import protocol as p

u64 = s.integers(0, (1 << 64) - 1)
u32 = s.integers(0, (1 << 32) - 1)
errnos = s.sampled_from([int(e) for e in p.Errno])
NON_WRITE = [c for c in p.Command if c not in (p.Command.WRITE, p.Command.DISC)]


@s.composite
def requests(draw: s.DrawFn) -> p.Request:
    handle, offset, flags = draw(u64), draw(u64), draw(s.integers(0, 0xFFFF))
    if draw(s.booleans()):
        data = draw(s.binary(min_size=0, max_size=300))
        return p.Request(p.Command.WRITE, handle, offset, len(data), flags, data)
    return p.Request(draw(s.sampled_from(NON_WRITE)), handle, offset, draw(u32), flags)


@given(reqs=s.lists(requests(), min_size=1, max_size=8), bytewise=s.booleans())
def test_requests_round_trip(reqs: list[p.Request], bytewise: bool) -> None:
    pair = ConnectionPair("bytewise" if bytewise else "whole")
    pair.handshake()
    got = pair.to_server(*reqs)
    assert got == reqs
    assert [r.payload_bytes() for r in got] == [r.payload_bytes() for r in reqs]  # type: ignore[attr-defined]


@s.composite
def chunks(draw: s.DrawFn, handle: int) -> list[object]:
    out: list[object] = []
    for _ in range(draw(s.integers(0, 3))):
        kind = draw(s.sampled_from(["data", "hole", "bs", "err"]))
        if kind == "data":
            out.append(
                p.OffsetDataChunk(handle, draw(u64), draw(s.binary(min_size=1, max_size=64)))
            )
        elif kind == "hole":
            out.append(p.OffsetHoleChunk(handle, draw(u64), draw(s.integers(1, (1 << 32) - 1))))
        elif kind == "bs":
            ext = draw(s.lists(s.tuples(s.integers(1, (1 << 32) - 1), u32), min_size=1, max_size=5))
            out.append(p.BlockStatusChunk(handle, draw(u32), tuple(ext)))
        else:
            off = draw(s.one_of(s.none(), u64))
            msg = draw(s.text(max_size=20))
            out.append(p.ErrorChunk(handle, draw(errnos), msg, off, done=False))
    out.append(p.NoneChunk(handle))
    return out


@given(handle=u64, data=s.data(), bytewise=s.booleans())
def test_structured_replies_round_trip(handle: int, data: s.DataObject, bytewise: bool) -> None:
    pair = ConnectionPair("bytewise" if bytewise else "whole")
    pair.handshake(structured=True)
    pair.to_server(p.Request(p.Command.READ, handle, 0, 100))
    sent = data.draw(chunks(handle))
    got = pair.to_client(*sent)
    assert got == sent
    for a, b in zip(got, sent, strict=True):
        if isinstance(a, p.OffsetDataChunk):
            assert bytes(a.data) == bytes(b.data)  # type: ignore[attr-defined]
    assert pair.client.reply_length(handle) is None


@given(length=s.integers(0, 2000), error=s.one_of(s.just(0), errnos), bytewise=s.booleans())
def test_simple_read_reply_round_trip(length: int, error: int, bytewise: bool) -> None:
    pair = ConnectionPair("bytewise" if bytewise else "whole")
    pair.handshake(structured=False)
    pair.to_server(p.Request(p.Command.READ, 7, 0, length))
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    reply = p.SimpleReply(7, error, None if error or not length else data)
    [got] = pair.to_client(reply)
    assert got == reply
    assert (bytes(got.data) if got.data is not None else None) == reply.data  # type: ignore[attr-defined]


def test_structured_chunks_need_negotiation() -> None:
    pair = ConnectionPair()
    pair.handshake(structured=False)
    with pytest.raises(p.LocalProtocolError):
        pair.server.send(p.NoneChunk(1))


def test_large_write_payload_is_received_into_its_own_buffer() -> None:
    """A WRITE bigger than the receive buffer goes straight into its payload buffer."""
    pair = ConnectionPair()
    pair.handshake()
    payload = bytes(range(256)) * 8192  # 2 MiB
    wire = pair.client.send(p.Request(p.Command.WRITE, 1, 4096, len(payload), 0, payload))
    conn = pair.server
    pos, seen_payload_buffer = 0, False
    while pos < len(wire):
        with conn.get_buffer() as target:
            n = min(len(target), len(wire) - pos, 65536)
            target[:n] = wire[pos : pos + n]
            seen_payload_buffer |= target.obj is not conn._buf
        conn.buffer_updated(n)
        pos += n
        ev = conn.next_event()
        if ev is not p.NEED_DATA:
            break
    assert seen_payload_buffer
    assert isinstance(ev, p.Request) and ev.payload_bytes() == payload
    # The payload must not alias the receive buffer (it may outlive later reads).
    assert ev.payload is not None and ev.payload is not conn._buf


def test_after_a_large_write_the_next_header_is_read_alone() -> None:
    """With a backlog of large WRITEs on the socket, each payload lands in its own buffer
    (read header first) instead of in the receive buffer, from where it would be copied;
    small requests are read in bulk again once one arrives."""
    pair = ConnectionPair()
    pair.handshake()
    conn = pair.server
    big = [bytes([i]) * (1 << 20) for i in (1, 2, 3)]
    reqs = [p.Request(p.Command.WRITE, i, i << 20, len(d), 0, d) for i, d in enumerate(big)]
    reqs += [p.Request(p.Command.READ, 10 + i, 0, 4096) for i in range(3)]
    wire = b"".join(pair.client.send(r) for r in reqs)
    pos, into_receive_buffer, got, sizes = 0, 0, [], []
    while pos < len(wire):
        with conn.get_buffer() as target:  # the socket holds everything: fill it all
            n = min(len(target), len(wire) - pos)
            target[:n] = wire[pos : pos + n]
            sizes.append(len(target))
            if target.obj is conn._buf:
                into_receive_buffer += n
        conn.buffer_updated(n)
        pos += n
        while (ev := conn.next_event()) is not p.NEED_DATA:
            got.append(ev)
    assert [r.payload_bytes() for r in got[:3]] == big  # type: ignore[attr-defined]
    assert [r.command for r in got[3:]] == [p.Command.READ] * 3  # type: ignore[attr-defined]
    # The first read takes what fits the receive buffer; after that only headers (and
    # the READs, in one read) go through it.
    first = sizes[0]
    assert into_receive_buffer == first + 28 * 2 + 28 * 3
    assert sizes[-1] > 28  # after the READ header, bulk reads again


def _receive_write(conn: p.Connection, wire: bytes, step: int) -> tuple[p.Request, list[bool]]:
    """Feed ``wire`` in ``step``-byte reads; return the WRITE and what each
    buffer_updated() said (False: the payload is still incomplete)."""
    pos, said = 0, []
    while True:
        with conn.get_buffer() as target:
            n = min(len(target), len(wire) - pos, step)
            target[:n] = wire[pos : pos + n]
        said.append(conn.buffer_updated(n))
        pos += n
        ev = conn.next_event()
        if ev is not p.NEED_DATA:
            assert isinstance(ev, p.Request)
            return ev, said


def test_recycled_payload_buffers_are_reused_and_refilled() -> None:
    pair = ConnectionPair()
    pair.handshake()
    conn = pair.server
    first, second = bytes(range(256)) * 1024, bytes(range(255, -1, -1)) * 1024  # 256 KiB
    ev, said = _receive_write(
        conn, pair.client.send(p.Request(p.Command.WRITE, 1, 0, len(first), 0, first)), 65536
    )
    assert ev.payload_bytes() == first
    # Until the payload is complete no event can be ready; the last read completes it.
    assert said[-1] and not any(said[1:-1])
    buffer = ev.payload
    conn.recycle(buffer)
    ev2, _ = _receive_write(
        conn, pair.client.send(p.Request(p.Command.WRITE, 2, 0, len(second), 0, second)), 65536
    )
    assert ev2.payload is buffer and ev2.payload_bytes() == second
    # Another size, small buffers and foreign objects are not taken.
    conn.recycle(bytearray(100))
    conn.recycle(b"x" * (1 << 20))
    assert conn._new_payload(100) is not buffer and len(conn._new_payload(1 << 20)) == 1 << 20


def test_partial_write_at_eof_is_discarded() -> None:
    pair = ConnectionPair()
    pair.handshake()
    wire = pair.client.send(p.Request(p.Command.WRITE, 1, 0, 1000, 0, bytes(1000)))
    pair.server.receive_data(wire[:500])
    assert pair.server.next_event() is p.NEED_DATA
    pair.server.receive_data(b"")
    with pytest.raises(p.RemoteProtocolError):
        pair.server.next_event()
    assert pair.server.state is p.ERROR


def test_disc_closes_but_replies_may_still_go_out() -> None:
    pair = ConnectionPair()
    pair.handshake()
    evs = pair.to_server(p.Request(p.Command.READ, 1, 0, 4), p.Request(p.Command.DISC, 2))
    assert [e.command for e in evs] == [p.Command.READ, p.Command.DISC]  # type: ignore[attr-defined]
    assert pair.server.state is p.CLOSED
    assert feed(pair.client, pair.server.send(p.SimpleReply(1, 0, b"abcd")))


def test_many_small_writes_in_one_buffer() -> None:
    pair = ConnectionPair()
    pair.handshake()
    reqs = [p.Request(p.Command.WRITE, i, i * 4096, 4096, 1, bytes([i]) * 4096) for i in range(200)]
    got = pair.to_server(*reqs)
    assert [r.payload_bytes() for r in got] == [r.payload_bytes() for r in reqs]  # type: ignore[attr-defined]


def _plain(req: p.Request, below: int, limit: int) -> bool:
    return (
        req.command == p.Command.READ
        and not req.flags
        and 0 < req.length < below
        and req.offset + req.length <= limit
    )


@s.composite
def read_mixes(draw: s.DrawFn) -> list[p.Request]:
    """Mostly small READs, some with flags, too long, at or past the end or not READs."""
    out = []
    for handle in range(draw(s.integers(1, 80))):
        kind = draw(
            s.sampled_from(["read"] * 6 + ["flags", "long", "end", "zero", "other", "write"])
        )
        offset = draw(s.integers(0, 1 << 20))
        if kind == "other":  # shaped like a plain READ but for its command
            command = draw(s.sampled_from([c for c in NON_WRITE if c != p.Command.READ]))
            out.append(p.Request(command, handle, offset, draw(s.integers(1, 8192))))
            continue
        if kind == "write":
            out.append(p.Request(p.Command.WRITE, handle, offset, 4096, 0, bytes(4096)))
            continue
        length = {"long": 1 << 16, "zero": 0}.get(kind, draw(s.integers(1, 8192)))
        if kind == "end":
            offset = (1 << 21) - length + draw(s.integers(0, 2))  # ends at or past it
        flags = p.CmdFlag.DF if kind == "flags" else 0
        out.append(p.Request(p.Command.READ, handle, offset, length, flags))
    return out


@given(reqs=read_mixes(), split=s.integers(0, 3000))
def test_plain_reads_are_the_requests_next_event_returns(reqs: list[p.Request], split: int) -> None:
    """Taking plain READs in bursts (peek, then skip those answered), with next_event for
    everything else, yields the same requests in the same order as next_event alone,
    whatever part of the wire has arrived."""
    below, limit = 1 << 16, 1 << 21
    pair = ConnectionPair()
    pair.handshake()
    wire = b"".join(pair.client.send(r) for r in reqs)
    conn = pair.server
    got: list[p.Request] = []
    one_by_one: list[p.Request] = []
    for part in (wire[:split], wire[split:]):
        if part:  # an empty part would say the client closed
            conn.receive_data(part)
        while True:
            burst = conn.peek_plain_reads(below, limit)
            if burst:
                assert len(burst) <= 64
                taken = [p.Request(p.Command.READ, h, o, n) for h, o, n in burst]
                assert all(_plain(r, below, limit) for r in taken)
                got += taken
                conn.skip_plain_reads(len(burst))
                continue
            ev = conn.next_event()
            if ev is p.NEED_DATA:
                break
            assert isinstance(ev, p.Request)
            got.append(ev)
            one_by_one.append(ev)
    assert got == reqs
    assert not any(_plain(r, below, limit) for r in one_by_one)  # bursts took them all


def test_plain_reads_stop_at_a_bad_magic_which_next_event_rejects() -> None:
    pair = ConnectionPair()
    pair.handshake()
    good = pair.client.send(p.Request(p.Command.READ, 1, 0, 4096))
    bad = b"\x00\x00\x00\x00" + good[4:]
    pair.server.receive_data(good + bad)
    assert pair.server.peek_plain_reads(1 << 16, 1 << 30) == [(1, 0, 4096)]
    pair.server.skip_plain_reads(1)
    assert pair.server.peek_plain_reads(1 << 16, 1 << 30) == []
    with pytest.raises(p.RemoteProtocolError):
        pair.server.next_event()


def test_plain_reads_cannot_skip_what_has_not_arrived() -> None:
    pair = ConnectionPair()
    pair.handshake()
    wire = pair.client.send(p.Request(p.Command.READ, 1, 0, 4096))
    pair.server.receive_data(wire[:-1])
    assert pair.server.peek_plain_reads(1 << 16, 1 << 30) == []
    with pytest.raises(p.LocalProtocolError):
        pair.server.skip_plain_reads(1)
    pair.server.receive_data(wire[-1:])
    pair.server.skip_plain_reads(1)
    assert pair.server.next_event() is p.NEED_DATA


def test_plain_reads_only_in_the_servers_transmission_phase() -> None:
    pair = ConnectionPair()
    assert pair.server.peek_plain_reads(1 << 16, 1 << 30) == []  # in the handshake
    pair.handshake()
    assert pair.client.peek_plain_reads(1 << 16, 1 << 30) == []

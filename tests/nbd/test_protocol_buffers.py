"""What a protocol connection holds in memory: a receive buffer only while it is used,
WRITE payloads only once the caller accepts them, a bounded pool of spare payloads."""

from __future__ import annotations

import pytest
from nbd_helpers import ConnectionPair, feed

from loft.nbd import protocol as p

HOLD = 64 * 1024


def _pair(**server: object) -> ConnectionPair:
    pair = ConnectionPair()
    pair.server = p.Connection(p.SERVER, **server)  # type: ignore[arg-type]
    pair.handshake()
    return pair


def test_receive_buffer_is_allocated_lazily_grows_and_is_trimmed() -> None:
    conn = p.Connection(p.SERVER)
    assert conn.buffered == 0  # nothing before the first read
    pair = _pair()
    conn = pair.server
    assert conn.buffered <= p.INITIAL_RECEIVE_SIZE  # the handshake fits a small buffer
    assert conn.trim() and conn.buffered == 0
    # A backlog of requests: each read fills what it is offered, so the buffer doubles
    # up to RECEIVE_BUFFER_SIZE and no further.
    wire = b"".join(pair.client.send(p.Request(p.Command.READ, i, 0, 512)) for i in range(40000))
    sizes, pos, got = [], 0, 0
    while pos < len(wire):
        with conn.get_buffer() as target:
            n = min(len(target), len(wire) - pos)
            target[:n] = wire[pos : pos + n]
            sizes.append(len(target))
        conn.buffer_updated(n)
        pos += n
        while conn.next_event() is not p.NEED_DATA:
            got += 1
    assert got == 40000
    assert sizes[0] == p.INITIAL_RECEIVE_SIZE
    # (an offer is the buffer less the partial header left at its front)
    assert p.RECEIVE_BUFFER_SIZE - 28 < max(sizes) <= p.RECEIVE_BUFFER_SIZE
    assert conn.buffered == p.RECEIVE_BUFFER_SIZE
    assert conn.trim() and conn.buffered == 0
    # Still a working connection.
    assert feed(conn, pair.client.send(p.Request(p.Command.FLUSH, 7, 0, 0))) == [
        p.Request(p.Command.FLUSH, 7, 0, 0)
    ]


def test_receive_buffer_is_not_trimmed_under_a_partial_message() -> None:
    pair = _pair()
    wire = pair.client.send(p.Request(p.Command.READ, 1, 0, 4096))
    pair.server.receive_data(wire[:10])
    assert pair.server.next_event() is p.NEED_DATA
    assert not pair.server.trim()
    assert feed(pair.server, wire[10:]) == [p.Request(p.Command.READ, 1, 0, 4096)]


def test_an_option_longer_than_the_receive_buffer_grows_it() -> None:
    pair = ConnectionPair("whole")
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    option = p.UnknownOption(12345, bytes(p.MAX_OPTION_LENGTH))
    assert pair.to_server(option) == [option]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_held_write_payload_is_allocated_only_when_accepted(mode: str) -> None:
    pair = _pair(hold_payloads_from=HOLD)
    conn = pair.server
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = pair.client.send(p.Request(p.Command.WRITE, 1, 0, len(payload), 0, payload))
    head = wire[: 28 + 100] if mode == "whole" else wire[:28]
    if mode == "whole":
        conn.receive_data(head)
    else:
        for i in range(len(head)):
            conn.receive_data(head[i : i + 1])
    assert conn.next_event() is p.PAUSED
    assert conn.held_payload == len(payload)
    assert conn.buffered < len(payload) and not conn.receiving_payload
    assert conn.next_event() is p.PAUSED  # until accepted, whatever the caller asks
    conn.accept_payload()
    assert conn.held_payload == 0 and conn.receiving_payload
    assert conn.buffered >= len(payload)
    events = feed(conn, wire[len(head) :])
    assert len(events) == 1 and events[0].payload_bytes() == payload  # type: ignore[attr-defined]
    with pytest.raises(p.LocalProtocolError):
        conn.accept_payload()


def test_small_and_complete_writes_are_not_held() -> None:
    pair = _pair(hold_payloads_from=HOLD)
    small = p.Request(p.Command.WRITE, 1, 0, 1000, 0, bytes(1000))
    assert pair.to_server(small) == [small]


def test_held_payload_at_eof_is_a_broken_message() -> None:
    pair = _pair(hold_payloads_from=HOLD)
    wire = pair.client.send(p.Request(p.Command.WRITE, 1, 0, HOLD, 0, bytes(HOLD)))
    pair.server.receive_data(wire[:28])
    assert pair.server.next_event() is p.PAUSED
    pair.server.receive_data(b"")
    pair.server.accept_payload()
    with pytest.raises(p.RemoteProtocolError):
        pair.server.next_event()


def test_payload_pool_is_bounded_in_bytes_and_shared() -> None:
    pool = p.PayloadPool(max_bytes=3 << 20)
    a, b = p.Connection(p.SERVER, pool=pool), p.Connection(p.SERVER, pool=pool)
    for _ in range(4):
        a.recycle(bytearray(1 << 20))
    assert pool.bytes == 3 << 20  # the oldest dropped
    b.recycle(bytearray(4 << 20))  # larger than the whole pool: not kept
    assert pool.bytes == 3 << 20
    taken = pool.take(1 << 20)
    assert taken is not None and len(taken) == 1 << 20 and pool.bytes == 2 << 20
    assert pool.take(12345) is None
    pool.clear()
    assert pool.bytes == 0 and pool.take(1 << 20) is None

"""Malformed input from a peer: always a RemoteProtocolError or a typed bad-option event."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as s
from nbd_helpers import ConnectionPair, feed

from loft.nbd import protocol as p

IHAVEOPT = 0x49484156454F5054


def _options_server() -> p.Connection:
    server = p.Connection(p.SERVER)
    server.send(p.Greeting())
    feed(server, struct.pack(">I", 3))
    assert server.state is p.OPTIONS
    return server


def test_unknown_client_flags_drop_the_connection() -> None:
    server = p.Connection(p.SERVER)
    server.send(p.Greeting())
    with pytest.raises(p.RemoteProtocolError):
        feed(server, struct.pack(">I", 0x80))


def test_bad_option_magic() -> None:
    with pytest.raises(p.RemoteProtocolError):
        feed(_options_server(), struct.pack(">QII", 0x1234, 7, 0))


def test_option_longer_than_limit() -> None:
    with pytest.raises(p.RemoteProtocolError):
        feed(_options_server(), struct.pack(">QII", IHAVEOPT, 7, p.MAX_OPTION_LENGTH + 1))


@pytest.mark.parametrize(
    ("option", "data"),
    [
        (p.Option.LIST, b"x"),
        (p.Option.STRUCTURED_REPLY, b"\0"),
        (p.Option.GO, b"\0\0\0\x05ab"),  # name overruns
        (p.Option.GO, b"\0\0\0\x01a\0\x01"),  # info count overruns
        (p.Option.INFO, b"\0\0\0\x01a\0\0extra"),
        (p.Option.SET_META_CONTEXT, b"\0\0\0\0\0\0\0\x01\0\0\0\x09base"),
        (p.Option.LIST_META_CONTEXT, b"\0\0\0\x02\xff\xfe\0\0\0\0"),  # bad UTF-8
    ],
)
def test_malformed_option_data_is_invalid_not_fatal(option: int, data: bytes) -> None:
    server = _options_server()
    [ev] = feed(server, struct.pack(">QII", IHAVEOPT, option, len(data)) + data)
    assert isinstance(ev, p.InvalidOption) and ev.option == option
    server.send(p.OptionError(option, p.OptionReplyType.ERR_INVALID, ev.reason))
    assert server.state is p.OPTIONS


def test_bad_request_magic() -> None:
    pair = ConnectionPair()
    pair.handshake()
    with pytest.raises(p.RemoteProtocolError):
        feed(pair.server, b"\0" * 28)


def test_oversized_write_is_refused() -> None:
    pair = ConnectionPair()
    pair.handshake()
    hdr = struct.pack(">IHHQQI", 0x25609513, 0, 1, 1, 0, p.MAX_PAYLOAD + 1)
    with pytest.raises(p.RemoteProtocolError):
        feed(pair.server, hdr)


@given(junk=s.binary(min_size=1, max_size=200))
def test_random_bytes_in_options_never_crash(junk: bytes) -> None:
    server = _options_server()
    try:
        events = feed(server, junk)
    except p.RemoteProtocolError:
        return
    for e in events:
        assert isinstance(
            e, p.InvalidOption | p.UnknownOption | p.ExportNameOption | p.AbortOption
        ) or type(e).__name__.endswith("Option")


@given(junk=s.binary(min_size=1, max_size=200), bytewise=s.booleans())
def test_random_bytes_in_transmission_never_crash(junk: bytes, bytewise: bool) -> None:
    pair = ConnectionPair()
    pair.handshake()
    try:
        events = feed(pair.server, junk, "bytewise" if bytewise else "whole")
    except p.RemoteProtocolError:
        return
    assert all(isinstance(e, p.Request) for e in events)


@given(data=s.binary(min_size=1, max_size=100), pos=s.integers(0, 99))
def test_mutated_go_option(data: bytes, pos: int) -> None:
    """Flip one byte of a valid GO option: an event, a typed error, or NEED_DATA."""
    client = p.Connection(p.CLIENT)
    feed(client, p.Connection(p.SERVER).send(p.Greeting()))
    wire = bytearray(client.send(p.ClientFlags()) + client.send(p.GoOption("disk", (1, 3))))
    wire[pos % len(wire)] ^= data[0] | 1
    server = p.Connection(p.SERVER)
    server.send(p.Greeting())
    try:
        feed(server, bytes(wire))
    except p.RemoteProtocolError:
        pass

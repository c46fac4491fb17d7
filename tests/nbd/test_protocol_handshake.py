"""Handshake and option haggling through an in-memory client/server pair."""

from __future__ import annotations

import pytest
from nbd_helpers import ConnectionPair, feed

from loft.nbd import protocol as p

MODES = ["whole", "bytewise"]


@pytest.mark.parametrize("mode", MODES)
def test_handshake_go_with_structured_replies(mode: str) -> None:
    pair = ConnectionPair(mode)
    pair.handshake(structured=True, name="disk")
    assert pair.server.structured_replies and pair.client.structured_replies
    assert pair.server.no_zeroes


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_reply_has_zeroes_unless_negotiated(no_zeroes: bool) -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags(no_zeroes=no_zeroes))
    assert pair.to_server(p.ExportNameOption("x")) == [p.ExportNameOption("x")]
    wire = pair.server.send(p.ExportNameReply(4096, 0x1))
    assert len(wire) == 10 + (0 if no_zeroes else 124)
    assert feed(pair.client, wire) == [p.ExportNameReply(4096, 1)]
    assert pair.server.state is p.TRANSMISSION


@pytest.mark.parametrize("mode", MODES)
def test_list_info_and_meta_contexts(mode: str) -> None:
    pair = ConnectionPair(mode)
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    assert pair.to_server(p.ListOption()) == [p.ListOption()]
    replies = [
        p.OptionServer(p.Option.LIST, "a", "first"),
        p.OptionServer(p.Option.LIST, "b"),
        p.OptionAck(p.Option.LIST),
    ]
    assert pair.to_client(*replies) == replies
    info = p.InfoOption("a", (p.InfoType.NAME, p.InfoType.BLOCK_SIZE))
    assert pair.to_server(info) == [info]
    replies2 = [
        p.OptionInfoName(p.Option.INFO, "a"),
        p.OptionInfoDescription(p.Option.INFO, "first"),
        p.OptionInfoBlockSize(p.Option.INFO, 1, 4096, 32 << 20),
        p.OptionInfoExport(p.Option.INFO, 1 << 30, 0x1 | 0x4),
        p.OptionAck(p.Option.INFO),
    ]
    assert pair.to_client(*replies2) == replies2
    q = p.SetMetaContextOption("a", ("base:allocation", "qemu:allocation-depth"))
    assert pair.to_server(q) == [q]
    ctx = [
        p.OptionMetaContext(p.Option.SET_META_CONTEXT, 1, "base:allocation"),
        p.OptionAck(p.Option.SET_META_CONTEXT),
    ]
    assert pair.to_client(*ctx) == ctx
    assert pair.server.state is p.OPTIONS


def test_errors_return_to_options_and_unknown_options_echo() -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    unk = p.UnknownOption(99, b"xyz")
    assert pair.to_server(unk) == [unk]
    err = p.OptionError(99, p.OptionReplyType.ERR_UNSUP, "nope")
    assert pair.to_client(err) == [err]
    assert pair.server.state is p.OPTIONS


def test_starttls_forgets_structured_replies() -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    pair.to_server(p.StructuredReplyOption())
    pair.to_client(p.OptionAck(p.Option.STRUCTURED_REPLY))
    pair.to_server(p.StartTLSOption())
    pair.to_client(p.OptionAck(p.Option.STARTTLS))
    assert pair.server.state is p.TLS_HANDSHAKE
    assert pair.server.next_event() is p.PAUSED
    pair.server.tls_established()
    pair.client.tls_established()
    assert pair.server.state is p.OPTIONS and not pair.server.structured_replies


def test_abort_acks_then_closes() -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    pair.to_server(p.AbortOption())
    pair.to_client(p.OptionAck(p.Option.ABORT))
    assert pair.server.state is p.CLOSED


def test_server_cannot_send_reply_for_another_option() -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    pair.to_server(p.ListOption())
    with pytest.raises(p.LocalProtocolError):
        pair.server.send(p.OptionAck(p.Option.GO))
    with pytest.raises(p.LocalProtocolError):
        pair.server.send(p.OptionInfoExport(p.Option.LIST, 1, 1))
    with pytest.raises(p.LocalProtocolError):
        pair.server.send(p.SimpleReply(1))


def test_client_closing_mid_haggle_is_a_clean_close() -> None:
    pair = ConnectionPair()
    pair.to_client(p.Greeting())
    pair.to_server(p.ClientFlags())
    pair.server.receive_data(b"")
    assert pair.server.next_event() == p.ConnectionClosed()
    assert pair.server.state is p.CLOSED


def test_invalid_event_fields_cannot_be_built() -> None:
    with pytest.raises(p.LocalProtocolError):
        p.ExportNameOption("x" * 5000)
    with pytest.raises(p.LocalProtocolError):
        p.OptionInfoBlockSize(p.Option.GO, 3, 4096, 1 << 20)
    with pytest.raises(p.LocalProtocolError):
        p.Request(p.Command.WRITE, 1, 0, 4, 0, b"abc")
    with pytest.raises(p.LocalProtocolError):
        p.Request(p.Command.READ, 1, 0, 1 << 32)
    with pytest.raises(p.LocalProtocolError):
        p.SimpleReply(1, error=2)

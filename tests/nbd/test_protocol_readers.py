"""Readers are pure (h11's habit): given a buffer they return what they parsed and how
many bytes it took, without touching the connection; fed a prefix they ask for more,
fed extra bytes they leave them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from nbd_helpers import ConnectionPair

from loft.nbd import protocol as p
from loft.nbd.protocol._readers import WriteHeader, read_option, read_request

TRAILER = b"\xff" * 7


class NoContext:
    """The server-side readers ask nothing of the connection."""

    current_option = None
    no_zeroes = False

    def reply_length(self, handle: int) -> int | None:
        return None


def wire_of(event: object) -> bytes:
    """The bytes a client sends for ``event``: options before GO, requests after."""
    pair = ConnectionPair()
    if isinstance(event, p.Request):
        pair.handshake()
    else:
        pair.to_client(p.Greeting())
        pair.to_server(p.ClientFlags())
    return pair.client.send(event)


@pytest.mark.parametrize(
    ("reader", "event"),
    [
        (read_request, p.Request(p.Command.READ, 9, 4096, 512)),
        (read_request, p.Request(p.Command.WRITE, 3, 0, 5, 0, b"hello")),
        (read_request, p.Request(p.Command.DISC, 4, 0, 0)),
        (read_option, p.GoOption("disk", (p.InfoType.NAME,))),
        (read_option, p.ListMetaContextOption("disk", ("base:",))),
    ],
)
def test_reader_is_pure_given_whole_prefix_and_trailer(
    reader: Callable[..., Any], event: object
) -> None:
    wire = wire_of(event)
    buf = bytearray(wire + TRAILER)
    got = reader(buf, 0, len(buf), NoContext())
    assert got == (event, len(wire))
    assert buf == wire + TRAILER  # nothing was changed
    header = 28 if isinstance(event, p.Request) else len(wire)
    for cut in range(header):  # a prefix of the header asks for more
        assert isinstance(reader(bytearray(wire[:cut]), 0, cut, NoContext()), int)


def test_reader_returns_a_write_by_its_header_until_the_payload_is_whole() -> None:
    wire = wire_of(p.Request(p.Command.WRITE, 1, 0, 1 << 20, 0, bytes(1 << 20)))
    for have in (28, 100, len(wire) - 1):
        got = read_request(bytearray(wire[:have]), 0, have, NoContext())
        assert got == (WriteHeader(int(p.Command.WRITE), 1, 0, 1 << 20, 0), 28)

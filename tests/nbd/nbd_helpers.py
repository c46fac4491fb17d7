"""An in-memory client/server pair over loft.nbd.protocol (no sockets)."""

from __future__ import annotations

from loft.nbd import protocol as p


def feed(conn: p.Connection, data: bytes, mode: str = "whole") -> list[object]:
    """Feed ``data`` to ``conn`` whole or one byte at a time; return all events."""
    events: list[object] = []

    def drain() -> None:
        while True:
            e = conn.next_event()
            if e is p.NEED_DATA or e is p.PAUSED:
                return
            events.append(e)

    if mode == "bytewise":
        for i in range(len(data)):
            conn.receive_data(data[i : i + 1])
            drain()
    else:
        conn.receive_data(data)
        drain()
    return events


class ConnectionPair:
    """A client and a server connection wired together in memory."""

    def __init__(self, mode: str = "whole") -> None:
        self.client = p.Connection(p.CLIENT)
        self.server = p.Connection(p.SERVER)
        self.mode = mode

    def to_server(self, *events: object) -> list[object]:
        """Send events from the client; return what the server reads."""
        data = b"".join(self.client.send(e) for e in events)
        return feed(self.server, data, self.mode)

    def to_client(self, *events: object) -> list[object]:
        """Send events from the server; return what the client reads."""
        data = b"".join(self.server.send(e) for e in events)
        return feed(self.client, data, self.mode)

    def handshake(self, *, structured: bool = True, name: str = "") -> None:
        """Greeting, flags, optional structured replies, then GO."""
        assert self.to_client(p.Greeting()) == [p.Greeting()]
        assert self.to_server(p.ClientFlags()) == [p.ClientFlags()]
        if structured:
            assert self.to_server(p.StructuredReplyOption()) == [p.StructuredReplyOption()]
            ack = p.OptionAck(p.Option.STRUCTURED_REPLY)
            assert self.to_client(ack) == [ack]
        assert self.to_server(p.GoOption(name)) == [p.GoOption(name)]
        replies = [p.OptionInfoExport(p.Option.GO, 1 << 20, 1), p.OptionAck(p.Option.GO)]
        assert self.to_client(*replies) == replies
        assert self.server.state is p.TRANSMISSION and self.client.state is p.TRANSMISSION

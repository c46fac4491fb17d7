"""Connection states and every rule about moving between them.

All state transitions of an NBD connection live in this file (the h11 habit): the
tables below say, for each state, which event may be sent or received next and where
it leads. The state is shared by both roles -- client and server walk the same path,
one writing what the other reads.

::

    START --Greeting--> AWAIT_CLIENT_FLAGS --ClientFlags--> OPTIONS
    OPTIONS --an option--> OPTION_REPLY --non-final reply--> OPTION_REPLY
                                        --final reply (ACK / error)--> OPTIONS
                                                GO + ACK --> TRANSMISSION
                                             ABORT + ACK --> CLOSED
                                          STARTTLS + ACK --> TLS_HANDSHAKE
    OPTIONS --ExportNameOption--> EXPORT_NAME_REPLY --ExportNameReply--> TRANSMISSION
    TLS_HANDSHAKE --tls_established()--> OPTIONS
    TRANSMISSION --Request(DISC) / ConnectionClosed--> CLOSED
    any --RemoteProtocolError--> ERROR
"""

from __future__ import annotations

from typing import Final

from loft.nbd.protocol import _events as ev
from loft.nbd.protocol._constants import Option

__all__ = [
    "AWAIT_CLIENT_FLAGS",
    "CLIENT",
    "CLOSED",
    "ERROR",
    "EXPORT_NAME_REPLY",
    "NEED_DATA",
    "OPTIONS",
    "OPTION_REPLY",
    "PAUSED",
    "SERVER",
    "START",
    "TLS_HANDSHAKE",
    "TRANSMISSION",
    "ConnectionState",
    "Sentinel",
]


class Sentinel:
    """A named singleton: states, roles and the NEED_DATA/PAUSED markers."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# Roles.
CLIENT: Final = Sentinel("CLIENT")
SERVER: Final = Sentinel("SERVER")

# What next_event() returns when it has no event yet.
NEED_DATA: Final = Sentinel("NEED_DATA")  # feed more bytes
PAUSED: Final = Sentinel("PAUSED")  # this side must send something first

# States.
START: Final = Sentinel("START")
AWAIT_CLIENT_FLAGS: Final = Sentinel("AWAIT_CLIENT_FLAGS")
OPTIONS: Final = Sentinel("OPTIONS")
OPTION_REPLY: Final = Sentinel("OPTION_REPLY")
EXPORT_NAME_REPLY: Final = Sentinel("EXPORT_NAME_REPLY")
TLS_HANDSHAKE: Final = Sentinel("TLS_HANDSHAKE")
TRANSMISSION: Final = Sentinel("TRANSMISSION")
CLOSED: Final = Sentinel("CLOSED")
ERROR: Final = Sentinel("ERROR")

#: Option events a client may send in OPTIONS, and the option number each stands for.
OPTION_EVENTS: Final[dict[type, int]] = {
    ev.ExportNameOption: Option.EXPORT_NAME,
    ev.InfoOption: Option.INFO,
    ev.GoOption: Option.GO,
    ev.ListOption: Option.LIST,
    ev.AbortOption: Option.ABORT,
    ev.StartTLSOption: Option.STARTTLS,
    ev.StructuredReplyOption: Option.STRUCTURED_REPLY,
    ev.ListMetaContextOption: Option.LIST_META_CONTEXT,
    ev.SetMetaContextOption: Option.SET_META_CONTEXT,
}

#: Option replies that leave the option open for more replies.
NON_FINAL_REPLIES: Final = (
    ev.OptionServer,
    ev.OptionInfoExport,
    ev.OptionInfoName,
    ev.OptionInfoDescription,
    ev.OptionInfoBlockSize,
    ev.OptionMetaContext,
)

#: Which non-final replies each option may produce.
ALLOWED_NON_FINAL: Final[dict[int, tuple[type, ...]]] = {
    Option.LIST: (ev.OptionServer,),
    Option.INFO: (
        ev.OptionInfoExport,
        ev.OptionInfoName,
        ev.OptionInfoDescription,
        ev.OptionInfoBlockSize,
    ),
    Option.GO: (
        ev.OptionInfoExport,
        ev.OptionInfoName,
        ev.OptionInfoDescription,
        ev.OptionInfoBlockSize,
    ),
    Option.LIST_META_CONTEXT: (ev.OptionMetaContext,),
    Option.SET_META_CONTEXT: (ev.OptionMetaContext,),
}

#: Where an option goes after the ACK (every other acked option returns to OPTIONS).
AFTER_ACK: Final[dict[int, Sentinel]] = {
    Option.GO: TRANSMISSION,
    Option.ABORT: CLOSED,
    Option.STARTTLS: TLS_HANDSHAKE,
}

#: Simple one-shot transitions: (state, event type) -> next state.
EVENT_TRIGGERED_TRANSITIONS: Final[dict[tuple[Sentinel, type], Sentinel]] = {
    (START, ev.Greeting): AWAIT_CLIENT_FLAGS,
    (AWAIT_CLIENT_FLAGS, ev.ClientFlags): OPTIONS,
    (OPTIONS, ev.ExportNameOption): EXPORT_NAME_REPLY,
    (EXPORT_NAME_REPLY, ev.ExportNameReply): TRANSMISSION,
}


_OPTION_REPLY_FINAL = (ev.OptionAck, ev.OptionError)
_TRANSMISSION_REPLIES = (
    ev.SimpleReply,
    ev.OffsetDataChunk,
    ev.OffsetHoleChunk,
    ev.BlockStatusChunk,
    ev.ErrorChunk,
    ev.NoneChunk,
)
_STRUCTURED = _TRANSMISSION_REPLIES[1:]


class ConnectionState:
    """The state machine both roles share. ``process`` applies one event (sent or
    received) and returns an error string when the event is not allowed now."""

    __slots__ = ("current_option", "disconnect_requested", "state", "structured_replies")

    def __init__(self) -> None:
        self.state: Sentinel = START
        self.current_option: int | None = None
        self.structured_replies = False
        self.disconnect_requested = False

    def process(self, event: object) -> str | None:
        """Advance on ``event``; return why it is illegal, or None when it was applied."""
        state = self.state
        etype = type(event)
        if etype is ev.ConnectionClosed:
            if state is ERROR:
                return "connection is in the ERROR state"
            self.state = CLOSED
            return None
        nxt = EVENT_TRIGGERED_TRANSITIONS.get((state, etype))
        if nxt is not None:
            if etype is ev.ExportNameOption:
                self.current_option = Option.EXPORT_NAME
            self.state = nxt
            return None
        if state is OPTIONS:
            option = OPTION_EVENTS.get(etype)
            if option is None and isinstance(event, ev.UnknownOption | ev.InvalidOption):
                option = event.option
            if option is None:
                return f"{etype.__name__} is not an option"
            self.current_option = option
            self.state = OPTION_REPLY
            return None
        if state is OPTION_REPLY:
            option = self.current_option
            assert option is not None
            if getattr(event, "option", None) != option:
                return f"{etype.__name__} does not answer option {option}"
            if isinstance(event, NON_FINAL_REPLIES):
                if etype not in ALLOWED_NON_FINAL.get(option, ()):
                    return f"{etype.__name__} is not a reply to option {option}"
                return None
            if isinstance(event, _OPTION_REPLY_FINAL):
                if isinstance(event, ev.OptionAck):
                    if option == Option.STRUCTURED_REPLY:
                        self.structured_replies = True
                    self.state = AFTER_ACK.get(option, OPTIONS)
                else:
                    self.state = OPTIONS
                self.current_option = None
                return None
            return f"{etype.__name__} is not an option reply"
        if state is TRANSMISSION or (state is CLOSED and self.disconnect_requested):
            if etype is ev.Request:
                if state is CLOSED:
                    return "no requests after NBD_CMD_DISC"
                if event.command == 2:  # type: ignore[attr-defined]  # NBD_CMD_DISC
                    self.disconnect_requested = True
                    self.state = CLOSED
                return None
            if etype in _TRANSMISSION_REPLIES:
                if etype in _STRUCTURED and not self.structured_replies:
                    return "structured replies were not negotiated"
                return None
            return f"{etype.__name__} is not allowed in transmission"
        return f"{etype.__name__} is not allowed in state {state!r}"

    def tls_established(self) -> None:
        """TLS is up: negotiate again from scratch (the spec forbids carrying state over)."""
        if self.state is not TLS_HANDSHAKE:
            raise ValueError("no STARTTLS was acknowledged")
        self.state = OPTIONS
        self.structured_replies = False

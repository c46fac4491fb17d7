"""The option haggling of one connection, without I/O (nbdkit's
``protocol-handshake-newstyle.c``).

:meth:`Negotiation.answer` takes one option event and returns an :class:`Answer`: the
replies to send, in order, and what the connection does next (go on, enter transmission
with an export, start TLS, close, or drop the client). Which exports a client may see is
decided here too: a Unix-socket client is trusted with every export; a TCP client sees
only what the authorizer grants its certificate's identity, and an export it may not
open is answered exactly like an unknown one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from loft.nbd import protocol as p
from loft.nbd.backends.base import Backend
from loft.nbd.server._dispatch import ALLOCATION_DEPTH, BASE_ALLOCATION
from loft.nbd.server._exports import Authorizer, Export, ExportLookup

__all__ = [
    "ABORT",
    "CLOSE",
    "CONTEXT_IDS",
    "CONTINUE",
    "ENTER",
    "MAX_OPTIONS",
    "RESOLVE",
    "START_TLS",
    "Answer",
    "Negotiation",
    "resolve_exports",
    "shown",
    "transmission_flags",
]

#: Options accepted per connection (a client looping over options is misbehaving).
MAX_OPTIONS = 1024
#: How much of a client-chosen name an error message or log line quotes: a name may be
#: as long as the protocol's own limit, and the message around it must stay within it.
SHOWN_NAME = 64
#: The fixed id each metadata context gets when selected.
CONTEXT_IDS = {BASE_ALLOCATION: 1, ALLOCATION_DEPTH: 2}

#: What the connection does after sending an answer's replies.
CONTINUE = p.Sentinel("CONTINUE")  # read the next option
ENTER = p.Sentinel("ENTER")  # enter transmission with Answer.export and Answer.flags
START_TLS = p.Sentinel("START_TLS")  # upgrade the transport, then Negotiation.tls_started
CLOSE = p.Sentinel("CLOSE")  # close cleanly (NBD_OPT_ABORT)
ABORT = p.Sentinel("ABORT")  # drop the client at once, for Answer.reason
RESOLVE = p.Sentinel("RESOLVE")  # look the exports up off the event loop, then ask again

#: Options that look exports up, with the event field naming the export (LIST: all).
_RESOLVING: dict[type, str] = {
    p.ExportNameOption: "name",
    p.GoOption: "name",
    p.InfoOption: "name",
    p.ListOption: "",
    p.ListMetaContextOption: "export_name",
    p.SetMetaContextOption: "export_name",
}


@dataclass(slots=True)
class Answer:
    """Replies to one option and what to do after sending them."""

    replies: list[object] = field(default_factory=list)
    action: p.Sentinel = CONTINUE
    reason: str = ""
    export: Export | None = None
    flags: int = 0


def transmission_flags(backend: Backend, structured: bool) -> int:
    """The transmission flags an export is advertised with."""
    tf = p.TransmissionFlag
    flags = tf.HAS_FLAGS
    writable = backend.can_write()
    if not writable:
        flags |= tf.READ_ONLY
    if backend.can_flush():
        flags |= tf.SEND_FLUSH | tf.SEND_FUA
    if writable:
        flags |= tf.SEND_WRITE_ZEROES
        if backend.can_trim():
            flags |= tf.SEND_TRIM
        if backend.can_fast_zero():
            flags |= tf.SEND_FAST_ZERO
    if backend.can_cache():
        flags |= tf.SEND_CACHE
    if backend.can_multi_conn():
        flags |= tf.CAN_MULTI_CONN
    if structured:
        flags |= tf.SEND_DF
    return int(flags)


def resolve_exports(exports: ExportLookup, event: object) -> dict[str, Export | None]:
    """The exports an option names (every export, for LIST); may block on a catalog."""
    if type(event) is p.ListOption:
        return {e.name: e for e in exports.exports()}
    field_name = _RESOLVING[type(event)]
    name = getattr(event, field_name)
    return {name: exports.lookup(name)}


class Negotiation:
    """One connection's handshake state: TLS, the client's identity, the selected meta
    contexts, the option count."""

    def __init__(
        self,
        exports: ExportLookup,
        authorizer: Authorizer | None,
        *,
        trusted: bool,
        tls_required: bool,
        tls_available: bool,
    ) -> None:
        self._exports = exports
        self._authorizer = authorizer
        self._trusted = trusted
        self._tls_required = tls_required
        self._tls_available = tls_available
        self.tls = False
        #: the TLS client certificate's identity, once TLS is on
        self.identity: str | None = None
        #: selected metadata contexts by id (NBD_OPT_SET_META_CONTEXT)
        self.contexts: dict[int, str] = {}
        self._meta_export: str | None = None
        self._options = 0

    def tls_started(self, identity: str | None) -> None:
        """The TLS upgrade succeeded: what was negotiated in plaintext is forgotten."""
        self.tls = True
        self.identity = identity
        self.contexts = {}
        self._meta_export = None

    # --- answering ------------------------------------------------------------------

    def answer(
        self,
        event: object,
        option: int,
        structured: bool,
        resolved: dict[str, Export | None] | None = None,
    ) -> Answer:
        """Answer one option event (or the client's flags). ``structured``: structured
        replies are on. ``resolved``: the exports this option names, looked up off the
        event loop after an answer asked to :data:`RESOLVE` them."""
        etype = type(event)
        if etype is p.ClientFlags:
            assert isinstance(event, p.ClientFlags)
            if not event.fixed_newstyle:
                return Answer(action=ABORT, reason="client does not speak fixed newstyle")
            return Answer()
        if resolved is None:  # an option asked again once resolved was counted already
            self._options += 1
            if self._options > MAX_OPTIONS:
                return Answer(action=ABORT, reason="too many options")
        if self._tls_required and not self.tls and etype not in (p.StartTLSOption, p.AbortOption):
            if etype is p.ExportNameOption:
                return Answer(
                    action=ABORT, reason="EXPORT_NAME before STARTTLS on a TLS-only listener"
                )
            return _error(option, p.OptionReplyType.ERR_TLS_REQD, "TLS required")
        handler = _HANDLERS.get(etype)
        if handler is None:
            if isinstance(event, p.InvalidOption):
                return _error(option, p.OptionReplyType.ERR_INVALID, event.reason)
            return _error(option, p.OptionReplyType.ERR_UNSUP, "unsupported")
        if resolved is None and etype in _RESOLVING and self._exports.blocking:
            # The catalog may take milliseconds (or a failover) to answer: resolve on a
            # worker thread so other connections' requests keep flowing meanwhile.
            return Answer(action=RESOLVE)
        answer: Answer = handler(self, _Option(event, option, structured, resolved))
        return answer

    def _lookup(self, name: str, resolved: dict[str, Export | None] | None) -> Export | None:
        export = resolved.get(name) if resolved is not None else self._exports.lookup(name)
        if export is None:
            return None
        if not self._trusted:  # a TCP client: only what its identity is granted
            authz = self._authorizer
            identity = self.identity
            if identity is None or authz is None or not authz.allows(identity, export.name):
                return None  # refused exactly like an unknown export
        return export

    def _listing(self, resolved: dict[str, Export | None] | None) -> Iterable[Export | None]:
        return resolved.values() if resolved is not None else self._exports.exports()

    # --- one handler per option -----------------------------------------------------

    def _export_name(self, o: _Option) -> Answer:
        export = self._lookup(o.event.name, o.resolved)
        if export is None:
            # EXPORT_NAME has no error reply: the spec's answer is a hard disconnect.
            return Answer(action=ABORT, reason=f"unknown export {shown(o.event.name)}")
        flags = transmission_flags(export.backend, o.structured)
        reply = p.ExportNameReply(export.backend.size, flags)
        return Answer([reply], ENTER, export=export, flags=flags)

    def _info(self, o: _Option) -> Answer:
        event, option = o.event, o.option
        export = self._lookup(event.name, o.resolved)
        if export is None:
            return _error(option, p.OptionReplyType.ERR_UNKNOWN, f"no export {shown(event.name)}")
        backend = export.backend
        flags = transmission_flags(backend, o.structured)
        replies: list[object] = [p.OptionInfoExport(option, backend.size, flags)]
        if p.InfoType.NAME in event.info_requests:
            replies.append(p.OptionInfoName(option, export.name))
        if p.InfoType.DESCRIPTION in event.info_requests and export.description:
            desc = export.description[: p.MAX_NAME_LENGTH]
            replies.append(p.OptionInfoDescription(option, desc))
        bs = backend.block_sizes()
        replies.append(p.OptionInfoBlockSize(option, bs.minimum, bs.preferred, bs.maximum))
        replies.append(p.OptionAck(option))
        if not isinstance(event, p.GoOption):
            return Answer(replies)
        if self._meta_export != export.name:
            self.contexts = {}
        return Answer(replies, ENTER, export=export, flags=flags)

    def _list(self, o: _Option) -> Answer:
        replies: list[object] = []
        for export in self._listing(o.resolved):
            if export is None:
                continue
            if self._lookup(export.name, o.resolved) is not None:
                desc = export.description[: p.MAX_NAME_LENGTH]
                replies.append(p.OptionServer(o.option, export.name, desc))
        replies.append(p.OptionAck(o.option))
        return Answer(replies)

    def _abort(self, o: _Option) -> Answer:
        return Answer([p.OptionAck(o.option)], CLOSE)

    def _structured(self, o: _Option) -> Answer:
        return Answer([p.OptionAck(o.option)])

    def _meta(self, o: _Option) -> Answer:
        event, option = o.event, o.option
        is_set = isinstance(event, p.SetMetaContextOption)
        if is_set:  # SET replaces the selection even when it fails
            self.contexts = {}
            self._meta_export = None
        if not o.structured:
            return _error(
                option, p.OptionReplyType.ERR_INVALID, "negotiate structured replies first"
            )
        export = self._lookup(event.export_name, o.resolved)
        if export is None:
            return _error(option, p.OptionReplyType.ERR_UNKNOWN, f"no export {event.export_name!r}")
        available = [BASE_ALLOCATION]
        if export.backend.can_allocation_depth():
            available.append(ALLOCATION_DEPTH)
        if not event.queries and not is_set:
            chosen = available
        else:
            chosen = []
            for q in event.queries:
                for name in available:
                    if (q == name or (q.endswith(":") and name.startswith(q))) and (
                        name not in chosen
                    ):
                        chosen.append(name)
        replies: list[object] = [
            p.OptionMetaContext(option, CONTEXT_IDS[name] if is_set else 0, name) for name in chosen
        ]
        if is_set:
            self.contexts = {CONTEXT_IDS[n]: n for n in chosen}
            self._meta_export = export.name
        replies.append(p.OptionAck(option))
        return Answer(replies)

    def _starttls(self, o: _Option) -> Answer:
        if not self._tls_available:
            return _error(o.option, p.OptionReplyType.ERR_UNSUP, "TLS not configured")
        if self.tls:
            return _error(o.option, p.OptionReplyType.ERR_INVALID, "TLS already on")
        return Answer([p.OptionAck(o.option)], START_TLS)


@dataclass(frozen=True, slots=True)
class _Option:
    """One option being answered, with what its handler needs to know."""

    event: Any
    option: int
    structured: bool
    resolved: dict[str, Export | None] | None


def shown(name: str) -> str:
    """A client-chosen name as messages quote it: repr'd, at most :data:`SHOWN_NAME`
    characters of it."""
    if len(name) <= SHOWN_NAME:
        return repr(name)
    return repr(name[:SHOWN_NAME]) + f"... ({len(name)} characters)"


def _error(option: int, kind: p.OptionReplyType, message: str) -> Answer:
    # Whatever goes into the message, the reply must stay within the protocol's limit.
    raw = message.encode()
    if len(raw) > p.MAX_NAME_LENGTH:
        message = raw[: p.MAX_NAME_LENGTH].decode("utf-8", "ignore")
    return Answer([p.OptionError(option, kind, message)])


_HANDLERS: dict[type, Any] = {
    p.ExportNameOption: Negotiation._export_name,
    p.GoOption: Negotiation._info,
    p.InfoOption: Negotiation._info,
    p.ListOption: Negotiation._list,
    p.AbortOption: Negotiation._abort,
    p.StructuredReplyOption: Negotiation._structured,
    p.ListMetaContextOption: Negotiation._meta,
    p.SetMetaContextOption: Negotiation._meta,
    p.StartTLSOption: Negotiation._starttls,
}

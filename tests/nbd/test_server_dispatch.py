"""Requests and options answered without a socket: the dispatcher and the handshake are
plain functions and objects (nbdkit's split of protocol.c from connections.c)."""

from __future__ import annotations

import pytest

from loft.nbd import protocol as p
from loft.nbd.backends.base import Backend, Buffer
from loft.nbd.server import ExportRegistry, Negotiation, execute
from loft.nbd.server._dispatch import WouldBlock, sparse_read
from loft.nbd.server._handshake import ABORT, CLOSE, ENTER, RESOLVE, START_TLS, Authorizer

C = p.Command
KIB = 1024


class MemoryBackend(Backend):
    """64 KiB of memory whose second 16 KiB read as a hole; ``slow`` makes nowait refuse."""

    def __init__(self) -> None:
        self.size = 64 * KIB
        self.data = bytearray(b"d" * self.size)
        self.data[16 * KIB : 32 * KIB] = bytes(16 * KIB)
        self.slow = False

    def pread(self, offset: int, length: int) -> Buffer:
        return bytes(self.data[offset : offset + length])

    def pread_nowait(self, offset: int, length: int) -> Buffer | None:
        return None if self.slow else self.pread(offset, length)

    def pwrite(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.data[offset : offset + len(data)] = data

    def can_extents(self) -> bool:
        return True

    def extents(self, offset: int, length: int) -> list[tuple[int, int]]:
        runs, pos, end = [], offset, offset + length
        for lo, hi, flags in ((0, 16, 0), (16, 32, 3), (32, 64, 0)):
            lo, hi = lo * KIB, hi * KIB
            if pos < hi and lo < end:
                runs.append((min(hi, end) - max(lo, pos), flags))
        return runs


def req(command: int, offset: int = 0, length: int = 0, payload: bytes | None = None) -> p.Request:
    return p.Request.from_wire(command, 7, offset, length, 0, payload)


def test_dispatch_read_write_without_a_socket() -> None:
    b = MemoryBackend()
    assert execute(b, req(C.WRITE, 0, 3, b"xyz"), False, {}, False) is None
    assert execute(b, req(C.READ, 0, 4), False, {}, True) == b"xyzd"


def test_dispatch_inline_read_that_would_block_raises() -> None:
    b = MemoryBackend()
    b.slow = True
    with pytest.raises(WouldBlock):
        execute(b, req(C.READ, 0, 4), False, {}, True)
    assert execute(b, req(C.READ, 0, 4), False, {}, False) == b"dddd"


def test_dispatch_sparse_read_sends_holes_not_zeros() -> None:
    b = MemoryBackend()
    pieces = sparse_read(b, b.pread, 8 * KIB, 32 * KIB)
    assert [(o, n, d is None) for o, n, d in pieces] == [
        (8 * KIB, 8 * KIB, False),
        (16 * KIB, 16 * KIB, True),
        (32 * KIB, 8 * KIB, False),
    ]
    # A READ long enough with structured replies is answered sparsely.
    out = execute(b, req(C.READ, 0, 64 * KIB), True, {}, True)
    assert isinstance(out, list) and any(d is None for _, _, d in out)


def test_dispatch_block_status_per_context() -> None:
    b = MemoryBackend()
    out = execute(b, req(C.BLOCK_STATUS, 0, 40 * KIB), True, {1: "base:allocation"}, False)
    assert out == [(1, [(16 * KIB, 0), (16 * KIB, 3), (8 * KIB, 0)])]


def negotiation(
    *, trusted: bool, authz: Authorizer | None = None, blocking: bool = False
) -> Negotiation:
    reg = ExportRegistry()
    reg.add("a", MemoryBackend())
    reg.add("b", MemoryBackend())
    reg.blocking = blocking  # type: ignore[misc]
    return Negotiation(reg, authz, trusted=trusted, tls_required=not trusted, tls_available=True)


def test_handshake_go_enters_transmission() -> None:
    n = negotiation(trusted=True)
    ans = n.answer(p.GoOption("a", ()), int(p.Option.GO), True)
    assert ans.action is ENTER and ans.export is not None and ans.export.name == "a"
    assert isinstance(ans.replies[-1], p.OptionAck)


def test_handshake_tls_only_listener_refuses_before_starttls() -> None:
    n = negotiation(trusted=False, authz=Authorizer({"alice": ("a",)}))
    ans = n.answer(p.ListOption(), int(p.Option.LIST), False)
    assert ans.action is not ENTER and isinstance(ans.replies[0], p.OptionError)
    assert n.answer(p.ExportNameOption("a"), 1, False).action is ABORT
    assert n.answer(p.StartTLSOption(), int(p.Option.STARTTLS), False).action is START_TLS
    n.tls_started("alice")
    listing = n.answer(p.ListOption(), int(p.Option.LIST), False).replies
    assert [r.name for r in listing if isinstance(r, p.OptionServer)] == ["a"]


def test_handshake_abort_closes_and_blocking_lookups_resolve_first() -> None:
    assert negotiation(trusted=True).answer(p.AbortOption(), 2, False).action is CLOSE
    n = negotiation(trusted=True, blocking=True)
    assert n.answer(p.GoOption("a", ()), 7, True).action is RESOLVE
    ans = n.answer(p.GoOption("a", ()), 7, True, resolved={"a": None})
    assert isinstance(ans.replies[0], p.OptionError)  # answered from what was resolved


def test_handshake_tcp_client_without_identity_sees_nothing() -> None:
    """Trust comes from the listener, not from a missing identity: on TCP, a client whose
    certificate names no identity is refused every export, whatever the rules say."""
    n = negotiation(trusted=False, authz=Authorizer({"alice": ("*",), "": ("*",)}))
    n.answer(p.StartTLSOption(), int(p.Option.STARTTLS), False)
    n.tls_started(None)
    listing = n.answer(p.ListOption(), int(p.Option.LIST), False).replies
    assert not any(isinstance(r, p.OptionServer) for r in listing)
    for name in ("a", "b"):
        ans = n.answer(p.GoOption(name, ()), int(p.Option.GO), True)
        assert ans.action is not ENTER and isinstance(ans.replies[0], p.OptionError)
        assert n.answer(p.ExportNameOption(name), 1, True).action is ABORT


@pytest.mark.parametrize(
    ("subject", "identity"),
    [
        ((("commonName", "alice"),), "alice"),
        ((("organizationName", "alice"),), None),
        ((), None),
        ((("commonName", ""),), None),
        ((("commonName", "mallory"),), None),  # with a second RDN below
        ((("commonName", "alice"), ("commonName", "mallory")), None),
    ],
)
def test_peer_identity_is_exactly_one_common_name(
    subject: tuple[tuple[str, str], ...], identity: str | None
) -> None:
    from loft.nbd.server import peer_identity

    rdns = [subject] if subject else []
    if subject == (("commonName", "mallory"),):
        rdns.append((("commonName", "alice"),))
    cert = {"subject": tuple(rdns), "subjectAltName": (("DNS", "alice"),)}
    assert peer_identity(cert) == identity
    assert peer_identity(None) is None and peer_identity({}) is None

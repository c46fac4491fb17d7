"""Public surfaces: __all__ matches, the registry and the authorization file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from nbd_helpers import Client, ServerThread

import loft.nbd.server as server
from loft.nbd import protocol as p
from loft.nbd.backends.file import FileBackend
from loft.nbd.protocol import NBDError
from loft.nbd.server import Authorizer, Export, ExportRegistry, load_authz


def test_server_all_matches_public_names() -> None:
    public = {n for n in dir(server) if not n.startswith("_")}
    assert set(server.__all__) == public


def test_registry_default_and_duplicates(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(bytes(4096))
    reg = ExportRegistry()
    b = FileBackend(img)
    reg.add("a", b, "first")
    assert reg.lookup("") is reg.lookup("a")
    assert reg.lookup("nope") is None
    with pytest.raises(NBDError):
        reg.add("a", b)
    reg.close()


def test_authz_file_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "a.json"
    j.write_text(json.dumps({"clients": {"alice": ["vol-a", "vol-a@*"]}}))
    t = tmp_path / "a.toml"
    t.write_text('[clients]\nbob = ["vol-b"]\n')
    a = load_authz(j)
    assert a.allows("alice", "vol-a") and a.allows("alice", "vol-a@snap1")
    assert not a.allows("alice", "vol-b") and not a.allows("mallory", "vol-a")
    assert not a.allows(None, "anything")  # no identity: nothing (trust is the listener's)
    assert load_authz(t).allows("bob", "vol-b")
    bad = tmp_path / "bad.json"
    bad.write_text('{"clients": {"x": "not-a-list"}}')
    with pytest.raises(NBDError):
        load_authz(bad)
    assert Authorizer({}).allows("x", "y") is False


class BlockingExports(ExportRegistry):
    """Exports whose lookups may block, as a catalog's do: a lookup of ``slow`` waits
    for ``gate``, a lookup of ``broken`` raises; every lookup notes its thread."""

    blocking = True

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.threads: set[int] = set()

    def lookup(self, name: str) -> Export | None:
        self.threads.add(threading.get_ident())
        if name == "slow":
            self.gate.wait(10)
        if name == "broken":
            raise RuntimeError("catalog unreachable")
        return super().lookup(name)

    def exports(self) -> list[Export]:
        self.threads.add(threading.get_ident())
        return list(super().exports())


@pytest.mark.timeout(60)
def test_blocking_lookups_run_off_the_loop(tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(b"x" * 8192)
    reg = BlockingExports()
    reg.add("disk", FileBackend(img))
    reg.add("slow", FileBackend(img, readonly=True))
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        stuck = Client(st.sock)
        stuck.next()
        stuck.send(p.ClientFlags(), p.GoOption("slow"))
        # While the first handshake waits on its lookup, another client gets through the
        # whole handshake (its own lookups included) and is served.
        other = Client(st.sock)
        other.handshake("disk")
        assert other.read(0, 4096) == b"x" * 4096
        reg.gate.set()
        replies = []
        while not isinstance(r := stuck.next(), p.OptionAck | p.OptionError):
            replies.append(r)
        assert isinstance(r, p.OptionAck) and isinstance(replies[0], p.OptionInfoExport)
        assert stuck.read(0, 4096) == b"x" * 4096
        listing = Client(st.sock)
        listing.next()
        listing.send(p.ClientFlags())
        names = [e.name for e in listing.option(p.ListOption()) if isinstance(e, p.OptionServer)]
        assert names == ["disk", "slow"]
        # A lookup that fails drops that client only.
        broken = Client(st.sock)
        broken.next()
        broken.send(p.ClientFlags(), p.InfoOption("broken"))
        assert broken.sock.recv(10) == b""
        assert other.read(4096, 4096) == b"x" * 4096
        assert st.thread.ident not in reg.threads
        for c in (stuck, other, listing, broken):
            c.close()
    reg.close()


LONG = "n" * p.MAX_NAME_LENGTH  # as long as the protocol lets a name be


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocking", [False, True], ids=["registry", "blocking-lookups"])
@pytest.mark.parametrize(
    "option",
    [
        p.InfoOption(LONG),
        p.GoOption(LONG),
        p.ListMetaContextOption(LONG, ("base:allocation",)),
        p.SetMetaContextOption(LONG, ("base:allocation",)),
        p.GoOption("é" * (p.MAX_NAME_LENGTH // 2)),  # the limit counts bytes, not characters
    ],
    ids=["info", "go", "list-meta", "set-meta", "go-multibyte"],
)
def test_longest_unknown_export_name_is_answered_at_once(
    tmp_path: Path, blocking: bool, option: object
) -> None:
    """An error reply quoting a name as long as the protocol allows must itself fit the
    protocol: the client gets ERR_UNKNOWN promptly, not a 30 s wait on a dead task."""
    reg = BlockingExports() if blocking else ExportRegistry()
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        c = Client(st.sock)
        c.sock.settimeout(5)
        c.next()
        c.send(p.ClientFlags())
        c.option(p.StructuredReplyOption())
        (reply,) = c.option(option)
        assert isinstance(reply, p.OptionError) and reply.error == p.OptionReplyType.ERR_UNKNOWN
        assert len(reply.message.encode()) <= p.MAX_NAME_LENGTH
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocking", [False, True], ids=["registry", "blocking-lookups"])
def test_longest_export_name_option_disconnects_at_once(tmp_path: Path, blocking: bool) -> None:
    reg = BlockingExports() if blocking else ExportRegistry()
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        c = Client(st.sock)
        c.sock.settimeout(5)
        c.next()
        c.send(p.ClientFlags(), p.ExportNameOption(LONG))
        assert c.sock.recv(10) == b""  # EXPORT_NAME has no error reply: a prompt close
        c.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("blocking", [False, True], ids=["registry", "blocking-lookups"])
def test_a_handler_that_raises_ends_that_connection_at_once(
    tmp_path: Path, blocking: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any unexpected exception while answering a client ends that client promptly (never
    a hang until the handshake timeout), and the server goes on serving others."""
    from loft.nbd.server import Negotiation

    img = tmp_path / "a.img"
    img.write_bytes(b"y" * 8192)
    reg = BlockingExports() if blocking else ExportRegistry()
    reg.add("disk", FileBackend(img))
    real = Negotiation.answer

    def answer(self: Negotiation, event: object, *args: object) -> object:
        # With blocking lookups, fail once the exports are resolved: on the task that
        # answers off the event loop's callbacks.
        if isinstance(event, p.InfoOption) and (not blocking or len(args) == 3):
            raise RuntimeError("bug")
        return real(self, event, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Negotiation, "answer", answer)
    with ServerThread(reg, tmp_path / "run" / "nbd.sock") as st:
        c = Client(st.sock)
        c.sock.settimeout(5)
        c.next()
        c.send(p.ClientFlags(), p.InfoOption("disk"))
        assert c.sock.recv(10) == b""
        other = Client(st.sock)
        other.handshake("disk")
        assert other.read(0, 4096) == b"y" * 4096
        for x in (c, other):
            x.close()
    reg.close()

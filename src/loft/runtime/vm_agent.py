"""The host's end of a VM's guest agent: one connection, many channels.

QEMU's chardev socket takes one client at a time, so one :class:`AgentLink` per VM
holds the connection and a thread routes the agent's frames by channel (see
:mod:`loft.runtime.vm_protocol`):

- a **call** (freeze, thaw, clock, entropy, a file) waits for its channel's ``EXIT`` or
  ``ERROR`` and gets the data that came before it;
- a **connection** (a forwarded port) carries its bytes to and from a socket as they are;
- a **session** (a command started by :meth:`VmRuntime.exec`) is relayed to a socket
  whose other end belongs to a ``loft.runtime.vm_relay`` process: that process is the
  ``subprocess.Popen`` the runtime interface promises, with the command's streams as
  its own and its exit status as its own. When the relay goes away before the command
  ends (killed by its caller), the command is killed in the guest.

Connecting (after boot, and after every restore) sends ``PING`` with a fresh nonce
until the matching ``PONG`` comes back, dropping whatever bytes came before it: a
restored guest may have been half-way through a frame for a connection that no longer
exists. Frames of channels nobody holds (commands started before a suspend) are dropped.

Both directions are flow-controlled per channel. Output: a channel may send
:data:`CREDIT` bytes ahead, and the host grants them back (``WINDOW``) only once its
socket took them, so a reader that falls behind stalls its own command, never the
routing thread or another channel, and the host holds at most that much per channel.
Input: the host sends at most :data:`CREDIT` bytes ahead of what the command read (the
agent grants them back as it writes them to the command), and stops reading the
caller's socket meanwhile, so a command that does not read its input holds neither the
agent nor the host. Sockets are non-blocking; only the
routing thread touches the selector.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loft.runtime.errors import WorkspaceError
from loft.runtime.vm_protocol import (
    CREDIT,
    MAX_REQUEST,
    UNLIMITED,
    Decoder,
    Frame,
    ProtocolError,
    Type,
    encode,
    parse_error,
    parse_u32,
)

__all__ = ["AgentError", "AgentLink"]

#: How often an unanswered PING is sent again while the guest boots.
_PING_EVERY = 0.1


class AgentError(WorkspaceError):
    """The guest agent did not answer, or refused a request."""


@dataclass
class _Call:
    """What a call's channel carried: its data (``STDOUT`` frames), then its status."""

    data: bytearray = field(default_factory=bytearray)
    status: int | None = None
    error: tuple[int, str] | None = None
    done: threading.Event = field(default_factory=threading.Event)
    limit: int = MAX_REQUEST


@dataclass
class _Session:
    sock: socket.socket
    decoder: Decoder = field(default_factory=lambda: Decoder(limit=MAX_REQUEST))
    #: a forwarded connection: its socket carries the bytes themselves, not frames
    raw: bool = False
    #: set once the guest said STARTED or ERROR (``error``: its errno and message)
    answered: threading.Event = field(default_factory=threading.Event)
    error: tuple[int, str] | None = None
    #: bytes for the socket not sent yet, and output bytes to grant back once they are
    pending: bytearray = field(default_factory=bytearray)
    owed: int = 0
    reading: bool = True  # the socket's own end is still open
    ending: bool = False  # EXIT or ERROR queued: drop once pending is sent
    #: input bytes the guest still takes (it grants more as its command reads them),
    #: and input waiting for that (an empty piece: the end of input)
    in_credit: int = CREDIT
    inq: list[bytes] = field(default_factory=list)


class AgentLink:
    """The connection to one VM's agent socket (``connect`` it; ``close`` when done)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._decoder = Decoder()
        self._send_lock = threading.Lock()
        self._calls: dict[int, _Call] = {}
        self._sessions: dict[int, _Session] = {}
        self._by_sock: dict[socket.socket, int] = {}
        self._new: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._next = 0
        self._table = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        #: Only the routing thread registers and unregisters (a session's socket before
        #: it is registered is nobody's but its opener's).
        self._sel = selectors.DefaultSelector()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.failure: str | None = None

    @classmethod
    def connect(cls, path: Path, timeout: float) -> AgentLink:
        """Connect to the agent socket at ``path`` and wait until the agent answers."""
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            while True:
                try:
                    sock.connect(str(path))
                    break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise AgentError(f"the VM's agent socket does not accept: {e}") from e
                    time.sleep(0.01)
            link = cls(sock)
            link._handshake(deadline)
        except BaseException:
            sock.close()
            raise
        link._thread = threading.Thread(target=link._route, name="vm-agent", daemon=True)
        link._thread.start()
        return link

    def _handshake(self, deadline: float) -> None:
        nonce = secrets.token_bytes(8)
        self._decoder.resync(encode(Frame(Type.PONG, 0, nonce)))
        while not self._decoder.synced:
            if time.monotonic() > deadline:
                raise AgentError("the guest agent did not answer", hint="see the VM's console log")
            self._sock.sendall(encode(Frame(Type.PING, 0, nonce)))
            ping_deadline = min(deadline, time.monotonic() + _PING_EVERY)
            while not self._decoder.synced and time.monotonic() < ping_deadline:
                self._sock.settimeout(max(0.001, ping_deadline - time.monotonic()))
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    raise AgentError("QEMU closed the agent's socket")
                self._decoder.feed(data)
        self._sock.settimeout(None)

    # -- requests ----------------------------------------------------------------------

    def _channel(self) -> int:
        with self._table:
            self._next = self._next % (2**32 - 1) + 1
            return self._next

    def _send(self, data: bytes) -> None:
        if self.failure is not None:
            raise AgentError(f"the guest agent's connection failed: {self.failure}")
        with self._send_lock:
            try:
                self._sock.sendall(data)
            except OSError as e:
                raise AgentError(f"the guest agent's connection failed: {e}") from e

    def call(self, type_: Type, payload: bytes = b"", *, timeout: float = 10.0,
             limit: int = MAX_REQUEST) -> bytes:  # fmt: skip
        """Send one request on a new channel and wait for its end; the data it carried
        (at most ``limit`` bytes). AgentError on ``ERROR`` or when ``timeout`` passes."""
        ch = self._channel()
        result = self._calls[ch] = _Call(limit=limit)
        try:
            self._send(encode(Frame(type_, ch, payload)))
            if not result.done.wait(timeout):
                raise AgentError(f"the guest agent did not finish {type_.name} in {timeout} s")
        finally:
            self._calls.pop(ch, None)
        if result.error is not None:
            errno, message = result.error
            raise AgentError(f"the guest agent refused {type_.name}: {message} (errno {errno})")
        if result.status not in (0, None):
            raise AgentError(f"{type_.name} ended with status {result.status}")
        return bytes(result.data)

    def open_session(self, exec_payload: bytes, relay: socket.socket, *,
                     tty: bool = False, kept: bool = False) -> None:  # fmt: skip
        """Start the command of an ``EXEC`` payload (``EXEC_TTY`` with ``tty``, the
        agent's kept command with ``kept``) and relay its channel to ``relay`` (this
        link owns and closes the socket from now on)."""
        type_ = Type.EXEC_TTY if tty else Type.EXEC_KEPT if kept else Type.EXEC
        self._open(type_, exec_payload, _Session(relay))

    def open_kept(self, relay: socket.socket) -> None:
        """Relay the kept command (started by an earlier connection, see
        :meth:`open_session`) to ``relay``: what it wrote since, then on."""
        self._open(Type.ATTACH, b"", _Session(relay))

    def open_connection(self, port: int, sock: socket.socket, timeout: float = 10.0) -> None:
        """Connect to ``127.0.0.1:port`` in the guest and carry its bytes to and from
        ``sock`` (owned and closed by this link from now on). Returns once connected;
        the guest's refusal is raised as the OSError of its errno
        (ConnectionRefusedError when nothing listens), TimeoutError after ``timeout``."""
        session = _Session(sock, raw=True)
        self._open(Type.CONNECT, port.to_bytes(2, "big"), session)
        if not session.answered.wait(timeout):
            # the routing thread sees the end and the guest is told to drop it: the
            # session goes with the guest's EXIT (the thread alone touches its selector)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._kill(self._by_sock.get(sock, 0))
            raise TimeoutError(f"the guest did not connect to port {port} in {timeout} s")
        if session.error is not None:
            errno, message = session.error
            raise OSError(errno, f"port {port} in the guest: {message}")

    def _open(self, type_: Type, payload: bytes, session: _Session) -> None:
        session.sock.setblocking(False)
        channel = self._channel()
        with self._table:
            self._sessions[channel] = session
            self._by_sock[session.sock] = channel
        try:
            self._send(encode(Frame(type_, channel, payload)))
        except BaseException:
            self._drop(channel)
            raise
        self._new.put(channel)
        os.write(self._wake_w, b"x")

    # -- routing -----------------------------------------------------------------------

    def _drop(self, channel: int) -> _Session | None:
        with self._table:
            session = self._sessions.pop(channel, None)
            if session is not None:
                self._by_sock.pop(session.sock, None)
        if session is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(session.sock)
            session.sock.close()
        return session

    def _route(self) -> None:
        sel = self._sel
        sel.register(self._sock, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closed:
                for key, events in sel.select():
                    if key.fileobj is self._sock:
                        self._from_guest()
                    elif key.fileobj == self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        while not self._new.empty():
                            ch = self._new.get()
                            session = self._sessions.get(ch)
                            if session is not None:
                                self._watch(session)
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        self._from_socket(key.fileobj, events)
        except (OSError, ProtocolError, AgentError) as e:  # the VM is gone or misbehaves
            self.failure = str(e) or type(e).__name__
        finally:
            sel.close()
            self._fail_all()

    def _fail_all(self) -> None:
        for result in list(self._calls.values()):
            result.error = (5, f"connection lost: {self.failure}")
            result.done.set()
        for ch in list(self._sessions):
            self._drop(ch)

    def _from_guest(self) -> None:
        data = self._sock.recv(1 << 16)
        if not data:
            raise AgentError("QEMU closed the agent's socket")
        self._decoder.feed(data)
        for frame in self._decoder.frames():
            call = self._calls.get(frame.channel)
            if call is not None:
                self._to_call(call, frame)
                continue
            session = self._sessions.get(frame.channel)
            if session is None:
                continue  # a command's output after its caller left, or from before a restore
            if frame.type is Type.WINDOW:
                session.in_credit += parse_u32(frame)
                self._feed_input(frame.channel, session)
                self._watch(session)
                continue
            if frame.type is Type.ERROR:
                session.error = parse_error(frame)
            if frame.type in (Type.STARTED, Type.ERROR):
                session.answered.set()
            if not session.raw:
                session.pending += encode(Frame(frame.type, 0, frame.payload))
            elif frame.type is Type.STDOUT:
                session.pending += frame.payload
            if frame.type in (Type.STDOUT, Type.STDERR):
                session.owed += len(frame.payload)
            session.ending = frame.type in (Type.EXIT, Type.ERROR)
            self._flush(frame.channel, session)

    def _watch(self, session: _Session) -> None:
        """Select the session's socket for what it waits for: to read its end while
        that is open, to write while bytes are pending."""
        events = 0
        if session.reading and not session.ending and not session.inq:
            events |= selectors.EVENT_READ
        if session.pending:
            events |= selectors.EVENT_WRITE
        registered = session.sock in self._sel.get_map()
        if events and registered:
            self._sel.modify(session.sock, events)
        elif events:
            self._sel.register(session.sock, events)
        elif registered:
            self._sel.unregister(session.sock)

    def _from_socket(self, sock: socket.socket, events: int) -> None:
        ch = self._by_sock.get(sock)
        session = self._sessions.get(ch) if ch is not None else None
        if ch is None or session is None:  # dropped earlier in this round
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            return
        if events & selectors.EVENT_WRITE:
            self._flush(ch, session)
        if events & selectors.EVENT_READ and ch in self._sessions:
            self._from_relay(ch, session)

    def _flush(self, channel: int, session: _Session) -> None:
        """Send what the socket takes now; once all is sent, grant the output back
        (the guest's channel may send that much more), or end the session."""
        try:
            while session.pending:
                sent = session.sock.send(session.pending)
                del session.pending[:sent]
        except BlockingIOError:
            pass
        except OSError:  # its reader is gone
            self._drop(channel)
            self._kill(channel)
            return
        if not session.pending:
            if session.ending:
                self._drop(channel)
                return
            if session.owed:
                self._send(encode(Frame(Type.WINDOW, channel, session.owed.to_bytes(4, "big"))))
                session.owed = 0
        self._watch(session)

    def _to_call(self, call: _Call, frame: Frame) -> None:
        if frame.type is Type.STDOUT:
            if len(call.data) + len(frame.payload) > call.limit:
                call.error = (27, f"more than {call.limit} bytes")  # EFBIG
                call.done.set()
            else:
                call.data += frame.payload
        elif frame.type is Type.EXIT:
            call.status = parse_u32(frame)
            call.done.set()
        elif frame.type is Type.ERROR:
            call.error = parse_error(frame)
            call.done.set()

    def _from_relay(self, ch: int, session: _Session) -> None:
        try:
            data = session.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if session.raw:
            if not data:  # half-closed: the guest's side may still answer
                session.reading = False
            session.inq.append(data)
        elif not data:
            if self._drop(ch) is not None:
                self._kill(ch)  # the caller left before the command ended
            return
        else:
            session.decoder.feed(data)
            for frame in session.decoder.frames():
                if frame.type is Type.STDIN:
                    session.inq.append(frame.payload)
                elif frame.type in (Type.SIGNAL, Type.RESIZE):  # never behind the input
                    self._send(encode(Frame(frame.type, ch, frame.payload)))
        self._feed_input(ch, session)
        self._watch(session)

    def _feed_input(self, ch: int, session: _Session) -> None:
        """Send queued input as far as the guest's credit goes (the end of input goes
        when all before it went)."""
        while session.inq and (session.in_credit > 0 or not session.inq[0]):
            piece = session.inq[0]
            n = min(len(piece), session.in_credit)
            self._send(encode(Frame(Type.STDIN, ch, piece[:n])))
            session.in_credit -= n
            if n < len(piece):
                session.inq[0] = piece[n:]
            else:
                session.inq.pop(0)

    def _kill(self, channel: int) -> None:
        """Kill the channel's command (or end its connection), and let whatever it
        still writes flow, to be dropped: nobody will grant it credit again."""
        with contextlib.suppress(AgentError):
            self._send(encode(Frame(Type.SIGNAL, channel, (9).to_bytes(4, "big"))))
            self._send(encode(Frame(Type.WINDOW, channel, UNLIMITED.to_bytes(4, "big"))))

    def close(self) -> None:
        """Drop the connection; commands in the guest keep running."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

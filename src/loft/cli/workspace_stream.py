"""``loft exec``, ``loft shell`` and ``loft forward``.

exec goes through the control plane's API (``POST …/exec``: the command's standard input
is read to its end first and sent with the request, its output streams back as it comes,
its exit code becomes ours).

shell and forward still open a session on the node agent's socket (root only), by the
workspace's id, which the API resolves from its name: the API's terminal (a WebSocket)
and its preview proxy are what replace them. Over that connection (:mod:`loft.node.frames`,
the standard library only): a thread copies this process's standard input into STDIN frames (then
EOF); the main thread writes STDOUT and STDERR frames to ours until EXIT, whose status
becomes ours. A shell puts our terminal in raw mode (restored on the way out, however it
ends) and sends a RESIZE whenever our window changes (SIGWINCH). The connection stays
open until EXIT: closing it is how a client says it went away (the process gets SIGHUP
or SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator

import click

from loft.cli.workspace import client
from loft.errors import LoftError
from loft.node import frames
from loft.node.frames import Channel, Frame

__all__ = ["exec_", "forward", "shell"]

_USERS = {"root": 0, "runner": 1000}


class _Connection:
    """The frames of one session over its socket; sends are safe from any thread."""

    def __init__(self, sock: socket.socket, initial: bytes) -> None:
        self.sock = sock
        self.decoder = frames.Decoder()
        if initial:
            self.decoder.receive_data(initial)
        self._send = threading.Lock()

    def send(self, frame: Frame) -> None:
        with self._send, contextlib.suppress(OSError):
            self.sock.sendall(frames.encode(frame))

    def received(self) -> Iterator[Frame]:
        """Frames from the service until it closes the connection."""
        while True:
            frame = self.decoder.next_frame()
            if isinstance(frame, Frame):
                yield frame
            elif frame is None:
                return
            else:
                self.decoder.receive_data(self.sock.recv(65536))


def _user(value: str) -> int:
    if value in _USERS:
        return _USERS[value]
    if value.isdigit() and int(value) < 65536:
        return int(value)
    raise LoftError(f"bad --user {value!r}", hint="root, runner or a uid below 65536")


def _copy_stdin(conn: _Connection, fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            conn.send(frames.eof())
            return
        conn.send(Frame(Channel.STDIN, data))


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    """Our terminal in raw mode for the block (keys go to the remote shell as typed)."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _session(req: object, *, tty: bool) -> int:
    """Run a shell session to its end; the remote exit status."""
    from loft.node.client import open_stream

    sock, initial = open_stream(_agent_path(), req)
    conn = _Connection(sock, initial)
    stdin = sys.stdin.fileno()
    interactive = tty and os.isatty(stdin)
    if interactive:
        signal.signal(signal.SIGWINCH, lambda *_: conn.send(frames.resize(*_window())))
    threading.Thread(target=_copy_stdin, args=(conn, stdin), daemon=True).start()
    out = {Channel.STDOUT: sys.stdout.buffer, Channel.STDERR: sys.stderr.buffer}
    with _raw_terminal(stdin) if interactive else contextlib.nullcontext():
        for frame in conn.received():
            if frame.channel in out:
                out[frame.channel].write(frame.payload)
                out[frame.channel].flush()
            elif frame.channel is Channel.EXIT:
                return int(frames.json_of(frame)["status"])
            elif frame.channel is Channel.ERROR:
                err = frames.json_of(frame)
                raise LoftError(str(err.get("error")), hint=err.get("hint"))
    raise LoftError(
        "the node agent closed the session before the command ended",
        hint="is `loft up` still running?",
    )


def _agent_path() -> str:
    from loft.config import Settings

    return str(Settings.from_env().data_dir / "run" / "agent.sock")


def _workspace_id(name: str) -> str:
    """The id of the caller's workspace ``name`` (the API's answer: an unknown name, or
    another user's, fails here)."""
    with client() as c:
        return c.workspace(name).id


def _window() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
    except OSError:
        return 24, 80
    # A terminal that never had a size set (a serial console, script(1)'s) says 0x0.
    return size.lines or 24, size.columns or 80


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option(
    "-e",
    "--env",
    "setenv",
    multiple=True,
    metavar="K=V",
    help="Set an environment variable (repeatable).",
)
@click.option("--cwd", help="Working directory inside (default: the user's home).")
@click.option("-u", "--user", default="runner", show_default=True, help="root, runner or a uid.")
def exec_(
    name: str, command: tuple[str, ...], setenv: tuple[str, ...], cwd: str | None, user: str
) -> None:
    """Run COMMAND in workspace NAME; its output is ours as it comes, its exit status
    is ours; our standard input (unless a terminal) is read to its end and passed on.
    Example: loft exec dev -- python3 -c 'print(1)'"""
    import base64

    from loft.api import MAX_EXEC_STDIN, MAX_EXEC_TIMEOUT, ExecRequest

    env = {}
    for item in setenv:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LoftError(f"--env {item!r} is not K=V")
        env[key] = value
    stdin = "" if sys.stdin.isatty() else sys.stdin.buffer.read(MAX_EXEC_STDIN + 1)
    if len(stdin) > MAX_EXEC_STDIN:
        raise LoftError(
            f"standard input over {MAX_EXEC_STDIN >> 20} MiB", hint="copy large files with loft cp"
        )
    text = stdin.decode("utf-8", "surrogateescape") if isinstance(stdin, bytes) else stdin
    req = ExecRequest(list(command), env, cwd, text, MAX_EXEC_TIMEOUT, _user(user))
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    with client(MAX_EXEC_TIMEOUT) as c:
        for event in c.exec_stream(name, req):
            if event.type in out:
                out[event.type].write(base64.b64decode(event.data))
                out[event.type].flush()
            elif event.type == "exit":
                sys.exit(event.code or 0)
            else:
                raise LoftError(event.error or "the command broke off", hint=event.hint)
    raise LoftError("the API ended the command without its exit status")


@click.command()
@click.argument("name")
@click.option("-u", "--user", default="runner", show_default=True, help="root, runner or a uid.")
def shell(name: str, user: str) -> None:
    """An interactive shell in workspace NAME, on a terminal whose size follows ours."""
    from loft.node import workspace_api as wapi

    rows, cols = _window()
    req = wapi.ExecWorkspaceRequest(
        _workspace_id(name), list(wapi.SHELL), user=_user(user), tty=True, rows=rows, cols=cols
    )
    sys.exit(_session(req, tty=True))


@click.command()
@click.argument("name")
@click.argument("port", type=int)
@click.option(
    "--local",
    "local_port",
    type=int,
    default=None,
    help="Listen on 127.0.0.1:LPORT instead of a root-only Unix socket (every "
    "local account can reach it; 0: any free port).",
)
def forward(name: str, port: int, local_port: int | None) -> None:
    """Expose PORT of workspace NAME (its loopback) on this host until Ctrl-C: as a
    Unix socket only root may open (default), or with --local as a TCP port on
    127.0.0.1, which every local account can reach."""
    from loft.node import workspace_api as wapi
    from loft.node.client import open_stream

    req = wapi.ForwardRequest(_workspace_id(name), port, local_port)
    sock, initial = open_stream(_agent_path(), req)
    conn = _Connection(sock, initial)
    try:
        for frame in conn.received():
            info = frames.json_of(frame)
            if frame.channel is Channel.READY:
                click.echo(f"forwarding {name}:{port} at {info['listen']} (Ctrl-C stops)")
            elif frame.channel is Channel.ERROR:
                raise LoftError(f"forward ended: {info.get('error')}", hint=info.get("hint"))
    except KeyboardInterrupt:
        sock.close()
        return
    raise LoftError("the node agent ended the forward", hint="is `loft up` still running?")

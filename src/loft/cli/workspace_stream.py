"""``loft exec``, ``loft shell`` and ``loft forward``, each through the control plane's API.

exec: ``POST …/exec`` (the command's standard input is read to its end first and sent
with the request, its output streams back as it comes, its exit code becomes ours).

shell: the terminal WebSocket (``…/terminal``). A thread copies this process's standard
input into binary messages; the main thread writes output messages to ours until the
exit message, whose code becomes ours. On a terminal, ours goes into raw mode (restored
on the way out, however it ends) and a resize message follows every SIGWINCH. Without a
terminal the shell still runs, reading our standard input.

forward: a listener of ours (a 0600 Unix socket in a private directory, or with
``--local`` a TCP port on 127.0.0.1); each connection it accepts becomes one WebSocket
tunnel (``…/ports/PORT``) into the workspace, relayed by two threads. It ends, saying
so, when the workspace stops.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from loft.cli.apiclient import api
from loft.errors import LoftError

if TYPE_CHECKING:
    from loft.client._websocket import WebSocket

__all__ = ["exec_", "forward", "shell"]

_USERS = {"root": 0, "runner": 1000}


def _user(value: str) -> int:
    if value in _USERS:
        return _USERS[value]
    if value.isdigit() and int(value) < 65536:
        return int(value)
    raise LoftError(f"bad --user {value!r}", hint="root, runner or a uid below 65536")


def _copy_input(ws: WebSocket, fd: int) -> None:
    """Our standard input to the shell, until its end (sent as the terminal's EOF
    character: a terminal has no other end of input)."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        try:
            ws.send_bytes(data or b"\x04")
        except LoftError:
            return
        if not data:
            return


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
    with api(MAX_EXEC_TIMEOUT) as c:
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
    _user(user)  # a bad --user is refused here, in the CLI's words
    rows, cols = _window()
    with api() as c:
        ws = c.terminal(name, rows=rows, cols=cols, user=user)
    sys.exit(_run_shell(ws))


def _resize(ws: WebSocket) -> None:
    rows, cols = _window()
    with contextlib.suppress(LoftError):
        ws.send_json({"type": "resize", "rows": rows, "cols": cols})


def _run_shell(ws: WebSocket) -> int:
    """Carry a terminal session to its end; the shell's exit code."""
    import json

    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)
    if interactive:
        signal.signal(signal.SIGWINCH, lambda *_: _resize(ws))
    threading.Thread(target=_copy_input, args=(ws, stdin), daemon=True).start()
    out = sys.stdout.buffer
    try:
        with _raw_terminal(stdin) if interactive else contextlib.nullcontext():
            while (message := ws.recv()) is not None:
                if isinstance(message, bytes):
                    out.write(message)
                    out.flush()
                    continue
                msg = json.loads(message)
                if msg.get("type") == "exit":
                    return int(msg.get("code", 255))
                if msg.get("type") == "idle":
                    sys.stderr.write(
                        f"\r\nloft: idle: this workspace stops in {msg.get('stop_in')} s "
                        "unless it is used\r\n"
                    )
                elif msg.get("type") == "error":
                    raise LoftError(str(msg.get("error")), hint=msg.get("hint"))
    finally:
        ws.close()
    raise LoftError(
        f"the terminal closed before the shell ended ({ws.close_code} {ws.close_reason})",
        hint="is the control plane still running?",
    )


@click.command()
@click.argument("name")
@click.argument("port", type=int)
@click.option(
    "--local",
    "local_port",
    type=int,
    default=None,
    help="Listen on 127.0.0.1:LPORT instead of a Unix socket only this account may "
    "open (every local account can reach it; 0: any free port).",
)
def forward(name: str, port: int, local_port: int | None) -> None:
    """Expose PORT of workspace NAME (its loopback) on this host until Ctrl-C: as a
    Unix socket only this account may open (default), or with --local as a TCP port on
    127.0.0.1, which every local account can reach."""
    import tempfile

    if not 0 < port < 65536 or not 0 <= (local_port or 0) < 65536:
        raise LoftError(f"bad port {port if not 0 < port < 65536 else local_port}")
    with api() as c:
        state = c.workspace(name).state
        if state != "running":
            raise LoftError(
                f"workspace {name!r} is {state}: forward needs it running",
                hint=f"start it first: loft start {name}",
            )
    private = None
    if local_port is None:
        private = tempfile.mkdtemp(prefix="loft-forward-")  # 0700, ours
        where = os.path.join(private, f"{name}-{port}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        os.fchmod(listener.fileno(), 0o600)
        listener.bind(where)
    else:
        listener = socket.create_server(("127.0.0.1", local_port))
        where = f"127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(16)
    threading.Thread(target=_accept, args=(listener, name, port), daemon=True).start()
    click.echo(f"forwarding {name}:{port} at {where} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(1.0)
            with api() as c:
                if c.workspace(name).state != "running":
                    raise LoftError("forward ended: the workspace stopped")
    except KeyboardInterrupt:
        return
    finally:
        listener.close()
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _accept(listener: socket.socket, name: str, port: int) -> None:
    """Each connection accepted becomes a tunnel of its own."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return  # closed: the forward ended
        threading.Thread(target=_tunnel, args=(conn, name, port), daemon=True).start()


def _tunnel(conn: socket.socket, name: str, port: int) -> None:
    """Relay one local connection through a WebSocket to the workspace's port (one that
    cannot be made is closed at once, as a refused connection would be)."""
    try:
        with api() as c:
            ws = c.port(name, port)
    except LoftError:
        conn.close()
        return

    def inward() -> None:
        while True:
            try:
                data = conn.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                break
            try:
                ws.send_bytes(data)
            except LoftError:
                break
        ws.close()

    there = threading.Thread(target=inward, daemon=True)
    there.start()
    while (message := ws.recv()) is not None:
        if isinstance(message, bytes):
            try:
                conn.sendall(message)
            except OSError:
                break
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
    there.join(5)
    conn.close()

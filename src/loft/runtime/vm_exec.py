"""Reaching into a running VM through its guest agent: commands, terminals, connections
to the guest's ports.

A command is relayed by a process of its own on the host
(:mod:`~loft.runtime.vm_relay`), the ``subprocess.Popen`` the caller gets, as runc's
``exec`` is for a sandbox; a connection is a Unix socket whose bytes are the guest's
TCP connection. Neither needs a network device in the guest.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from loft.runtime.console import PtySession, on_new_pty
from loft.runtime.oci import process_config
from loft.runtime.runc import Stdio
from loft.runtime.spec import ExecRequest, WindowSize
from loft.runtime.vm_agent import AgentLink
from loft.runtime.vm_process import VmProcess, agent_link
from loft.runtime.vm_protocol import exec_payload, window_payload

__all__ = ["attach_kept", "connect_in", "exec_in", "pty_in"]


def exec_in(vm: VmProcess, request: ExecRequest, *, kept: bool, stdin: Stdio, stdout: Stdio,
            stderr: Stdio) -> subprocess.Popen[bytes]:  # fmt: skip
    """``request`` run in ``vm``'s guest (``kept``: the agent keeps its output while no
    host reads it), as a process relaying it."""
    link = agent_link(vm)
    process = process_config(request)
    payload = exec_payload(request.argv, process["env"], process["cwd"], request.user,
                           request.user)  # fmt: skip
    return _relay(link, payload, tty=False, kept=kept, stdin=stdin, stdout=stdout,
                  stderr=stderr)  # fmt: skip


def attach_kept(vm: VmProcess, *, stdout: Stdio, stderr: Stdio) -> subprocess.Popen[bytes]:
    """The kept command of ``vm``'s guest, as a process relaying it."""
    return _relay(agent_link(vm), None, tty=False, stdin=subprocess.DEVNULL, stdout=stdout,
                  stderr=stderr)  # fmt: skip


def _relay(link: AgentLink, payload: bytes | None, *, tty: bool, stdin: Stdio, stdout: Stdio,
           stderr: Stdio, kept: bool = False) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start the relay process that stands for the command of ``payload`` (None: the
    agent's kept command)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    kept = kept or payload is None
    argv = [sys.executable, "-m", "loft.runtime.vm_relay", *(["--tty"] if tty else []),
            *(["--kept"] if kept else []), str(theirs.fileno())]  # fmt: skip
    try:
        proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=stdin,
                                stdout=stdout, stderr=stderr)  # fmt: skip
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        if payload is None:
            link.open_kept(ours)
        else:
            link.open_session(payload, ours, tty=tty, kept=kept)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def pty_in(vm: VmProcess, request: ExecRequest, size: WindowSize) -> PtySession:
    """``request`` on a new terminal in ``vm``'s guest, relayed to a host terminal whose
    master the caller gets."""
    process = process_config(request, size)
    payload = window_payload(size.rows, size.cols) + exec_payload(
        request.argv, process["env"], process["cwd"], request.user, request.user
    )
    link = agent_link(vm)
    return on_new_pty(size, lambda slave: _relay(link, payload, tty=True, stdin=slave,
                                                 stdout=slave, stderr=slave))  # fmt: skip


def connect_in(vm: VmProcess, port: int, timeout: float) -> socket.socket:
    """One connection to ``127.0.0.1:port`` in ``vm``'s guest."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        agent_link(vm).open_connection(port, theirs, timeout)
    except BaseException:
        ours.close()
        raise
    return ours

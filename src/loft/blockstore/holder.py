"""Who holds a volume's lease, said so that the holder's own node can prove it dead.

A lease normally ends when its holder releases it or when it expires (ttl + margin by
the database's clock). After a ``kill -9`` of the disk service, waiting for expiry keeps
a volume unserved for ~35 s although nothing can write it any more. A restarted service
on the *same node* can know that: the holder string names the process well enough to
look it up. Format (one line, at most 255 characters, the catalog column's width)::

    loft1:<node>:<pidns>:<pid>:<start>:<token>@<hostname>

- ``node``: this boot of this machine, 32 hex digits: SHA-256 of ``/etc/machine-id`` and
  ``/proc/sys/kernel/random/boot_id``. The machine id says the machine (a hostname does
  not: two machines may share one, one machine may be renamed); the boot id says the
  boot, so a PID recorded before a reboot is never looked up after it. Hashed, because
  machine-id(5) asks that the id itself not be shown to others, and the catalog is read
  by every node.
- ``pidns``: the inode of the holder's PID namespace. A PID means something only in its
  namespace: two disk services in two containers of one host share machine and boot.
- ``pid`` and ``start``: the process and its start time (``/proc/PID/stat`` field 22,
  clock ticks since boot), so a new process that got the PID again is not the holder.
- ``token``: random, so two opens by one process are two holders.
- ``hostname``: for people reading ``loft volume ls``; never used to decide anything.

:func:`provably_dead` says True only when all of node, namespace and ``/proc`` are this
process's own and the process is gone (no such PID, another start time, or a zombie,
which has closed its files and writes nothing more). Anything else, an unreadable
``/proc``, a holder string in another format (older loft versions wrote
``host:pid:token``), a holder on another node, is "maybe alive": wait for expiry.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from loft.procfs import pid_namespace, proc_is_ours, proc_stat

__all__ = ["HolderId", "describe", "new_holder_id", "parse_holder", "provably_dead"]

_PREFIX = "loft1"
_MACHINE_ID = Path("/etc/machine-id")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
#: What an unknown node identity is written as (never equal to a real one).
_UNKNOWN = "-"
_MAX_HOSTNAME = 64


@dataclass(frozen=True, slots=True)
class HolderId:
    """The parts of a holder string (see the module docstring)."""

    node: str
    pidns: int
    pid: int
    start: int
    token: str
    hostname: str

    def __str__(self) -> str:
        return (
            f"{_PREFIX}:{self.node}:{self.pidns}:{self.pid}:{self.start}:{self.token}"
            f"@{self.hostname}"
        )


@functools.cache
def node_identity() -> str:
    """This boot of this machine, or ``-`` when either id is unreadable."""
    try:
        machine = _MACHINE_ID.read_text().strip()
        boot = _BOOT_ID.read_text().strip()
    except OSError:
        return _UNKNOWN
    if not machine or not boot:
        return _UNKNOWN
    return hashlib.sha256(f"loft-node\0{machine}\0{boot}".encode()).hexdigest()[:32]


def new_holder_id(pid: int | None = None) -> str:
    """A holder identity for this process (or process ``pid`` of this node), unique to
    this call."""
    pid = os.getpid() if pid is None else pid
    stat = proc_stat(pid)
    return str(
        HolderId(
            node=node_identity(),
            pidns=pid_namespace(),
            pid=pid,
            start=stat.start if stat is not None else 0,
            token=secrets.token_hex(4),
            hostname=socket.gethostname()[:_MAX_HOSTNAME].replace("@", "_"),
        )
    )


def parse_holder(holder: str) -> HolderId | None:
    """The parts of a holder string, or None when it is not in this format."""
    head, sep, hostname = holder.partition("@")
    parts = head.split(":")
    if not sep or len(parts) != 6 or parts[0] != _PREFIX:
        return None
    _, node, pidns, pid, start, token = parts
    try:
        return HolderId(node, int(pidns), int(pid), int(start), token, hostname)
    except ValueError:
        return None


def provably_dead(holder: str) -> bool:
    """True when ``holder`` is a process of this node's current boot, in this PID
    namespace, that no longer runs. False whenever that cannot be proved."""
    h = parse_holder(holder)
    if h is None or h.node == _UNKNOWN or h.node != node_identity():
        return False
    if h.pidns != pid_namespace() or h.pidns == 0 or not proc_is_ours():
        return False
    try:
        stat = proc_stat(h.pid)
    except (OSError, ValueError, IndexError):  # unreadable: cannot prove anything
        return False
    return stat is None or stat.start != h.start or stat.exited


def describe(holder: str) -> str:
    """A holder for people: ``pid 1234 on host-a`` (the raw string when not parsable)."""
    h = parse_holder(holder)
    return holder if h is None else f"pid {h.pid} on {h.hostname}"

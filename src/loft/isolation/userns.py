"""User namespaces that map a sandbox's ids onto a dedicated range of unprivileged host ids.

A user namespace made by root with bubblewrap's ``--unshare-user`` maps the sandbox's uid
to root on the host (bubblewrap writes ``"<uid> 0 1"``): whatever the sandbox writes
through a bind is root's, and any capability it regains counts for root's files. Here root
writes the maps of a namespace itself: ids 0..size-1 inside are the host ids of an
:class:`IdRange`, which no host user or group may own. Host root is not mapped at all, so
inside it is the overflow id (65534) and no capability in the namespace applies to root's
files.

The namespace belongs to one host id of the range, its *owner*: the sandbox's own uid. A
process running as the owner on the host may join it (and holds every capability in it
until it drops them), so the sandbox's supervisor runs as that uid too; the kernel lets a
process signal another only when they share a uid (or it has CAP_KILL), and the
supervisor must be able to kill the sandbox when loft dies. The namespace outlives the
short child that made it through the file descriptor ``/proc/PID/ns/user`` (bubblewrap
``--userns FD``). Before the child leaves, it sets the namespace's own
``user.max_user_namespaces`` to 0, so nothing inside can create a nested user namespace
whatever the host's setting (the seccomp filter refuses it as well; either suffices).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loft import libc
from loft.isolation import IsolationError

__all__ = [
    "ENV_RUN_IDS",
    "IdRange",
    "drop_to",
    "host_id_entries",
    "host_owners",
    "user_namespace",
]

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
# capget/capset take this module's structures: bound here, not in loft.libc
_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("effective", "permitted", "inheritable")]


@dataclass(frozen=True)
class IdRange:
    """``size`` consecutive host ids from ``host``; a namespace sees them as 0..size-1."""

    host: int
    size: int = 65536

    def __post_init__(self) -> None:
        # Ids from 2**31 up are read as negative by some programs (systemd's advice).
        if self.host <= 0 or self.size <= 0 or self.host + self.size > 2**31:
            raise ValueError(f"bad id range {self.host}+{self.size}")

    def __contains__(self, host_id: object) -> bool:
        return isinstance(host_id, int) and self.host <= host_id < self.host + self.size

    def host_id(self, inside: int) -> int:
        """The host id of ``inside``."""
        if not 0 <= inside < self.size:
            raise ValueError(f"id {inside} is outside a range of {self.size}")
        return self.host + inside

    def map_line(self) -> str:
        """The range as one line of ``/proc/PID/uid_map`` (and ``gid_map``)."""
        return f"0 {self.host} {self.size}\n"


#: The ids of ``loft env run`` sandboxes: the 65,536 ids from 0x70000000 (1879048192),
#: just above the container range systemd hands out (524288..1879048191, where
#: per-workspace ranges belong) and below 2**31. Every ``env run`` shares it: each runs in
#: its own pid, ipc and network namespaces and sees none of the others.
ENV_RUN_IDS = IdRange(0x7000_0000)


def host_id_entries(etc: Path = Path("/etc")) -> Iterator[tuple[str, str, int]]:
    """``(table, name, id)`` for every user and group of this host (``passwd``,
    ``group``); an unreadable table gives nothing."""
    for table in ("passwd", "group"):
        try:
            lines = (etc / table).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                yield table, fields[0], int(fields[2])


def host_owners(ids: IdRange, etc: Path = Path("/etc")) -> list[str]:
    """Users and groups of this host (``passwd``, ``group``) whose id is in ``ids``."""
    return [f"{t} {name} ({i})" for t, name, i in host_id_entries(etc) if i in ids]


@contextlib.contextmanager
def user_namespace(ids: IdRange, owner: int) -> Iterator[int]:
    """A new user namespace whose uids and gids 0..size-1 are ``ids`` on the host, owned
    by host id ``owner`` (in ``ids``), as a file descriptor (closed on exit). Needs root;
    refuses a range a host user or group owns."""
    if os.geteuid() != 0:
        raise IsolationError("only root can map a user namespace onto a range of host ids")
    if owner not in ids:
        raise ValueError(f"owner {owner} is outside the id range {ids}")
    owners = host_owners(ids)
    if owners:
        raise IsolationError(
            f"host ids {ids.host}..{ids.host + ids.size - 1} are not free: {', '.join(owners)}",
            hint="sandbox id ranges must be owned by no host user or group",
        )
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child of a fork; covered by what it leaves)
        _child(owner, to_child_r, to_parent_w)
    os.close(to_child_r)
    os.close(to_parent_w)
    ns_fd = -1
    try:
        if os.read(to_parent_r, 1) != b"u":
            raise IsolationError("cannot create a user namespace (unshare failed)")
        proc = Path(f"/proc/{pid}")
        # setgroups must be denied before gid_map is written; it keeps a sandbox from
        # dropping a group to get past a "group may not" permission.
        for name, text in (("uid_map", ids.map_line()), ("setgroups", "deny\n"),
                           ("gid_map", ids.map_line())):  # fmt: skip
            (proc / name).write_text(text)
        ns_fd = os.open(proc / "ns" / "user", os.O_RDONLY | os.O_CLOEXEC)
        os.write(to_child_w, b"m")
        if os.read(to_parent_r, 1) != b"n":
            raise IsolationError("cannot forbid nested user namespaces in a sandbox's namespace")
    except BaseException:
        if ns_fd >= 0:
            os.close(ns_fd)
        raise
    finally:
        os.close(to_child_w)
        os.close(to_parent_r)
        os.waitpid(pid, 0)
    try:
        yield ns_fd
    finally:
        os.close(ns_fd)


def drop_to(host_id: int) -> None:
    """Become uid and gid ``host_id`` with no supplementary groups; root's capabilities
    go with root (for a ``preexec_fn``: the process then joins the namespace ``host_id``
    owns)."""
    os.setgroups([])
    os.setresgid(host_id, host_id, host_id)
    os.setresuid(host_id, host_id, host_id)


def _child(owner: int, from_parent: int, to_parent: int) -> None:
    """Unshare a user namespace owned by ``owner``, wait for the maps, forbid nested
    namespaces in it, leave.

    A fork of a process that may have threads: only system calls here, no locks.
    """
    status = 1
    try:
        # The owner is the creator's effective uid. Root's capabilities stay permitted
        # and are made effective again: with CAP_SYS_ADMIN the namespace can be made even
        # where unprivileged user namespaces are switched off.
        os.setegid(owner)
        os.seteuid(owner)
        header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
        if _libc.capget(ctypes.byref(header), data) == 0:
            for half in data:
                half.effective = half.permitted
            _libc.capset(ctypes.byref(header), data)
        try:
            libc.unshare(libc.CLONE_NEWUSER)
        except OSError:
            os.write(to_parent, b"!")
            return
        os.write(to_parent, b"u")
        if os.read(from_parent, 1) == b"m":
            # The sysctl is per user namespace, and the namespace's creator holds every
            # capability in it.
            fd = os.open("/proc/sys/user/max_user_namespaces", os.O_WRONLY)
            os.write(fd, b"0")
            os.close(fd)
            os.write(to_parent, b"n")
            status = 0
    finally:
        os._exit(status)

"""What ``/proc`` says about a process, and about the mounts loft's processes see.

Small readers shared by the blockstore (is a lease holder's process still the one that
took the lease?) and the runtime (is an attachment's nbdfuse still running? what is
mounted where?). Linux only, like the rest of loft.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PF_LOCAL_THROTTLE",
    "PF_MEMALLOC_NOIO",
    "ProcStat",
    "mounts",
    "pid_namespace",
    "proc_is_ours",
    "proc_stat",
]

#: Task flags (``include/linux/sched.h``) that ``PR_SET_IO_FLUSHER`` sets.
PF_MEMALLOC_NOIO = 0x00080000
PF_LOCAL_THROTTLE = 0x00100000


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/PID/stat`` loft reads."""

    state: str  # R, S, D, Z (zombie), X (dead), ...
    flags: int  # the kernel's PF_* task flags
    start: int  # start time, clock ticks since boot: with the PID, names one process

    @property
    def exited(self) -> bool:
        """A zombie or dead task: its files are closed, it does nothing more."""
        return self.state in ("Z", "X")


def proc_stat(pid: int, tid: int | None = None) -> ProcStat | None:
    """Process ``pid``'s (or its thread ``tid``'s) stat; None when there is no such
    process. OSError when ``/proc`` cannot be read."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        raw = Path(path).read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ')': the
    # fields that follow start after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(state=fields[0].decode(), flags=int(fields[6]), start=int(fields[19]))


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and i + 4 <= len(field):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> dict[str, tuple[str, str]]:
    """Mount point -> (filesystem type, source) for this process's mount namespace; the
    topmost mount where several are stacked on one point."""
    out: dict[str, tuple[str, str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = _unescape(left.split()[4])
            fstype, source = right.split()[:2]
            out[point] = (fstype, _unescape(source))
    return out


def pid_namespace() -> int:
    """The inode of this process's PID namespace (0 when unreadable)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def proc_is_ours() -> bool:
    """True when ``/proc`` shows this process's PID namespace (a container may be handed
    the host's ``/proc``, where our PIDs would name other processes)."""
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False

"""Admission: a node refuses to create or start a workspace beyond its capacity.

Three resources, each judged its own way:

- **memory**: the sum of the memory limits of the workspaces this node has committed to
  (those it runs or is to run again, ``desired = running``) plus the newcomer's must fit
  ``LOFT_NODE_MEMORY`` (a size, or ``N%`` of ``MemTotal``; default 100 %). Memory is not
  compressible: a node whose workspaces all use their limits at once must not need more
  than it has, or the kernel's OOM killer picks victims across tenants. So no
  overcommit by default; an operator who knows the workloads sets more than 100 %.
- **CPU**: the same with the CPU limits against ``LOFT_NODE_CPUS`` (a number, or ``N%``
  of the host's CPUs; default 400 %). CPU is compressible (a quota is a ceiling, and an
  idle workspace uses none), so a node commits several times its cores, as every cloud
  does: five one-CPU workspaces fit on two cores.
- **disk**: the data disk must be above its free-space reserve (``LOFT_DISK_RESERVE``,
  :mod:`loft.blockstore.reserve`): below it the disk service refuses growth anyway, and
  a new workspace's first writes would fail.

A refusal says what is committed, to how many workspaces, and what to do. The caller
serialises admissions (:class:`Admission` holds a lock while it checks and the caller
records the commitment), so two starts cannot both take the last gigabyte.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loft.blockstore.reserve import DiskReserve
from loft.config import Settings
from loft.errors import LoftError
from loft.runtime.spec import Limits
from loft.units import format_size, parse_size

__all__ = [
    "DEFAULT_CPU_SHARE",
    "DEFAULT_MEMORY_SHARE",
    "Admission",
    "Capacity",
    "NotAdmitted",
    "capacity_from",
    "host_cpus",
    "host_memory",
]

DEFAULT_MEMORY_SHARE = "100%"
DEFAULT_CPU_SHARE = "400%"


class NotAdmitted(LoftError):
    """The node has no room for the workspace (memory, CPU or disk)."""


def host_memory(meminfo: Path = Path("/proc/meminfo")) -> int:
    """The host's memory in bytes (``MemTotal``)."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise LoftError(f"{meminfo} has no MemTotal")


def host_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) or (os.cpu_count() or 1)


@dataclass(frozen=True)
class Capacity:
    """What the node commits to workspaces at most: memory in bytes, CPUs."""

    memory: int
    cpus: float


def capacity_from(
    settings: Settings, memory: int | None = None, cpus: int | None = None
) -> Capacity:
    """The node's capacity from ``LOFT_NODE_MEMORY`` and ``LOFT_NODE_CPUS`` (checked by
    :class:`~loft.config.Settings`), against the host's memory and CPUs."""
    mem_total = host_memory() if memory is None else memory
    cpu_total = host_cpus() if cpus is None else cpus
    mem_spec = settings.node_memory or DEFAULT_MEMORY_SHARE
    cpu_spec = settings.node_cpus or DEFAULT_CPU_SHARE
    mem = _share(mem_spec, mem_total) if mem_spec.endswith("%") else parse_size(mem_spec)
    cpu = _share(cpu_spec, cpu_total) if cpu_spec.endswith("%") else float(cpu_spec)
    return Capacity(int(mem), float(cpu))


def _share(spec: str, total: float) -> float:
    return total * float(spec[:-1]) / 100


class Admission:
    """Checks a newcomer against the capacity and what is committed already."""

    def __init__(self, capacity: Capacity, reserve: DiskReserve) -> None:
        self.capacity = capacity
        self.reserve = reserve
        #: held by the caller from the check until the commitment is recorded
        self.lock = threading.Lock()

    def check(self, name: str, limits: Limits, committed: Iterable[Limits]) -> None:
        """Refuse (:class:`NotAdmitted`) workspace ``name`` with ``limits`` when it does
        not fit beside the ``committed`` ones."""
        others = list(committed)
        memory = sum(c.memory for c in others)
        cpus = sum(c.cpus for c in others)
        count = f"{len(others)} workspace{'' if len(others) == 1 else 's'}"
        if memory + limits.memory > self.capacity.memory:
            raise NotAdmitted(
                f"not enough memory for workspace {name!r}: it asks {format_size(limits.memory)}, "
                f"and {format_size(memory)} of this node's {format_size(self.capacity.memory)} "
                f"is committed to {count}",
                hint="stop a workspace, ask for less (--memory), or raise LOFT_NODE_MEMORY",
            )
        if cpus + limits.cpus > self.capacity.cpus + 1e-9:
            raise NotAdmitted(
                f"not enough CPU for workspace {name!r}: it asks {limits.cpus:g}, and "
                f"{cpus:g} of this node's {self.capacity.cpus:g} CPUs are committed to {count}",
                hint="stop a workspace, ask for less (--cpus), or raise LOFT_NODE_CPUS",
            )
        if self.reserve.low(fresh=True):
            st = os.statvfs(self.reserve.data_dir)
            raise NotAdmitted(
                f"the node's data disk is down to {format_size(st.f_bavail * st.f_frsize)} "
                f"free, under its reserve: workspace {name!r} is not admitted",
                hint="free space on the data disk (LOFT_DISK_RESERVE sets the reserve)",
            )

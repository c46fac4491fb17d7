"""Which cgroup hierarchy the host has, and where a workspace's cgroup lives in it.

Limits are never written here: they go into ``config.json`` (``linux.resources``) and runc
writes them for v1 or v2 as it finds the host. This module only answers where runc put
them, so stop can check nothing is left and tests can read what the kernel enforces.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path

__all__ = ["CGROUP_ROOT", "CgroupMode", "cgroup_dirs", "cgroup_mode"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices", "blkio",
                   "cpuset", "systemd")  # fmt: skip


class CgroupMode(enum.Enum):
    """``v1`` (controllers in their own hierarchies; ``hybrid`` when a v2 hierarchy is
    mounted beside them without controllers) or ``v2`` (one unified hierarchy)."""

    V1 = "v1"
    HYBRID = "hybrid"
    V2 = "v2"


def _is_cgroup2(path: Path) -> bool:
    # statfs(2)'s f_type is not in os.statvfs; /proc/self/mounts says the same.
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[1] == str(path) and fields[2] == "cgroup2":
            return True
    return False


def cgroup_mode(root: Path = CGROUP_ROOT) -> CgroupMode:
    """The host's cgroup mode."""
    if _is_cgroup2(root):
        return CgroupMode.V2
    return CgroupMode.HYBRID if _is_cgroup2(root / "unified") else CgroupMode.V1


def cgroup_dirs(cgroup: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """The directories of ``cgroup`` (``/loft/<id>``) that exist: one for v2, one per
    controller hierarchy for v1."""
    rel = cgroup.lstrip("/")
    if cgroup_mode(root) is CgroupMode.V2:
        candidates = [root / rel]
    else:
        candidates = [root / c / rel for c in _V1_CONTROLLERS]
    return [d for d in candidates if os.path.isdir(d)]

"""A workspace's own 65,536-id host range, picked like ``systemd-nspawn --private-users=pick``.

Each workspace maps its ids 0..65535 onto a range of host ids no other workspace, no host
user or group and no other sandbox of loft's uses, so root inside is an unprivileged uid
outside that owns nothing but the workspace's own files, and two workspaces can never
touch each other's processes or files through a shared uid. Ranges are 65,536-aligned and
taken from systemd's container range (``0x00080000``..``0x6FFFFFFF``, which systemd
documents as free for this); the ``loft env run`` range (``0x70000000``..``0x7000FFFF``)
lies above it and is skipped explicitly all the same. The catalog records which range
each workspace holds (it is the only allocator); this function is pure apart from reading
the host's ``passwd`` and ``group``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from loft.isolation.userns import ENV_RUN_IDS, IdRange, host_id_entries
from loft.runtime.errors import WorkspaceError

__all__ = ["FIRST_HOST_ID", "LAST_HOST_ID", "RANGE_SIZE", "allocate_range", "host_ids"]

RANGE_SIZE = 65536
#: systemd's container id range (docs "UIDs and GIDs": 524288..1879048191).
FIRST_HOST_ID = 0x0008_0000
LAST_HOST_ID = 0x6FFF_FFFF


def host_ids(etc: Path = Path("/etc")) -> set[int]:
    """The uids and gids that this host's ``passwd`` and ``group`` give to someone."""
    return {i for _, _, i in host_id_entries(etc)}


def allocate_range(used: Iterable[IdRange], etc: Path = Path("/etc")) -> IdRange:
    """The lowest free 65,536-aligned range: overlapping none of ``used`` (every range the
    catalog has handed out), nor :data:`~loft.isolation.userns.ENV_RUN_IDS`, and holding
    no id of a host user or group. Refuses when the container range is exhausted."""
    blocked: set[int] = set()  # indices of aligned blocks from FIRST_HOST_ID

    def block(first: int, last: int) -> None:
        lo, hi = max(first, FIRST_HOST_ID), min(last, LAST_HOST_ID)
        if lo <= hi:
            blocked.update(range((lo - FIRST_HOST_ID) // RANGE_SIZE,
                                 (hi - FIRST_HOST_ID) // RANGE_SIZE + 1))  # fmt: skip

    for ids in (*used, ENV_RUN_IDS):
        block(ids.host, ids.host + ids.size - 1)
    for i in host_ids(etc):
        block(i, i)
    for index in range((LAST_HOST_ID + 1 - FIRST_HOST_ID) // RANGE_SIZE):
        if index not in blocked:
            return IdRange(FIRST_HOST_ID + index * RANGE_SIZE, RANGE_SIZE)
    raise WorkspaceError(
        "no free host id range is left for a workspace",
        hint="remove workspaces, or host users whose ids lie in 524288..1879048191",
    )

"""Per-user quotas: what a user's workspaces may add up to (count, memory, CPUs, disk).

Checked where a workspace record is made or grown (create, fork, a limits change), in
the same write transaction as the change, after locking the owner's row: two requests of
one user cannot both pass on the same headroom.
"""

from __future__ import annotations

from loft.api import Quotas, Usage
from loft.control.errors import QuotaExceeded
from loft.units import format_size

__all__ = ["check_quotas"]


def check_quotas(quotas: Quotas, usage: Usage, after: Usage) -> None:
    """Refuse a change that takes ``usage`` to ``after`` when ``after`` goes over a quota
    and grows past ``usage`` (shrinking is always allowed, even while over)."""
    checks: list[tuple[str, float, float, float, str]] = [
        ("workspaces", after.workspaces, usage.workspaces, quotas.workspaces, "workspaces"),
        ("memory", after.memory, usage.memory, quotas.memory, "bytes"),
        ("cpus", after.cpus, usage.cpus, quotas.cpus, "CPUs"),
        ("disk", after.disk, usage.disk, quotas.disk, "bytes"),
    ]
    for what, new, old, limit, unit in checks:
        if new > limit + 1e-9 and new > old:
            shown = (
                (format_size(int(new)), format_size(int(limit)))
                if unit == "bytes"
                else (f"{new:g}", f"{limit:g}")
            )
            raise QuotaExceeded(
                f"quota exceeded: {what} would be {shown[0]}, over your {shown[1]}",
                hint="delete or shrink a workspace, or ask an admin to raise the quota",
            )

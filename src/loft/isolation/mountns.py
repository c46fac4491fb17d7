"""A private mount namespace in which one host directory is reachable by any uid.

A sandbox whose uid is unprivileged on the host cannot look paths up under a private
(0700) directory of root's, yet bubblewrap resolves the sources of its binds as that uid.
:func:`readonly_bind_in_new_namespace` gives bubblewrap's own process, just before it
starts, a mount namespace of its own in which such a directory is bound read-only at a
path every uid can traverse; the host's namespace is left as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from loft import libc

__all__ = ["readonly_bind_in_new_namespace"]


def readonly_bind_in_new_namespace(source: Path, target: str) -> Callable[[], None]:
    """A ``preexec_fn`` for :func:`subprocess.run`: in the child, unshare a mount
    namespace that receives the host's mount events but sends none back, and bind
    ``source`` at ``target`` (an existing directory) read-only, nosuid and nodev."""
    src, dst = os.fsencode(source), os.fsencode(target)
    readonly = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV
    steps = (
        (None, b"/", libc.MS_REC | libc.MS_SLAVE),
        (src, dst, libc.MS_BIND),
        (None, dst, libc.MS_REMOUNT | libc.MS_BIND | readonly),
    )

    def enter() -> None:
        # Runs between fork and exec: system calls only.
        libc.unshare(libc.CLONE_NEWNS, "unshare(CLONE_NEWNS)")
        for what, where, flags in steps:
            libc.mount(what, where, None, flags, what=f"mount {what!r} on {where!r}")

    return enter

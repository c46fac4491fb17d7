"""A private mount namespace in which one host directory is reachable by any uid.

A sandbox whose uid is unprivileged on the host cannot look paths up under a private
(0700) directory of root's, yet bubblewrap resolves the sources of its binds as that uid.
:func:`readonly_bind_in_new_namespace` gives bubblewrap's own process, just before it
starts, a mount namespace of its own in which such a directory is bound read-only at a
path every uid can traverse; the host's namespace is left as it was.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["readonly_bind_in_new_namespace"]

# linux/sched.h, linux/mount.h
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 0x1, 0x2, 0x4
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_SLAVE = 0x20, 0x1000, 0x4000, 0x80000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]  # fmt: skip


def readonly_bind_in_new_namespace(source: Path, target: str) -> Callable[[], None]:
    """A ``preexec_fn`` for :func:`subprocess.run`: in the child, unshare a mount
    namespace that receives the host's mount events but sends none back, and bind
    ``source`` at ``target`` (an existing directory) read-only, nosuid and nodev."""
    src, dst = os.fsencode(source), os.fsencode(target)
    steps = (
        (None, b"/", _MS_REC | _MS_SLAVE),
        (src, dst, _MS_BIND),
        (None, dst, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV),
    )

    def enter() -> None:
        # Runs between fork and exec: system calls only.
        if _libc.unshare(_CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        for what, where, flags in steps:
            if _libc.mount(what, where, None, flags, None) != 0:
                raise OSError(ctypes.get_errno(), f"mount {what!r} on {where!r}")

    return enter

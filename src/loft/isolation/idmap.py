"""Detached mounts made with the new mount API: idmapped clones and read-only binds.

A workspace's filesystem keeps its own ids on disk (0..65535), whichever node mounts it,
so a create from a template or a move needs no chown. A container whose user namespace
maps those ids onto a host range must nevertheless see them as its own:
:func:`idmapped_clone` clones the mount (``open_tree(OPEN_TREE_CLONE)``) and marks the
clone idmapped (``mount_setattr(MOUNT_ATTR_IDMAP)``) with the maps of a user namespace
(:func:`loft.isolation.userns.user_namespace`), so on-disk id *k* reads and writes as host
id ``range.host + k`` through it, while the filesystem itself keeps *k*. The clone is
detached: it exists only as a file descriptor until :func:`attach` puts it somewhere
(``move_mount``), and it is gone when the descriptor is closed unattached, so an error
half way leaves no mount behind.

util-linux 2.38 has no ``X-mount.idmap`` and Python no wrappers for these calls, so they
are made through ``syscall(2)`` with the numbers of :mod:`loft.isolation._syscalls`.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from loft import libc
from loft.isolation.seccomp import native_arch

__all__ = [
    "MOUNT_ATTR_NODEV",
    "MOUNT_ATTR_NOSUID",
    "MOUNT_ATTR_RDONLY",
    "attach",
    "detached_bind",
    "idmapped_clone",
]

# linux/mount.h, linux/fcntl.h
_OPEN_TREE_CLONE = 1
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
_MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64)
                for name in ("attr_set", "attr_clr", "propagation", "userns_fd")]  # fmt: skip


def _syscall(name: str, *args: object) -> int:
    return libc.syscall(name, native_arch().syscalls[name], *args)


def _clone(source: Path | int, recursive: bool) -> int:
    flags = _OPEN_TREE_CLONE | os.O_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    if isinstance(source, int):  # a directory already opened (O_PATH): no path to resolve
        return _syscall("open_tree", ctypes.c_int(source), b"",
                        ctypes.c_uint(flags | _AT_EMPTY_PATH))  # fmt: skip
    return _syscall("open_tree", ctypes.c_int(_AT_FDCWD), os.fsencode(source),
                    ctypes.c_uint(flags))  # fmt: skip


def _set_attrs(tree: int, attrs: int, userns_fd: int = 0, recursive: bool = False) -> None:
    attr = _MountAttr(attr_set=attrs, userns_fd=userns_fd)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    _syscall("mount_setattr", ctypes.c_int(tree), b"", ctypes.c_uint(flags),
             ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))  # fmt: skip


def idmapped_clone(mount_root: Path | int, userns_fd: int, attrs: int = 0) -> int:
    """A detached clone of the mount at ``mount_root`` (its top mount only; a directory
    below a mount's root, given as an open descriptor, clones just that subtree) whose ids
    are mapped through the user namespace ``userns_fd``, with the extra ``attrs``
    (``MOUNT_ATTR_*``); returns its file descriptor (close-on-exec).

    The kernel refuses (EINVAL) a filesystem without idmapped-mount support, and a mount
    that is already idmapped or attached elsewhere than this process's namespace."""
    tree = _clone(mount_root, recursive=False)
    try:
        _set_attrs(tree, _MOUNT_ATTR_IDMAP | attrs, userns_fd)
    except BaseException:
        os.close(tree)
        raise
    return tree


def detached_bind(source: Path, attrs: int = MOUNT_ATTR_RDONLY) -> int:
    """A detached recursive bind of ``source`` with ``attrs`` on every mount of it
    (default read-only); returns its file descriptor (close-on-exec)."""
    tree = _clone(source, recursive=True)
    try:
        _set_attrs(tree, attrs, recursive=True)
    except BaseException:
        os.close(tree)
        raise
    return tree


def attach(tree: int, target: Path) -> None:
    """Attach the detached mount ``tree`` at the directory ``target`` of this process's
    mount namespace (which may be another one than the tree was made in)."""
    _syscall("move_mount", ctypes.c_int(tree), b"", ctypes.c_int(_AT_FDCWD),
             os.fsencode(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH))  # fmt: skip

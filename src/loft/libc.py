"""The C library calls the ``os`` module lacks, each bound once with its argument types.

A failed call raises :class:`OSError` with its errno, the message naming what was asked
(``what``) and the kernel's reason. Every binding is one foreign call and takes no lock,
so the sandbox runtimes may call them between fork and exec.
"""

from __future__ import annotations

import ctypes
import os
from typing import NoReturn

__all__ = [
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "FALLOC_FL_KEEP_SIZE",
    "FALLOC_FL_PUNCH_HOLE",
    "FALLOC_FL_ZERO_RANGE",
    "MS_BIND",
    "MS_NODEV",
    "MS_NOSUID",
    "MS_PRIVATE",
    "MS_RDONLY",
    "MS_REC",
    "MS_REMOUNT",
    "MS_SLAVE",
    "SYNC_FILE_RANGE_WRITE",
    "fallocate",
    "mount",
    "setns",
    "sync_file_range",
    "syncfs",
    "syncfs_path",
    "syscall",
    "unshare",
]

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 0x1, 0x2, 0x4, 0x20
MS_BIND, MS_REC, MS_PRIVATE, MS_SLAVE = 0x1000, 0x4000, 0x40000, 0x80000
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
SYNC_FILE_RANGE_WRITE = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _bind(name: str, restype: type, *argtypes: type) -> ctypes._FuncPointer:
    fn: ctypes._FuncPointer = getattr(_libc, name)
    fn.argtypes = list(argtypes)
    fn.restype = restype
    return fn


_c_int, _c_int64, _c_uint, _c_char_p = ctypes.c_int, ctypes.c_int64, ctypes.c_uint, ctypes.c_char_p
_fallocate = _bind("fallocate", _c_int, _c_int, _c_int, _c_int64, _c_int64)
_sync_file_range = _bind("sync_file_range", _c_int, _c_int, _c_int64, _c_int64, _c_uint)
_syncfs = _bind("syncfs", _c_int, _c_int)
_unshare = _bind("unshare", _c_int, _c_int)
_setns = _bind("setns", _c_int, _c_int, _c_int)
_mount = _bind("mount", _c_int, _c_char_p, _c_char_p, _c_char_p, ctypes.c_ulong, _c_char_p)
# Arguments of a raw system call are typed by its caller (ctypes.c_* values).
_syscall: ctypes._FuncPointer = _libc.syscall
_syscall.restype = ctypes.c_long


def _fail(what: str) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)``: with ``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`` the range
    reads as zeros and costs no disk."""
    if _fallocate(fd, mode, offset, length) != 0:
        _fail("fallocate")


def sync_file_range(fd: int, offset: int, length: int, flags: int) -> None:
    """``sync_file_range(2)``: with ``SYNC_FILE_RANGE_WRITE`` it queues the writeback of
    the range's dirty pages and waits for none of it."""
    if _sync_file_range(fd, offset, length, flags) != 0:
        _fail("sync_file_range")


def syncfs(fd: int, what: str = "syncfs") -> None:
    """``syncfs(2)``: write back the whole filesystem holding ``fd``."""
    if _syncfs(fd) != 0:
        _fail(what)


def syncfs_path(path: str | os.PathLike[str]) -> None:
    """``syncfs(2)`` of the filesystem holding ``path`` (a file or a directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syncfs(fd, f"syncfs {os.fspath(path)}")
    finally:
        os.close(fd)


def unshare(flags: int, what: str = "unshare") -> None:
    """``unshare(2)``: new namespaces (``CLONE_*``) for the calling thread."""
    if _unshare(flags) != 0:
        _fail(what)


def setns(fd: int, nstype: int, what: str = "setns") -> None:
    """``setns(2)``: join the namespace of descriptor ``fd``."""
    if _setns(fd, nstype) != 0:
        _fail(what)


def mount(
    source: bytes | None,
    target: bytes,
    fstype: bytes | None,
    flags: int,
    data: bytes | None = None,
    what: str = "mount",
) -> None:
    """``mount(2)``; with no source and ``MS_REC | MS_SLAVE`` (or ``MS_PRIVATE``) it
    changes the propagation of every mount under ``target``."""
    if _mount(source, target, fstype, flags, data) != 0:
        _fail(what)


def syscall(name: str, nr: int, *args: object) -> int:
    """A system call libc has no wrapper for, by number; ``args`` typed by the caller."""
    ret = int(_syscall(ctypes.c_long(nr), *args))
    if ret < 0:
        _fail(name)
    return ret

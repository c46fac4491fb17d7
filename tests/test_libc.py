"""loft.libc: each binding does its call, and a failed call is an OSError naming it.

Namespaces and mounts (unshare, setns, mount) are exercised where they are used: the
sandbox runtimes' and isolation's tests."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from loft import libc


def _file(tmp_path: Path, size: int) -> int:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, os.urandom(size), 0)
    os.fsync(fd)
    return fd


def test_fallocate_punches_a_hole_that_reads_as_zeros(tmp_path: Path) -> None:
    fd = _file(tmp_path, 1 << 20)
    try:
        before = os.fstat(fd).st_blocks
        libc.fallocate(fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, 0, 512 << 10)
        assert os.pread(fd, 512 << 10, 0) == bytes(512 << 10)
        assert os.fstat(fd).st_size == 1 << 20
        assert os.fstat(fd).st_blocks < before
    finally:
        os.close(fd)


def test_sync_file_range_and_syncfs_write_a_file_back(tmp_path: Path) -> None:
    fd = _file(tmp_path, 64 << 10)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        libc.sync_file_range(fd, 0, 4096, libc.SYNC_FILE_RANGE_WRITE)
        libc.syncfs(fd)
    finally:
        os.close(fd)
    libc.syncfs_path(tmp_path)  # a directory
    with pytest.raises(FileNotFoundError):
        libc.syncfs_path(tmp_path / "missing")


def test_a_failed_call_is_an_oserror_with_its_errno_and_name(tmp_path: Path) -> None:
    fd = _file(tmp_path, 4096)
    os.close(fd)  # a closed descriptor: every call fails with EBADF
    calls = [
        ("fallocate", lambda: libc.fallocate(fd, libc.FALLOC_FL_PUNCH_HOLE, 0, 4096)),
        ("sync_file_range", lambda: libc.sync_file_range(fd, 0, 4096, 2)),
        ("syncfs of the scratch", lambda: libc.syncfs(fd, "syncfs of the scratch")),
        ("setns", lambda: libc.setns(fd, libc.CLONE_NEWNET)),
    ]
    for name, call in calls:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF, name
        assert str(info.value.strerror).startswith(f"{name}: "), info.value


def test_syscall_returns_the_kernels_answer_or_raises() -> None:
    nr_getpid = {"x86_64": 39, "aarch64": 172}.get(os.uname().machine)
    if nr_getpid is None:
        pytest.skip("no system call number table for this machine here")
    assert libc.syscall("getpid", nr_getpid) == os.getpid()
    with pytest.raises(OSError) as info:
        libc.syscall("no such call", 100_000)
    assert info.value.errno == errno.ENOSYS
    assert "no such call" in str(info.value)

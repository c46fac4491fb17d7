"""FileBackend on a real sparse file: block status, zeroing, trimming, page-cache reads."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from loft.nbd.backends.base import BackendError
from loft.nbd.backends.file import FileBackend
from loft.nbd.protocol import Errno
from loft.nbd.server import errno_for

MIB = 1 << 20


@pytest.fixture
def backend(tmp_path: Path) -> FileBackend:
    img = tmp_path / "d.img"
    with open(img, "wb") as f:
        f.truncate(8 * MIB)
    return FileBackend(img)


def test_extents_report_holes_and_data(backend: FileBackend) -> None:
    assert backend.extents(0, 8 * MIB) == [(8 * MIB, 3)]
    backend.pwrite(2 * MIB, b"x" * MIB)
    ext = backend.extents(0, 8 * MIB)
    assert sum(n for n, _ in ext) == 8 * MIB
    assert (MIB, 0) in ext or any(f == 0 and n >= MIB for n, f in ext)
    assert ext[0] == (2 * MIB, 3)
    assert backend.allocation_depth(2 * MIB, MIB) == [(MIB, 1)]


def test_zero_trim_and_reads(backend: FileBackend) -> None:
    backend.pwrite(0, b"\xff" * (4 * MIB))
    backend.zero(MIB, MIB, may_trim=False)
    assert backend.pread(MIB, MIB) == bytes(MIB)
    backend.zero(2 * MIB, MIB, may_trim=True, fast_only=True)
    assert backend.pread(2 * MIB, MIB) == bytes(MIB)
    assert backend.extents(2 * MIB, MIB)[0][1] == 3  # punched: a hole now
    backend.trim(3 * MIB, 4096)
    assert backend.pread(3 * MIB, 4096) == bytes(4096)
    assert backend.pread(0, 10) == b"\xff" * 10
    data = backend.pread_nowait(0, 4096)  # just written: in the page cache
    assert data is None or bytes(data) == b"\xff" * 4096
    backend.flush()
    backend.cache(0, MIB)


def test_unaligned_zero_and_past_end_read(backend: FileBackend) -> None:
    backend.pwrite(0, b"a" * 10000)
    backend.zero(100, 5000)
    got = backend.pread(0, 10000)
    assert got[:100] == b"a" * 100 and got[100:5100] == bytes(5000) and got[5100:] == b"a" * 4900


def test_readonly_refuses_writes(tmp_path: Path) -> None:
    img = tmp_path / "ro.img"
    img.write_bytes(bytes(4096))
    ro = FileBackend(img, readonly=True)
    assert not ro.can_write() and not ro.can_trim() and not ro.can_fast_zero()
    with pytest.raises(OSError):
        ro.pwrite(0, b"x")


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(BackendError):
        FileBackend(tmp_path, readonly=True)


@pytest.mark.parametrize(
    ("exc", "want"),
    [
        (OSError(errno.EIO, "x"), Errno.EIO),
        (OSError(errno.EBADMSG, "x"), Errno.EIO),
        (OSError(errno.ENOSPC, "x"), Errno.ENOSPC),
        (OSError(errno.EROFS, "x"), Errno.EPERM),
        (OSError(errno.EOPNOTSUPP, "x"), Errno.ENOTSUP),
        (MemoryError(), Errno.ENOMEM),
        (ValueError("bug"), Errno.EIO),
        (BackendError("x", Errno.EOVERFLOW), Errno.EOVERFLOW),
        (BackendError("x", Errno.ESHUTDOWN), Errno.ESHUTDOWN),
        (BackendError("x"), Errno.EIO),
    ],
)
def test_errno_mapping_knows_only_errno(exc: BaseException, want: Errno) -> None:
    assert errno_for(exc) == want
    assert int(errno_for(exc)) in {int(e) for e in Errno}


def test_file_descriptor_shared(backend: FileBackend) -> None:
    assert backend.can_multi_conn()
    fd = backend._fd
    backend.close()
    with pytest.raises(OSError):
        os.fstat(fd)

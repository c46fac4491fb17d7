"""Tar archives built in memory for the unpack tests."""

from __future__ import annotations

import io
import tarfile


def tar_bytes(
    members: list[tuple[tarfile.TarInfo, bytes]],
    mode: str = "w",
    fmt: int = tarfile.DEFAULT_FORMAT,
) -> bytes:
    """An archive of ``members`` ((info, data); data only counts for regular files)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:  # type: ignore[call-overload]
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def member(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = ""
) -> tarfile.TarInfo:
    """A member header: ``kind`` is a tarfile type (REGTYPE, SYMTYPE, ...)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info

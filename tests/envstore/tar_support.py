"""Tar, ar and .deb archives built in memory for the unpack and build tests."""

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


def ar(files: list[tuple[str, bytes]]) -> bytes:
    """A minimal ar archive, the container format of a .deb."""
    out = bytearray(b"!<arch>\n")
    for name, data in files:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def deb_bytes(
    data: list[tuple[tarfile.TarInfo, bytes]], name: str = "evil", postinst: str | None = None
) -> bytes:
    """A .deb of ``data`` members (control: the package's name, maybe a postinst)."""
    control = [(member("./control"), f"Package: {name}\nVersion: 1\nArchitecture: all\n".encode())]
    if postinst is not None:
        control.append((member("./postinst", mode=0o755), postinst.encode()))
    return ar([("debian-binary", b"2.0\n"), ("control.tar", tar_bytes(control)),
               ("data.tar", tar_bytes(data))])  # fmt: skip

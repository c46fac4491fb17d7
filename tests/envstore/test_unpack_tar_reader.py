"""The unpack helper's own tar reader reads what Python's tarfile reads, and refuses junk."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tar_support import member, tar_bytes

from loft.envstore._unpack_helper import Refused, read_tar

pytestmark = pytest.mark.timeout(60)

LONG = "usr/share/doc/" + "a-rather-long-directory-name/" * 5 + "file-with-a-long-name.txt"


def by_tarfile(raw: bytes) -> list[tuple[str, str, bytes, int, bytes]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r|") as tf:
        for m in tf:
            f = tf.extractfile(m) if m.isreg() else None
            out.append((m.name, m.linkname, m.type, m.mode, f.read() if f else b""))
    return out


def by_helper(raw: bytes) -> list[tuple[str, str, bytes, int, bytes]]:
    return [(m.name, m.linkname, m.type, m.mode, d.read()) for m, d in read_tar(io.BytesIO(raw))]


SAMPLE = [
    (member("./usr/"), b""),
    (member("./usr/bin", tarfile.DIRTYPE, 0o755), b""),
    (member("./usr/bin/tool", mode=0o4755), b"#!/bin/sh\necho tool\n"),
    (member(f"./{LONG}"), b"long name\n" * 100),
    (member("./usr/bin/link", tarfile.SYMTYPE, link="../" + LONG), b""),
    (member("./usr/bin/hard", tarfile.LNKTYPE, link="./usr/bin/tool"), b""),
    (member("./usr/share/empty"), b""),
    (member("./usr/share/caf\u00e9-\u00fcnic\u00f8de"), b"x" * 513),
]


@pytest.mark.parametrize(
    "fmt",
    [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT],
    ids=["gnu", "pax", "ustar"],
)
def test_same_members_as_tarfile(fmt: int) -> None:
    members = (
        SAMPLE
        if fmt != tarfile.USTAR_FORMAT
        else [(m, d) for m, d in SAMPLE if len(m.name) < 200 and len(m.linkname) < 100]
    )
    raw = tar_bytes(fmt=fmt, members=members)
    assert by_helper(raw) == by_tarfile(raw)
    assert len(by_helper(raw)) == len(members)


@given(st.lists(st.tuples(st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF,
                                                 exclude_characters="/"), min_size=1, max_size=120),
                          st.binary(max_size=1500)), max_size=6))  # fmt: skip
def test_random_files_read_alike(files: list[tuple[str, bytes]]) -> None:
    members = [(member(f"d/{i}/{name}"), data) for i, (name, data) in enumerate(files)]
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        raw = tar_bytes(fmt=fmt, members=members)
        assert by_helper(raw) == by_tarfile(raw)


def test_unread_data_is_skipped() -> None:
    raw = tar_bytes(fmt=tarfile.GNU_FORMAT, members=SAMPLE)
    assert [m.name for m, _ in read_tar(io.BytesIO(raw))] == [m for m, *_ in by_tarfile(raw)]


@pytest.mark.parametrize(
    ("mangle", "needle"),
    [
        (lambda raw: raw[:148] + b"0000000\0" + raw[156:], "bad checksum"),
        (lambda raw: raw[:700], "truncated"),
        (lambda raw: rechecksum(raw[:124] + b"9" * 11 + b"\0" + raw[136:]), "bad number"),
    ],
)
def test_corrupt_archives_refused(mangle: object, needle: str) -> None:
    raw = tar_bytes(fmt=tarfile.GNU_FORMAT, members=[(member("f"), b"data" * 300)])
    with pytest.raises(Refused, match=needle):
        by_helper(mangle(raw))  # type: ignore[operator]


def rechecksum(raw: bytes) -> bytes:
    """The first header's checksum recomputed (so only the intended damage remains)."""
    chk = sum(raw[:148]) + sum(raw[156:512]) + 256
    return raw[:148] + b"%06o\0 " % chk + raw[156:]


def test_special_files_and_sparse_refused_or_reported() -> None:
    raw = tar_bytes(fmt=tarfile.GNU_FORMAT, members=[(member("dev", tarfile.CHRTYPE), b"")])
    ((m, _),) = list(read_tar(io.BytesIO(raw)))
    assert not (m.isreg() or m.isdir() or m.issym() or m.islnk())  # the extractor refuses it
    sparse = rechecksum(raw[:156] + b"S" + raw[157:])
    with pytest.raises(Refused, match="unsupported tar member type"):
        by_helper(sparse)

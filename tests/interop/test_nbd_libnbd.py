"""libnbd's tools (nbdinfo, nbdcopy, nbdsh) against loft's server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import NBDServerProcess, make_image, nbdsh, run

SIZE = 32 << 20
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NBDServerProcess]:
    """One server for the module (starting one costs seconds): ``disk`` for the tools
    that inspect and poke, ``copy1``/``copy4`` for nbdcopy, ``other`` for LIST."""
    tmp = tmp_path_factory.mktemp("libnbd")
    images = {
        "disk": make_image(tmp / "disk.img", SIZE, b"libnbd"),
        "other": make_image(tmp / "other.img", SIZE // 2),
        "copy1": make_image(tmp / "copy1.img", SIZE),
        "copy4": make_image(tmp / "copy4.img", SIZE),
    }
    with NBDServerProcess(tmp, images) as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.log.read_text()


@pytest.fixture(scope="module")
def ro_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NBDServerProcess]:
    tmp = tmp_path_factory.mktemp("libnbd-ro")
    img = make_image(tmp / "snap.img", SIZE, b"snap")
    with NBDServerProcess(tmp, {"disk@snap": img}, readonly=True) as s:
        yield s


def test_nbdinfo_json_and_list(server: NBDServerProcess) -> None:
    info = json.loads(run(["nbdinfo", "--json", server.uri()]).stdout)
    assert info["protocol"] == "newstyle-fixed" and info["TLS"] is False
    [export] = info["exports"]
    assert export["export-name"] == "disk" and export["export-size"] == SIZE
    assert export["block_size_minimum"] == 1 and export["block_size_maximum"] == 32 << 20
    assert "base:allocation" in export["contexts"]
    assert export["description"]
    listed = json.loads(run(["nbdinfo", "--json", "--list", server.uri()]).stdout)
    sizes = {e["export-name"]: e["export-size"] for e in listed["exports"]}
    assert sizes == {"disk": SIZE, "other": SIZE // 2, "copy1": SIZE, "copy4": SIZE}


CAN_TRUE = [
    "connect",
    "read",
    "write",
    "flush",
    "fua",
    "trim",
    "zero",
    "fast-zero",
    "df",
    "multi-conn",
    "cache",
    "structured-reply",
]


@pytest.mark.parametrize("flag", CAN_TRUE)
def test_nbdinfo_can(server: NBDServerProcess, flag: str) -> None:
    assert run(["nbdinfo", "--can", flag, server.uri()], check=False).returncode == 0


@pytest.mark.parametrize(("flag", "want"), [("read-only", 2), ("rotational", 2), ("tls", 2)])
def test_nbdinfo_is(server: NBDServerProcess, flag: str, want: int) -> None:
    assert run(["nbdinfo", "--is", flag, server.uri()], check=False).returncode == want


def test_nbdinfo_read_only_export(ro_server: NBDServerProcess) -> None:
    u = ro_server.uri("disk@snap")
    assert run(["nbdinfo", "--is", "read-only", u], check=False).returncode == 0
    for flag in ("write", "trim", "zero", "fast-zero"):
        assert run(["nbdinfo", "--can", flag, u], check=False).returncode == 2, flag
    out = nbdsh(
        u,
        "import errno\n"
        "try:\n"
        "    h.pwrite(b'x' * 512, 0)\n"
        "except nbd.Error as e:\n"
        "    print('errno', e.errnum)\n",
    )
    assert out.strip() == f"errno {1}"  # EPERM


def test_nbdinfo_map(server: NBDServerProcess) -> None:
    out = run(["nbdinfo", "--map", "--json", server.uri()]).stdout
    extents = json.loads(out)
    assert sum(e["length"] for e in extents) == SIZE
    assert extents[0]["offset"] == 0 and extents[0]["type"] == 0  # data at the start
    assert any(e["type"] == 3 for e in extents)  # hole,zero elsewhere
    totals = run(["nbdinfo", "--map", "--totals", server.uri()]).stdout
    assert "data" in totals and "zero" in totals


@pytest.mark.parametrize("connections", [1, 4])
def test_nbdcopy_both_directions(
    server: NBDServerProcess, tmp_path: Path, connections: int
) -> None:
    src = tmp_path / "src.img"
    src.write_bytes(os.urandom(SIZE // 4) + bytes(SIZE // 2) + os.urandom(SIZE // 4))
    conns = f"--connections={connections}"
    uri = server.uri(f"copy{connections}")
    run(["nbdcopy", conns, "--flush", str(src), uri])
    out = tmp_path / "out.img"
    run(["nbdcopy", conns, uri, str(out)])
    assert out.read_bytes() == src.read_bytes()
    # Without --flush: the server flushes on a clean disconnect; data is there anyway.
    src2 = tmp_path / "src2.img"
    src2.write_bytes(os.urandom(SIZE))
    run(["nbdcopy", conns, str(src2), uri])
    run(["nbdcopy", conns, uri, str(out)])
    assert out.read_bytes() == src2.read_bytes()


def test_nbdsh_block_status_zero_trim_cache(server: NBDServerProcess) -> None:
    script = r"""
import nbd
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(URI)
h.pwrite(b"\x55" * 65536, 1 << 20)
h.zero(65536, 2 << 20, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(65536, 2 << 20) == bytes(65536)
h.pwrite(b"\x66" * 65536, 4 << 20)
h.trim(65536, 4 << 20)
h.cache(1 << 20, 8 << 20)
h.zero(8 << 20, 1 << 20, nbd.CMD_FLAG_FAST_ZERO)
h.flush()
h.pwrite(b"\x77" * 4096, 12 << 20, nbd.CMD_FLAG_FUA)
seen = []
def cb(metacontext, offset, entries, err):
    seen.append((metacontext, offset, list(entries)))
h.block_status(16 << 20, 0, cb)
ctx, off, entries = seen[0]
assert ctx == "base:allocation" and off == 0
lengths = entries[0::2]
assert sum(lengths) <= 16 << 20 and all(n > 0 for n in lengths)
assert entries[1] == 0, entries            # data at 0
assert any(f == 3 for f in entries[1::2])  # hole+zero after the trim
one = []
h.block_status(16 << 20, 0, lambda m, o, e, err: one.append(list(e)), nbd.CMD_FLAG_REQ_ONE)
assert len(one[0]) == 2, one
print("ok")
"""
    script = script.replace("URI", repr(server.uri()))
    assert nbdsh(server.uri(), script).strip() == "ok"


def test_nbdsh_multi_conn_write_flush_read(server: NBDServerProcess) -> None:
    u = server.uri()
    script = f"""
import nbd
assert h.can_multi_conn()
h2 = nbd.NBD()
h2.connect_uri({u!r})
assert h2.can_multi_conn()
data = bytes(range(256)) * 256
h.pwrite(data, 3 << 20)
h2.flush()
assert h2.pread(len(data), 3 << 20) == data
h2.pwrite(b"z" * 4096, 5 << 20)
h.flush()
assert h.pread(4096, 5 << 20) == b"z" * 4096
h2.shutdown()
print("ok")
"""
    assert nbdsh(u, script).strip() == "ok"


def test_nbdsh_errors_are_spec_errnos(server: NBDServerProcess) -> None:
    script = f"""
import nbd, errno
h.set_strict_mode(0)
def code(f):
    try:
        f()
    except nbd.Error as e:
        return e.errnum
    return 0
print(code(lambda: h.pread(16, {SIZE} - 8)))
print(code(lambda: h.pwrite(b"x" * 16, {SIZE} - 8)))
print(code(lambda: h.pread(0, 0)))
print(code(lambda: h.pread(4096, 0)))
"""
    out = nbdsh(server.uri(), script).split()
    assert out == ["22", "28", "22", "0"], out

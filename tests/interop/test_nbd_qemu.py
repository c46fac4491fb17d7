"""QEMU's NBD client (qemu-io, qemu-img, qemu-nbd --list) against loft's server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import NBDServerProcess, make_image, run

SIZE = 64 << 20
pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NBDServerProcess]:
    img = make_image(tmp_path / "disk.img", SIZE, b"loft")
    with NBDServerProcess(tmp_path, {"disk": img}) as s:
        yield s
    assert s.proc is not None and s.proc.returncode == 0, s.log.read_text()


@pytest.fixture
def ro_server(tmp_path: Path) -> Iterator[NBDServerProcess]:
    (tmp_path / "ro").mkdir()
    img = make_image(tmp_path / "snap.img", SIZE, b"snap")
    with NBDServerProcess(tmp_path / "ro", {"snap": img}, readonly=True) as s:
        yield s


def qemu_io(uri: str, *cmds: str, writeback: bool = True) -> str:
    args = ["qemu-io", "-f", "raw"]
    if writeback:
        args += ["-t", "writeback"]
    for c in cmds:
        args += ["-c", c]
    out = run([*args, uri]).stdout
    assert "failed" not in out.lower() and "mismatch" not in out.lower(), out
    return out


def test_qemu_io_patterns_zero_discard_flush(server: NBDServerProcess) -> None:
    u = server.uri()
    qemu_io(
        u,
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -z 4M 1M",
        "read -P 0 4M 1M",
        "write -P 0x11 8M 1M",
        "discard 8M 1M",
        "flush",
        "write -P 0xcd 12345 54321",  # unaligned
        "read -P 0xcd 12345 54321",
        "read -P 0xab 0 12345",
        "write -z -u 20M 3M",  # zero, may unmap
        "read -P 0 20M 3M",
    )
    # A pattern mismatch makes qemu-io fail: prove the check is live.
    bad = run(["qemu-io", "-f", "raw", "-c", "read -P 0x77 0 4096", u], check=False)
    assert "Pattern verification failed" in bad.stdout + bad.stderr


def test_qemu_io_fua_and_aio(server: NBDServerProcess) -> None:
    u = server.uri()
    # Without -t writeback QEMU sends every write with FUA.
    qemu_io(u, "write -P 0x5a 1M 64k", "read -P 0x5a 1M 64k", writeback=False)
    qemu_io(
        u,
        "aio_write -P 0x21 0 64k",
        "aio_write -P 0x22 64k 64k",
        "aio_write -P 0x23 128k 4k",
        "aio_flush",
        "aio_read -P 0x21 0 64k",
        "aio_read -P 0x22 64k 64k",
        "aio_flush",
        "read -P 0x23 128k 4k",
    )


def test_qemu_img_info_map_compare_convert(server: NBDServerProcess, tmp_path: Path) -> None:
    u = server.uri()
    info = json.loads(run(["qemu-img", "info", "--output=json", "-f", "raw", u]).stdout)
    assert info["virtual-size"] == SIZE
    src = make_image(tmp_path / "src.img", SIZE, b"conv")
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), u])
    run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), u])
    extents = json.loads(run(["qemu-img", "map", "--output=json", "-f", "raw", u]).stdout)
    assert sum(e["length"] for e in extents) == SIZE
    assert any(e["data"] for e in extents) and any(e["zero"] for e in extents)
    # Converted back out, the image is identical (and sparse where it was).
    out = tmp_path / "out.img"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", u, str(out)])
    assert out.read_bytes() == src.read_bytes()
    assert out.stat().st_blocks * 512 < SIZE // 2
    # compare must notice a difference
    with open(src, "r+b") as f:
        f.seek(SIZE // 2)
        f.write(b"different")
    assert (
        run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(src), u], check=False).returncode
        == 1
    )


def test_qemu_nbd_list_decodes_flags(server: NBDServerProcess, ro_server: NBDServerProcess) -> None:
    out = run(["qemu-nbd", "--list", "-k", str(server.sock)]).stdout
    assert "export: 'disk'" in out
    assert f"size:  {SIZE}" in out
    for flag in ("flush", "fua", "trim", "zeroes", "df", "multi", "cache", "fast-zero"):
        assert flag in out.split("flags:")[1].split("\n")[0], (flag, out)
    assert "readonly" not in out.split("flags:")[1].split("\n")[0]
    assert "base:allocation" in out
    ro = run(["qemu-nbd", "--list", "-k", str(ro_server.sock)]).stdout
    assert "readonly" in ro.split("flags:")[1].split("\n")[0]
    assert "min block: 1" in out

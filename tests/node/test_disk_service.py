"""The disk service end to end: `loft disk serve` as a real process, real NBD clients,
and the CLI finding the service through the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import DEBIAN_PYTHON, loft_command, run
from nodetool import Node

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]
MIB = 1 << 20


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path, "node-a")
    yield n
    if n.proc is not None and n.proc.poll() is None:
        n.proc.kill()
        n.proc.wait(10)


def _volumes(node: Node) -> dict[str, dict[str, object]]:
    return {v["name"]: v for v in json.loads(node.loft("volume", "ls", "--json").stdout)}


def test_snapshot_through_the_service_holds_what_a_client_flushed(
    node: Node, tmp_path: Path
) -> None:
    # A long commit interval: only the snapshot commits what the client flushed.
    node.loft("volume", "create", "v", "--size", "64M", "--commit-interval", "600")
    node.serve()
    run(
        [
            "qemu-io",
            "-f",
            "raw",
            "-t",
            "writeback",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -P 0xcd 5M 64k",
            "-c",
            "flush",
            node.uri("v"),
        ]
    )
    info = json.loads(node.loft("volume", "info", "v", "--json").stdout)
    assert info["served_by"].endswith("control.sock")
    assert info["extents_dirty"] >= 1  # flushed on the node, not committed yet (local mode)
    out = node.loft("volume", "snapshot", "v", "s1").stdout
    assert "snapshot v@s1" in out
    image = tmp_path / "s1.img"
    node.loft("volume", "export", "v@s1", str(image))
    data = image.read_bytes()
    assert data[:MIB] == b"\xab" * MIB
    assert data[5 * MIB : 5 * MIB + 65536] == b"\xcd" * 65536
    # The snapshot is also a read-only export of the same service.
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 1M", node.uri("v@s1")])
    denied = run(["qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", node.uri("v@s1")], check=False)
    assert denied.returncode != 0
    assert node.stop() == 0


def _write(node: Node, export: str, *commands: str) -> None:
    args = ["qemu-io", "-f", "raw", "-t", "writeback"]
    for c in (*commands, "flush"):
        args += ["-c", c]
    run([*args, node.uri(export)])


class Holder:
    """A real NBD client keeping a connection to an export open (libnbd's Python)."""

    def __init__(self, uri: str) -> None:
        self.proc = subprocess.Popen(
            [
                DEBIAN_PYTHON,
                "-c",
                "import nbd, sys, time; h = nbd.NBD(); h.connect_uri(sys.argv[1]); "
                "h.pread(4096, 0); print('up', flush=True); time.sleep(60)",
                uri,
            ],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"up"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_restore_and_rm_of_a_served_volume_go_through_the_service(node: Node) -> None:
    """What the README tour does: a served volume that no client is using is restored and
    removed through the service; with a client connected the refusal names it."""
    node.loft("volume", "create", "v", "--size", "16M")
    node.loft("volume", "snapshot", "v", "empty")
    node.serve()
    _write(node, "v", "write -P 7 0 64k")
    run(["qemu-img", "info", node.uri("v")])  # what the tour ran before restoring
    holder = Holder(node.uri("v"))
    try:
        for args in (("volume", "restore", "v", "empty"), ("volume", "rm", "v")):
            proc = node.loft(*args, check=False)
            assert proc.returncode == 1
            assert "1 client(s) connected" in proc.stderr and " on v" in proc.stderr
            assert "loft disk ls-connections" in proc.stderr
    finally:
        holder.close()
    assert "v" in _volumes(node)
    out = node.loft("volume", "restore", "v", "empty").stdout
    assert "restored v to empty" in out and "previous state kept as v@restore-" in out
    snaps = json.loads(node.loft("volume", "snapshots", "v", "--json").stdout)
    assert any(s["auto"] for s in snaps), "the replaced head is kept as an automatic snapshot"
    # The service opens the restored volume again on next use, with the restored data.
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 64k", node.uri("v")])
    # A snapshot's reader blocks rm of its volume too.
    holder = Holder(node.uri("v@empty"))
    try:
        proc = node.loft("volume", "rm", "v", check=False)
        assert proc.returncode == 1 and "on v@empty" in proc.stderr
    finally:
        holder.close()
    node.loft("volume", "rm", "v")
    assert "v" not in _volumes(node)
    assert run(["nbdinfo", node.uri("v")], check=False).returncode != 0
    assert node.stop() == 0


def test_removed_snapshot_is_no_longer_served(node: Node) -> None:
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    _write(node, "v", "write -P 1 0 64k")
    node.loft("volume", "snapshot", "v", "s1")
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 1 0 64k", node.uri("v@s1")])
    node.loft("volume", "rm", "v@s1")
    assert run(["nbdinfo", node.uri("v@s1")], check=False).returncode != 0
    listing = run(["nbdinfo", "--list", "--json", node.uri("")]).stdout
    assert "v@s1" not in listing
    # The same name made again means the new snapshot, not a cached view of the old one.
    _write(node, "v", "write -P 2 0 64k")
    node.loft("volume", "snapshot", "v", "s1")
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 2 0 64k", node.uri("v@s1")])
    assert node.stop() == 0


@pytest.mark.parametrize("how", ["through-the-service", "after-release"])
def test_volume_removed_and_created_again_is_served_as_the_new_one(node: Node, how: str) -> None:
    node.loft("volume", "create", "v", "--size", "64M")
    node.serve()
    _write(node, "v", "write -P 5 0 1M", "write -P 6 60M 1M")
    if how == "after-release":  # the service no longer holds it: the CLI removes it alone
        node.loft("disk", "release", "v")
    node.loft("volume", "rm", "v")
    node.loft("volume", "create", "v", "--size", "16M")
    info = json.loads(run(["nbdinfo", "--json", node.uri("v")]).stdout)
    assert info["exports"][0]["export-size"] == 16 * MIB  # not the old 64M
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 1M", node.uri("v")])
    past = run(["qemu-io", "-r", "-f", "raw", "-c", "read 60M 1M", node.uri("v")], check=False)
    assert past.returncode != 0 or "error" in past.stdout.lower() + past.stderr.lower()
    # The service is unharmed and serves the new volume read-write.
    _write(node, "v", "write -P 9 0 4k")
    run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 9 0 4k", node.uri("v")])
    assert node.stop() == 0


def test_a_second_service_does_not_become_a_second_writer(node: Node, tmp_path: Path) -> None:
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    run(
        [
            "qemu-io",
            "-f",
            "raw",
            "-t",
            "writeback",
            "-c",
            "write -P 1 0 4k",
            "-c",
            "flush",
            node.uri("v"),
        ]
    )
    other = Node(tmp_path, "node-b")
    other.serve()
    try:
        refused = run(["nbdinfo", other.uri("v")], check=False)
        assert refused.returncode != 0
        listing = run(["nbdinfo", "--list", "--json", other.uri("")]).stdout
        assert '"v"' not in listing.replace(" ", "")
    finally:
        assert other.stop() == 0
    assert node.stop() == 0


def test_sigterm_commits_and_releases_every_volume(node: Node, tmp_path: Path) -> None:
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    # No explicit flush: the service commits on its way out anyway.
    run(["qemu-io", "-f", "raw", "-t", "writeback", "-c", "write -P 9 1M 1M", node.uri("v")])
    before = _volumes(node)["v"]
    assert before["holder"] is not None
    assert node.stop() == 0
    after = _volumes(node)["v"]
    assert after["holder"] is None
    assert int(after["version"]) > int(before["version"])  # type: ignore[call-overload]
    image = tmp_path / "v.img"
    node.loft("volume", "export", "v", str(image))
    assert image.read_bytes()[MIB : 2 * MIB] == b"\x09" * MIB


def test_ls_connections_shows_who_is_connected(node: Node) -> None:
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    holder = subprocess.Popen(
        [
            DEBIAN_PYTHON,
            "-c",
            "import nbd, sys, time; h = nbd.NBD(); h.connect_uri(sys.argv[1]); "
            "h.pread(4096, 0); print('up', flush=True); time.sleep(30)",
            node.uri("v"),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"up"
        conns = json.loads(node.loft("disk", "ls-connections", "--json").stdout)
        assert [c.get("export") for c in conns] == ["v"]
        # The table a person reads, too: SINCE is the time the client connected.
        table = node.loft("disk", "ls-connections").stdout
        row = next(line for line in table.splitlines() if " v " in line)
        since = time.strftime("%H:%M:%S", time.localtime(conns[0]["since"]))
        assert since in row, table
    finally:
        holder.kill()
        holder.wait(10)
    assert node.stop() == 0


def test_failed_import_into_a_served_volume_changes_nothing(node: Node, tmp_path: Path) -> None:
    """Only a regular file (or stdin, spooled) is imported, and a refused or failed import
    leaves the served volume exactly as it was (was: /dev/urandom overwrote it, then an
    error)."""
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    _write(node, "v", "write -P 3 0 2M", "write -P 4 15M 1M")
    before = tmp_path / "before.img"
    node.loft("volume", "export", "v", str(before))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to("/dev/zero")
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(17 * MIB)
    for source, says in [
        ("/dev/urandom", "not a regular file"),
        (str(fifo), "not a regular file"),
        (str(link), "not a regular file"),
        (str(tmp_path), "is a directory"),
        (str(big), "bytes but volume"),
    ]:
        proc = node.loft("volume", "import", "v", source, check=False)
        assert proc.returncode != 0 and says in proc.stderr, (source, proc.stderr)
    spooled = subprocess.run(
        [*loft_command(), "volume", "import", "v", "-"],
        input=b"\x01" * (17 * MIB),
        env=node.env,
        capture_output=True,
        timeout=120,
    )
    assert spooled.returncode == 1 and b"bytes but volume" in spooled.stderr
    after = tmp_path / "after.img"
    node.loft("volume", "export", "v", str(after))
    assert after.read_bytes() == before.read_bytes()
    # A good image still goes through, whole.
    good = tmp_path / "good.img"
    good.write_bytes(b"\x07" * (3 * MIB))
    node.loft("volume", "import", "v", str(good))
    run(
        [
            "qemu-io",
            "-r",
            "-f",
            "raw",
            "-c",
            "read -P 7 0 3M",
            "-c",
            "read -P 4 15M 1M",
            node.uri("v"),
        ]
    )
    assert node.stop() == 0

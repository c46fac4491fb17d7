"""The disk service end to end over a working copy changed while it was stopped: a real
NBD client reads what was committed, and ``loft volume info`` counts the bad extent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from nbdtool import run
from test_disk_service import Node

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]


def test_verify_nbd_read_after_restart_serves_committed_bytes(tmp_path: Path) -> None:
    node = Node(tmp_path, "node-a")
    node.loft("volume", "create", "v", "--size", "16M")
    node.serve()
    try:
        run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M", node.uri("v")])
    finally:
        assert node.stop() == 0  # commits and closes cleanly: extent 0 is kept clean
    uid = json.loads(node.loft("volume", "info", "v", "--json").stdout)["uid"]
    data = Path(node.env["LOFT_DATA_DIR"]) / "volumes" / uid / "data"
    fd = os.open(data, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x00", 4096)
    finally:
        os.close(fd)
    node.serve()
    try:
        run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 1M", node.uri("v")])
        info = json.loads(node.loft("volume", "info", "v", "--json").stdout)
        assert info["extents_corrupt"] == 1
        # A served volume says how far behind its commits are (nothing written: none).
        assert info["commit_lag_s"] == 0 and info["commit_lag_max_s"] >= 0
    finally:
        assert node.stop() == 0
    log = Path(node.env["LOFT_DATA_DIR"]).with_suffix(".log").read_text().splitlines()
    (line,) = [json.loads(x) for x in log if "extent_corrupt" in x]
    assert line["level"] == "warning" and (line["volume"], line["extent"]) == ("v", 0)

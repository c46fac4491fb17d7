"""What a running node leaves under its data dir is its own: directories 0700, files
0600 (store paths excepted, as documented), and a second local account reads nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbdtool import loft_command, run

pytestmark = [pytest.mark.timeout(180), pytest.mark.serial]
NOBODY = 65534


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory every account may traverse (pytest's own temp dirs are 0700, which
    would hide the data dir from a second account whatever its modes)."""
    d = Path(tempfile.mkdtemp(prefix="loft-datadir-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_everything_under_the_data_dir_is_private(tmp_path: Path, open_parent: Path) -> None:
    data = open_parent / "data"
    env = {**os.environ, "LOFT_DATA_DIR": str(data)}
    for k in ("LOFT_CHUNKS", "LOFT_CATALOG_URL"):
        env.pop(k, None)

    def loft(*args: str) -> None:
        subprocess.run([*loft_command(), *args], env=env, check=True, timeout=120)

    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    loft("volume", "create", "v", "--size", "16M", "--extent-size", "1M")
    loft("volume", "import", "v", str(image))
    loft("volume", "snapshot", "v", "s1")
    loft("volume", "fork", "v@s1", "w")
    sock = data / "run" / "nbd.sock"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([*loft_command(), "disk", "serve"], env=env, stdout=log, stderr=log)
    try:
        control = sock.with_name("control.sock")
        while not control.exists():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        uri = f"nbd+unix:///w?socket={sock}"
        run(["qemu-io", "-f", "raw", "-c", "write -P 1 0 2M", "-c", "flush", uri])
        loft("env", "root", "list")  # the env store's database and directories
        open_to_others = []
        for root, dirs, files in os.walk(data):
            for name in dirs + files:
                p = Path(root) / name
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    continue
                # The documented exception: the store directory and its paths keep
                # their Nix modes inside the private envstore directory.
                if p.is_relative_to(data / "envstore" / "nix"):
                    continue
                if stat.S_IMODE(st.st_mode) & 0o077:
                    open_to_others.append(f"{p.relative_to(data)} {stat.S_IMODE(st.st_mode):o}")
        assert not open_to_others, open_to_others
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "envstore").stat().st_mode) == 0o700
        # A second local account cannot read a tenant's disk, the chunks or the catalog
        # (which holds the chunk-key secret), nor reach the sockets.
        victims = [data / "catalog.db", *(data / "volumes").glob("*/data")]
        victims += [*list((data / "chunks").rglob("*"))[:3], sock]
        for victim in victims:
            peek = subprocess.run(
                [
                    "setpriv",
                    f"--reuid={NOBODY}",
                    f"--regid={NOBODY}",
                    "--clear-groups",
                    "stat",
                    str(victim),
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert peek.returncode != 0 and "Permission denied" in peek.stderr, victim
    finally:
        proc.terminate()
        assert proc.wait(60) == 0

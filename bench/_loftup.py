"""A whole loft for benchmarks that go through the API: ``loft up`` (disk service, node
agent, control plane) on a fresh data dir, with an environment already locked into its
store, so creating a workspace builds nothing.

Not a benchmark itself (``make bench`` skips files starting with ``_``). The data dir
lives in a 0711 directory under /tmp (a workspace's mapped root must search every
directory down to its root filesystem); everything started is stopped by PID, and
every workspace is removed through the CLI before ``loft up`` stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LOFT = str(Path(sys.executable).with_name("loft"))
#: The environment every benchmark workspace gets.
SPEC = """[env]
debian = ["python3"]
"""


@dataclass
class Loft:
    """A running ``loft up`` and what talks to it."""

    root: Path
    env: dict[str, str]
    lock_file: Path
    url: str
    admin_token: str
    proc: subprocess.Popen[bytes]
    #: the preview proxy's loopback port
    preview_port: int = 0

    @property
    def data_dir(self) -> Path:
        return Path(self.env["LOFT_DATA_DIR"])

    def loft(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The CLI as root on the node (the control plane's local socket, as admin)."""
        return subprocess.run(
            [LOFT, *args], env=self.env, capture_output=True, text=True, check=check, timeout=600
        )

    def new(self, name: str) -> None:
        self.loft("new", name, "--spec", str(self.lock_file), "--size", "1G", "--memory", "256M")


def _wait(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not ready():  # type: ignore[operator]
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def loft_up() -> Iterator[Loft]:
    """``loft up`` on a fresh data dir, its API on a free loopback port."""
    root = Path(tempfile.mkdtemp(prefix="loft-bench-up-"))
    os.chmod(root, 0o711)
    data = root / "data"
    data.mkdir(mode=0o700)
    env = {**os.environ, "LOFT_DATA_DIR": str(data)}
    env.pop("LOFT_URL", None)
    env.pop("LOFT_TOKEN", None)
    env["XDG_CONFIG_HOME"] = str(root / "config")  # no login file: root's local socket
    project = root / "project"
    project.mkdir()
    (project / "loft.toml").write_text(SPEC)
    subprocess.run([LOFT, "env", "lock"], cwd=project, env=env, check=True, capture_output=True)
    log = root / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [LOFT, "up", "--listen", "127.0.0.1:0", "--preview-listen", "127.0.0.1:0"],
            env=env,
            stdout=out,
            stderr=out,
        )
    loft: Loft | None = None
    try:

        def ready() -> bool:
            return (
                subprocess.run([LOFT, "ls"], env=env, capture_output=True, timeout=30).returncode
                == 0
            )

        _wait("loft up", ready, proc, log)
        url = (data / "run" / "api.url").read_text().strip()
        token = (data / "control" / "admin.token").read_text().strip()
        preview = (data / "run" / "preview.url").read_text().strip()
        port = int(preview.rsplit(":", 1)[1])
        loft = Loft(root, env, project / "loft.lock", url, token, proc, port)
        yield loft
    finally:
        if loft is not None:
            with contextlib.suppress(Exception):
                for ws in json.loads(loft.loft("ls", "--json").stdout):
                    loft.loft("rm", ws["name"], check=False)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)

"""Run real Nix (nix-bin) against a throwaway chroot store, never the host's /nix.

Every command gets ``--store local?root=<tmp>``, private config/state/log/cache dirs and
``substituters =`` so nothing waits on DNS.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class Nix:
    """Runs nix commands against a chroot store under ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "nixroot"
        conf = tmp / "nixconf"
        conf.mkdir()
        (conf / "nix.conf").write_text(
            "substituters =\nexperimental-features = nix-command\n"
            "build-users-group =\nsandbox = false\n"
        )
        self.env = {
            **os.environ,
            "NIX_CONF_DIR": str(conf),
            "NIX_STATE_DIR": str(tmp / "nixstate"),
            "NIX_LOG_DIR": str(tmp / "nixlog"),
            "HOME": str(tmp / "home"),
            "XDG_CACHE_HOME": str(tmp / "cache"),
        }
        self.store = f"local?root={self.root}"

    def proc(
        self, *args: str, stdin: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a store command and return the finished process (text output)."""
        return subprocess.run(
            [args[0], "--store", self.store, *args[1:]],
            env=self.env,
            input=None if stdin is None else stdin.decode("latin-1"),
            capture_output=True,
            timeout=timeout,
            check=False,
            text=True,
            encoding="latin-1",
        )

    def run(self, *args: str, stdin: bytes | None = None, timeout: float = 60) -> bytes:
        """Run a store command, fail the test on a non-zero exit, return stdout bytes."""
        r = subprocess.run(
            [args[0], "--store", self.store, *args[1:]],
            env=self.env,
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if r.returncode != 0:
            raise AssertionError(f"{args} failed: {r.stderr.decode()}")
        return r.stdout

    def plain(self, *args: str) -> str:
        """A command that takes no --store (nix-hash)."""
        r = subprocess.run(args, env=self.env, capture_output=True, timeout=60, check=True)
        return r.stdout.decode().strip()

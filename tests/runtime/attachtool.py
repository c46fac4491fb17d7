"""A served node for attach tests: the disk service as a real process (nodetool.Node)
and a Blockstore of the same node in the test's process; whatever is still attached at
the end is detached (mount, loop device, nbdfuse: by record and by what the system
shows), and the service is stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nodetool import Node

from loft.blockstore import Blockstore
from loft.config import Settings
from loft.runtime.attach import adopt, attached_workspaces, detach

MIB = 1 << 20


def settings_under(root: Path) -> Settings:
    """A node's settings with everything under ``root`` (the layout of nodetool.Node)."""
    return Settings(
        data_dir=root / "node-a",
        chunks_url=f"file://{root / 'chunks'}",
        catalog_url=f"sqlite:///{root / 'catalog.db'}",
        cache_bytes=1 << 30,
        chunk_cache_bytes=64 * MIB,
    )


class Served:
    """A node whose disk service runs (once :meth:`Node.serve` is called), and its
    Blockstore; ``env``: more LOFT_* settings for both."""

    def __init__(self, root: Path, **env: str) -> None:
        self.node = Node(root, "node-a")
        self.node.env.update(env)
        self.bs = Blockstore.from_settings(Settings.from_env(self.node.env))

    @property
    def data_dir(self) -> Path:
        return self.node.data_dir

    @property
    def attach_socket(self) -> Path:
        return self.node.sock.with_name("attach.sock")

    def cleanup(self) -> None:
        for ws in attached_workspaces(self.data_dir):
            att = adopt(self.data_dir, ws)  # tears down a broken one
            if att is not None:
                detach(att)
        if self.node.proc is not None and self.node.proc.poll() is None:
            self.node.kill()
        self.bs.close()


@contextmanager
def served_node(root: Path, **env: str) -> Iterator[Served]:
    s = Served(root, **env)
    try:
        s.node.serve()
        yield s
    finally:
        s.cleanup()


def mount_options(root: Path) -> set[str]:
    """The options ``root`` is mounted with (AssertionError when it is not mounted)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(root):
            return set(fields[5].split(","))
    raise AssertionError(f"{root} is not mounted")

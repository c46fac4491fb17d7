"""What a workspace is made of, and what a command asks for: typed, validated inputs.

Config apart from behaviour (Firecracker's ``vmm_config``): these are frozen dataclasses
that refuse a bad value when made, so the runtime never sees one. The node agent fills a
:class:`WorkspaceSpec` from the catalog (the id range, the limits) and from what it
attached and mounted (the root filesystem) and realised (the environment).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from loft.isolation.userns import IdRange

__all__ = [
    "RUNNER_UID",
    "EnvironmentView",
    "ExecRequest",
    "Limits",
    "Network",
    "WindowSize",
    "WorkspaceSpec",
    "check_workspace_id",
]

#: The workspace's ordinary user (``runner``), as in ``loft env run``.
RUNNER_UID = 1000
#: A workspace id names a runc container, a cgroup and directories: a conservative subset
#: of what runc accepts (``[\w+.-]``), never ``.`` or ``..``.
_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_STORE_DIR = "/nix/store/"
#: The smallest memory limit: below this the container's own init and a shell do not fit
#: (runc's init alone peaks at a few MiB while it sets the container up).
MIN_MEMORY = 16 * 2**20


def check_workspace_id(workspace: str) -> str:
    """``workspace`` if it is a valid workspace id, else ValueError."""
    if not _ID.fullmatch(workspace):
        raise ValueError(f"bad workspace id {workspace!r}: [a-z0-9][a-z0-9_.-]{{0,62}}")
    return workspace


class Network(enum.Enum):
    """How a workspace reaches the network.

    ``NONE``: its own network namespace with only ``lo``; ports reach it through
    :mod:`loft.runtime.forward`. ``NAT``: outbound too, through a userspace stack, never
    to the host, private or link-local ranges (:mod:`loft.runtime.egress`)."""

    NONE = "none"
    NAT = "nat"


@dataclass(frozen=True)
class Limits:
    """cgroup limits: memory in bytes (no swap beyond it), CPUs (fractions allowed), and
    the number of tasks (processes and threads)."""

    memory: int = 2 * 2**30
    cpus: float = 1.0
    pids: int = 1024

    def __post_init__(self) -> None:
        if self.memory < MIN_MEMORY:
            raise ValueError(f"memory limit {self.memory} is below {MIN_MEMORY} bytes")
        if not 0.01 <= self.cpus <= 1024:
            raise ValueError(f"bad CPU limit {self.cpus}")
        if self.pids < 16:
            raise ValueError(f"pids limit {self.pids} is below 16")


@dataclass(frozen=True)
class EnvironmentView:
    """The environment a workspace runs: ``path`` (``/nix/store/…``, mounted at /usr)
    and its ``closure`` (store paths, ``path`` included), whose directories are in the
    physical store directory ``store_dir``. The caller keeps the closure alive (a GC
    root) while the workspace runs."""

    store_dir: Path
    path: str
    closure: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.path not in self.closure:
            raise ValueError(f"the closure of {self.path} does not contain it")
        for p in self.closure:
            name = p.removeprefix(_STORE_DIR)
            if not p.startswith(_STORE_DIR) or not name or "/" in name or name in (".", ".."):
                raise ValueError(f"bad store path {p!r}")

    def basename(self, store_path: str) -> str:
        """The directory of ``store_path`` inside ``store_dir``."""
        return store_path.removeprefix(_STORE_DIR)


@dataclass(frozen=True)
class WorkspaceSpec:
    """Everything the runtime needs to start a workspace.

    ``rootfs``: the workspace's filesystem, mounted by the caller (the host kernel never
    mounts what a tenant could have written raw; see docs/runtime.md), ``nosuid`` and
    ``nodev``, in a directory only root may enter: it holds the tenant's files with their
    on-disk ids, setuid-root ones included. ``ids``: the workspace's own host id range
    (:func:`loft.runtime.ids.allocate_range`); ``deny``: networks outbound traffic may
    never reach beyond the built-in private ranges (the deployment's own endpoints), for
    ``NAT``."""

    id: str
    rootfs: Path
    env: EnvironmentView
    ids: IdRange
    limits: Limits = field(default_factory=Limits)
    network: Network = Network.NONE
    hostname: str = ""
    deny: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def __post_init__(self) -> None:
        check_workspace_id(self.id)
        if self.ids.size != 65536:
            raise ValueError("a workspace's id range holds 65,536 ids")
        if not self.rootfs.is_absolute():
            raise ValueError(f"root filesystem path {self.rootfs} is not absolute")
        if self.hostname and not _HOSTNAME.fullmatch(self.hostname):
            raise ValueError(f"bad host name {self.hostname!r}")

    @property
    def host_name(self) -> str:
        """The name the workspace sees as its host's (default: the id, made a host name)."""
        return self.hostname or re.sub(r"[^a-z0-9-]", "-", self.id).strip("-")[:63] or "loft"


@dataclass(frozen=True)
class WindowSize:
    """A terminal's size in character cells."""

    rows: int = 24
    cols: int = 80

    def __post_init__(self) -> None:
        if not (0 < self.rows < 65536 and 0 < self.cols < 65536):
            raise ValueError(f"bad window size {self.rows}x{self.cols}")


@dataclass(frozen=True)
class ExecRequest:
    """A command to run in a running workspace: ``argv``, as ``user`` (a uid inside;
    its gid is the same), in ``cwd`` (default: the user's home), with ``env`` added to
    the defaults (PATH, HOME, USER, LANG…)."""

    argv: tuple[str, ...]
    user: int = RUNNER_UID
    cwd: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("no command to run")
        if not 0 <= self.user < 65536:
            raise ValueError(f"uid {self.user} is outside the workspace's ids")
        if self.cwd is not None and not self.cwd.startswith("/"):
            raise ValueError(f"working directory {self.cwd!r} is not absolute")
        for k in self.env:
            if not k or "=" in k or "\0" in k:
                raise ValueError(f"bad environment variable name {k!r}")

    @property
    def home(self) -> str:
        """The user's home directory."""
        return "/root" if self.user == 0 else "/home/runner" if self.user == RUNNER_UID else "/"

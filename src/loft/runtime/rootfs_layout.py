"""The layout of a workspace's root filesystem: what a template volume holds, and what
the sandbox runtime mounts on it. One table, read by both.

The volume's filesystem *is* the workspace's ``/``: what a user changes under ``/etc``,
``/var``, ``/root``, ``/home``, ``/opt`` and ``/usr/local`` persists with the volume.
``/usr`` is the environment (a store path, read-only), mounted over the volume's
``/usr``, which holds only ``local``: the runtime binds the volume's own ``/usr/local``
back on top of the environment (from the host's path to the mounted volume, which the
environment does not hide). Debian's usr-merge links (``/bin -> usr/bin``...) make the
environment's programs appear where scripts expect them.

Ids are the workspace's own (0 root, 1000 runner): the sandbox maps them onto the
workspace's host range with an idmapped mount, so a template serves every workspace
without a chown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LAYOUT",
    "MOUNT_POINTS",
    "RUNNER_GID",
    "RUNNER_HOME",
    "RUNNER_UID",
    "Dir",
    "File",
    "Link",
    "populate",
]

RUNNER_UID = 1000
RUNNER_GID = 1000
RUNNER_HOME = "/home/runner"


@dataclass(frozen=True, slots=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class Link:
    path: str
    target: str


@dataclass(frozen=True, slots=True)
class File:
    path: str
    content: str
    mode: int = 0o644


_PASSWD = f"""\
root:x:0:0:root:/root:/bin/bash
runner:x:{RUNNER_UID}:{RUNNER_GID}:runner:{RUNNER_HOME}:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
_GROUP = f"""\
root:x:0:
runner:x:{RUNNER_GID}:
nogroup:x:65534:
"""
# Locked passwords: nobody logs in with one; the runtime starts shells directly.
_SHADOW = """\
root:*:19000:0:99999:7:::
runner:*:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
"""
_HOSTS = """\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
"""

#: Every entry of a fresh workspace root, parents before children.
LAYOUT: tuple[Dir | Link | File, ...] = (
    Dir("/"),
    Dir("/etc"),
    File("/etc/passwd", _PASSWD),
    File("/etc/group", _GROUP),
    File("/etc/shadow", _SHADOW, 0o600),
    File("/etc/hostname", "workspace\n"),
    File("/etc/hosts", _HOSTS),
    Dir("/root", 0o700),
    Dir("/home"),
    Dir(RUNNER_HOME, 0o755, RUNNER_UID, RUNNER_GID),
    Dir("/var"),
    Dir("/var/tmp", 0o1777),
    Dir("/var/cache"),
    Dir("/var/lib"),
    Dir("/var/log"),
    Dir("/opt"),
    Dir("/srv"),
    Dir("/mnt"),
    Dir("/usr"),
    Dir("/usr/local"),
    Dir("/usr/local/bin"),
    Dir("/usr/local/lib"),
    Dir("/usr/local/share"),
    Dir("/nix"),
    Dir("/nix/store"),
    Dir("/tmp", 0o1777),
    Dir("/proc", 0o555),
    Dir("/sys", 0o555),
    Dir("/dev"),
    Dir("/run"),
    Link("/bin", "usr/bin"),
    Link("/sbin", "usr/sbin"),
    Link("/lib", "usr/lib"),
    Link("/lib64", "usr/lib64"),
)

#: Where the runtime mounts something over the volume, and what.
MOUNT_POINTS: dict[str, str] = {
    "/usr": "the environment (a store path), read-only",
    "/usr/local": "the volume's own /usr/local, bound back over the environment",
    "/nix/store": "the environment's closure, read-only",
    "/tmp": "a tmpfs",
}


def populate(root: Path) -> None:
    """Create :data:`LAYOUT` under the existing directory ``root`` (needs root for the
    ownership; modes are set explicitly, whatever the umask)."""
    for entry in LAYOUT:
        path = root / entry.path.lstrip("/")
        if isinstance(entry, Dir):
            path.mkdir(exist_ok=True)
            os.chown(path, entry.uid, entry.gid)
            os.chmod(path, entry.mode)
        elif isinstance(entry, Link):
            path.symlink_to(entry.target)
        else:
            path.write_text(entry.content)
            os.chmod(path, entry.mode)

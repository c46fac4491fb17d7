"""A workspace environment as a read-only disk image, for VMs.

A sandbox sees its environment through bind mounts of the store; a VM's kernel can only
see disks. So the environment's closure becomes an ext4 image, built once per
environment on the node and shared read-only by every VM that runs it: its root holds
the closure's store paths by name (the guest mounts it at ``/nix/store``, read-only, and
binds the environment's own path at ``/usr``, as the sandbox does; that path gets an
empty ``local`` when it has none, where the volume's own ``/usr/local`` goes back).

- **Built without mounting anything**: the closure is hard-linked into a staging
  directory (``cp -al``, a copy when the store is on another filesystem) and
  ``mkfs.ext4 -d`` writes the image from it in userspace; no journal (nothing ever
  writes it), sized from the closure with slack for ext4's metadata.
- **Cached** in ``<data>/runtime/vm-envs/<store path name>.img`` (0600, in a 0700
  directory) beside its SHA-256, built under a lock and renamed into place, so two VMs
  starting on one new environment build it once and never see half an image.
- **Pinned by hard links**: each VM links the image into its own directory, and a memory
  snapshot into its image directory, so a resumed or restored guest always finds the
  very bytes its kernel had mounted (an image built again from the same closure would
  not be identical: ``mkfs.ext4 -d`` lays files out in directory order). An image that
  only the cache links (link count 1) and whose environment left the store is removed
  on the next build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from loft.runtime.errors import WorkspaceError
from loft.runtime.spec import EnvironmentView

__all__ = ["EnvDisk", "build_env_disk", "check_env_name", "check_env_ref"]

_NAME = re.compile(r"[0-9a-z]{32}-[0-9A-Za-z+._?=-]{1,180}")
#: ext4's block; every file, directory and long symlink takes at least one.
_BLOCK = 4096
#: Inode size mkfs uses for small file systems, and the fixed slack for the superblock,
#: group descriptors, bitmaps and inode tables' rounding.
_INODE = 256
_SLACK = 16 << 20
_TIMEOUT = 600


@dataclass(frozen=True)
class EnvDisk:
    """An environment's image: the file, the environment's store path name (what the
    guest binds at ``/usr``) and the image's SHA-256 (how it travels between nodes)."""

    path: Path
    name: str
    sha256: str


def check_env_name(name: str) -> str:
    """``name`` when it is a store path's name, else ValueError (it reaches the guest's
    kernel command line and file names)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad environment name {name!r}")
    return name


def check_env_ref(name: str, sha256: str) -> None:
    """ValueError unless (``name``, ``sha256``) names an environment disk, or is
    ("", ""): none (how a snapshot record or a suspend header names the disk)."""
    if name:
        check_env_name(name)
    if bool(name) != bool(re.fullmatch(r"[0-9a-f]{64}", sha256)):
        raise ValueError("bad environment disk digest")


def build_env_disk(env: EnvironmentView, cache: Path) -> EnvDisk:
    """The image of ``env`` in ``cache``, built when missing; WorkspaceError when the
    environment is not in its store or the image cannot be made."""
    name = check_env_name(env.basename(env.path))
    image = cache / f"{name}.img"
    digest = cache / f"{name}.sha256"
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.is_file() and digest.is_file():
            return EnvDisk(image, name, digest.read_text().strip())
        _prune(cache, env.store_dir)
        missing = [p for p in env.closure if not (env.store_dir / env.basename(p)).is_dir()]
        if missing:
            raise WorkspaceError(
                f"environment {env.path} is not in this node's store ({missing[0]} is missing)",
                hint="build it here first (loft env switch)",
            )
        _build(env, cache, image, digest)
        return EnvDisk(image, name, digest.read_text().strip())


def _build(env: EnvironmentView, cache: Path, image: Path, digest: Path) -> None:
    staging = cache / f".{image.stem}.staging"
    tmp = cache / f".{image.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    try:
        sources = [str(env.store_dir / env.basename(p)) for p in sorted(env.closure)]
        r = _run(["cp", "-al", "--", *sources, str(staging)])
        if r.returncode != 0:  # the store on another filesystem: no hard links across
            shutil.rmtree(staging)
            staging.mkdir(mode=0o755)
            r = _run(["cp", "-a", "--", *sources, str(staging)])
            if r.returncode != 0:
                raise WorkspaceError(f"cannot stage environment {env.path}: {r.stderr.strip()}")
        # The sandbox's read-only overlay adds the same empty directory to mount on.
        local = staging / env.basename(env.path) / "local"
        if not local.exists() and not local.is_symlink():
            local.mkdir(mode=0o755)
        size, inodes = _measure(staging)
        for attempt in range(2):
            tmp.unlink(missing_ok=True)
            blocks = (size << attempt) // 1024
            r = _run(["mkfs.ext4", "-q", "-F", "-d", str(staging), "-L", "loft-env",
                      "-O", "^has_journal", "-m", "0", "-b", str(_BLOCK), "-N", str(inodes),
                      "-E", "root_owner=0:0", str(tmp), f"{blocks}k"])  # fmt: skip
            if r.returncode == 0:
                break
        else:
            raise WorkspaceError(f"cannot make the disk image of environment {env.path}: "
                                 f"{r.stderr.strip()[-500:]}")  # fmt: skip
        # /nix/store holds the closure and nothing else (mkfs made a lost+found)
        r = _run(["debugfs", "-w", "-R", "rmdir /lost+found", str(tmp)])
        if r.returncode != 0:
            raise WorkspaceError(f"cannot finish the disk image of environment {env.path}: "
                                 f"{r.stderr.strip()[-500:]}")  # fmt: skip
        os.chmod(tmp, 0o600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        digest_tmp = digest.with_name(f".{digest.name}.tmp")
        digest_tmp.write_text(sha + "\n")
        os.replace(tmp, image)  # the image first: a digest alone is never trusted
        os.replace(digest_tmp, digest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        tmp.unlink(missing_ok=True)


def _measure(root: Path) -> tuple[int, int]:
    """(bytes, inodes) an ext4 of ``root`` needs, with room for its metadata."""
    used, inodes = 0, 16
    for dirpath, dirnames, filenames in os.walk(root):
        inodes += 1
        used += _BLOCK
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, n))
            inodes += 1
            used += -(-st.st_size // _BLOCK) * _BLOCK if st.st_size > 60 else 0
    inodes = inodes + inodes // 8 + 64
    size = used + used // 8 + inodes * _INODE + _SLACK
    return -(-size // (1 << 20)) << 20, inodes


def _prune(cache: Path, store_dir: Path) -> None:
    """Drop images no VM or snapshot links and whose environment left the store."""
    for image in cache.glob("*.img"):
        with contextlib.suppress(OSError):
            if os.stat(image).st_nlink == 1 and not (store_dir / image.stem).exists():
                image.unlink()
                (cache / f"{image.stem}.sha256").unlink(missing_ok=True)


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=_TIMEOUT, check=False)  # fmt: skip

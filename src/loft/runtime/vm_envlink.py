"""The environment disk a VM's or a memory image's directory holds: which one it is, and
bringing that very one there.

A VM hard-links the environment disk it booted with (:mod:`~loft.runtime.vm_envdisk`)
into its directory as ``env.img`` and says what it is in ``env.json``; a memory image
links it beside its RAM. A guest resumed or restored from memory must find the very
bytes its kernel had mounted, so whatever the node's cache does later, the link keeps
them, and a directory that lacks them takes the cache's image only when it is that very
one, else fetches it from the chunk store (:mod:`~loft.runtime.vm_cold`): an image
rebuilt from the same closure would not be the same.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from loft.blockstore import Blockstore
from loft.runtime import vm_cold
from loft.runtime.errors import WorkspaceError
from loft.runtime.persist import write_private
from loft.runtime.vm_envdisk import EnvDisk, check_env_name

__all__ = ["ENV_IMG", "bring_env", "link_env", "linked_env", "note_env"]

#: The environment disk linked into a VM's or an image's directory.
ENV_IMG = "env.img"
#: What the disk linked into a VM's directory is.
_ENV_JSON = "env.json"


def link_env(d: Path, env: EnvDisk) -> None:
    """Link ``env`` into VM directory ``d`` and say which it is."""
    os.link(env.path, d / ENV_IMG)
    note_env(d, env)


def note_env(d: Path, env: EnvDisk) -> None:
    """Say in VM directory ``d`` which environment disk its ``env.img`` is."""
    write_private(d / _ENV_JSON, json.dumps({"name": env.name, "sha256": env.sha256}).encode())


def linked_env(d: Path) -> EnvDisk | None:
    """The environment disk linked into VM directory ``d`` (None: the VM has none)."""
    try:
        meta = json.loads((d / _ENV_JSON).read_bytes()[:4096])
        return EnvDisk(d / ENV_IMG, check_env_name(str(meta["name"])), str(meta["sha256"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise WorkspaceError(f"damaged VM state {d / _ENV_JSON}: {e}") from e


def bring_env(name: str, sha256: str, dest: Path, envs: Path, bs: Blockstore | None) -> EnvDisk:
    """Environment disk ``name`` of digest ``sha256`` at ``dest``: there already, else
    the image in the node's cache ``envs`` when it is that very one, else fetched from
    the chunk store ``bs``."""
    if not dest.is_file():
        with contextlib.suppress(OSError):
            if (envs / f"{name}.sha256").read_text().strip() == sha256:
                os.link(envs / f"{name}.img", dest)
    if not dest.is_file() and bs is not None:
        vm_cold.fetch_env(bs, sha256, dest)
    if not dest.is_file():
        raise WorkspaceError(
            f"the environment disk {name} ({sha256[:16]}) is neither here nor in the chunk store",
            hint="restore the volume snapshot alone (a cold boot)",
        )
    return EnvDisk(dest, name, sha256)

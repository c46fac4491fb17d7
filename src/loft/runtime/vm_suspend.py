"""A suspended VM's image on the node, and carrying it to and from the chunk store.

A suspend stops the vCPUs, then migrates with ``x-ignore-shared`` to ``state`` (device
state only: RAM is already in the VM's RAM file), beside the RAM file in the VM's
directory; ``suspend.json`` records the state's SHA-256, the workspace and the memory
size, and, once uploaded, the volume root the image belongs with. A warm resume maps
the same RAM file (``share=on``: the VM is the file's only user, so its next suspend
again saves only device state) in a new QEMU that loads ``state``. The image stops
being valid the moment the VM runs again (the RAM file changes under it), so a resume
deletes it first (:func:`discard`); a VM killed later boots afresh.

In the chunk store (:mod:`~loft.runtime.vm_store`) the image is a volume of the
workspace's own: :func:`upload` puts only what changed since the last upload there,
:func:`fetch` makes it the local image on a node that lacks one.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from loft.blockstore import Blockstore
from loft.runtime import vm_cold, vm_store
from loft.runtime.errors import WorkspaceError
from loft.runtime.persist import load_spec, write_private
from loft.runtime.spec import WorkspaceSpec
from loft.runtime.vm_envlink import ENV_IMG, bring_env, linked_env, note_env
from loft.runtime.vm_image import sha256_file
from loft.runtime.vm_migrate import STATE, STATE_SLACK, save_state
from loft.runtime.vm_process import VmProcess
from loft.runtime.vm_qemu import Machine

__all__ = [
    "discard",
    "disk_root",
    "fetch",
    "load",
    "save",
    "state_checked",
    "suspended",
    "upload",
]

_SUSPEND = "suspend.json"
_FORMAT = 1


def suspended(d: Path) -> bool:
    """Whether the VM of directory ``d`` has a suspend image."""
    return (d / _SUSPEND).is_file()


def save(vm: VmProcess, workspace: str) -> float:
    """Save ``vm``'s (stopped) state beside its RAM file and record it; the seconds the
    save took."""
    d = vm.machine.dir
    t0 = time.monotonic()
    save_state(vm.qmp, d / STATE)
    seconds = time.monotonic() - t0
    _record(d, workspace, sha256_file(d / STATE), vm.machine.memory_mib)
    return seconds


def _record(d: Path, workspace: str, sha256: str, memory_mib: int) -> None:
    write_private(d / _SUSPEND, json.dumps(
        {"format": _FORMAT, "workspace": workspace, "sha256": sha256, "memory": memory_mib}
    ).encode())  # fmt: skip


def discard(d: Path) -> None:
    """Delete the suspend image in ``d``: invalid once the VM runs."""
    (d / _SUSPEND).unlink(missing_ok=True)
    (d / STATE).unlink(missing_ok=True)


def load(d: Path, workspace: str) -> tuple[WorkspaceSpec, str]:
    """The spec of ``workspace``'s VM in ``d`` and the SHA-256 its suspend image's state
    was saved with; WorkspaceError when it has no usable image."""
    try:
        meta = json.loads((d / _SUSPEND).read_bytes()[:4096])
        spec = load_spec(d)
        if meta.get("format") != _FORMAT or meta.get("workspace") != workspace:
            raise ValueError("not this workspace's image")
        return spec, str(meta["sha256"])
    except (OSError, ValueError, KeyError) as e:
        raise WorkspaceError(
            f"workspace {workspace} has no usable suspend image: {e}",
            hint="stop it (the image is lost) and start it afresh",
        ) from e


def state_checked(d: Path, workspace: str, sha256: str, memory: int) -> Path:
    """The state file in ``d`` when it is the one saved (digest ``sha256``, for a VM of
    ``memory`` bytes); WorkspaceError when it is not."""
    state = d / STATE
    if (not state.is_file() or state.stat().st_size > memory + STATE_SLACK
            or sha256_file(state) != sha256):  # fmt: skip
        raise WorkspaceError(
            f"workspace {workspace}'s suspend image is damaged (its state file does not "
            "match what was saved)",
            hint="stop it (the memory image is lost) and start it afresh",
        )
    return state


def disk_root(d: Path) -> str | None:
    """The volume root the suspend image in ``d`` was uploaded with (None: not
    uploaded, or no image)."""
    with contextlib.suppress(OSError, ValueError):
        root = json.loads((d / _SUSPEND).read_bytes()[:4096]).get("disk_root")
        return root if isinstance(root, str) else None
    return None


def upload(bs: Blockstore, workspace: str, machine: Machine, root: str) -> vm_store.Upload:
    """Put the suspend image of ``workspace`` (its VM ``machine``, QEMU gone) into the
    chunk store, marked as belonging with its volume's committed root ``root``, and
    record that it did."""
    env = linked_env(machine.dir)
    if env is not None:  # once per environment: a volume named by its content
        vm_cold.upload_env(bs, env.path, env.sha256)
    up = vm_store.upload(bs, workspace, machine.ram, machine.dir / STATE, root, env)
    meta = json.loads((machine.dir / _SUSPEND).read_bytes()[:4096])
    write_private(machine.dir / _SUSPEND, json.dumps({**meta, "disk_root": root}).encode())
    return up


def fetch(bs: Blockstore, workspace: str, root: str, d: Path, envs: Path) -> None:
    """Make the suspend image of ``workspace`` in the chunk store the one in the new VM
    directory ``d``, with the environment disk its guest has mounted (from the node's
    cache ``envs`` when it is that very one); WorkspaceError when it is damaged,
    another workspace's, or older than the disk ``root``."""
    h = vm_store.fetch(bs, workspace, root, d / "ram", d / STATE)
    if h.env:  # the very disk the suspended guest has mounted
        note_env(d, bring_env(h.env, h.env_sha256, d / ENV_IMG, envs, bs))
    _record(d, workspace, h.state_sha256, h.memory_mib)

"""A VM's memory snapshots on the node: taking one, making one ready for a restore,
removing one nothing uses, uploading one.

An image is a directory of the images directory (its files and the record naming it:
:mod:`~loft.runtime.vm_image`), with the environment disk the guest had mounted linked
beside (:mod:`~loft.runtime.vm_envlink`). A restore finds it here, or fetches it from the
chunk store (:mod:`~loft.runtime.vm_cold`) when the node's blockstore is given, and
checks it against its record before a QEMU starts on it. A VM an older loft restored runs
on the image's RAM file itself, named in ``ram.json`` in the VM's directory: such an image
is in use, as is one whose RAM another image maps (``ram_from``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path

from loft.blockstore import Blockstore
from loft.runtime import vm_cold
from loft.runtime.errors import ImageInUse, WorkspaceError
from loft.runtime.persist import write_private
from loft.runtime.phase import Phase
from loft.runtime.vm_envdisk import EnvDisk
from loft.runtime.vm_envlink import ENV_IMG, bring_env, linked_env
from loft.runtime.vm_image import (
    ImageRecord,
    copy_sparse,
    decode_record,
    encode_record,
    is_image_id,
    sha256_file,
)
from loft.runtime.vm_migrate import STATE, STATE_SLACK, save_state
from loft.runtime.vm_process import VmProcess

__all__ = ["MemoryImages"]

_RAM_JSON = "ram.json"


class MemoryImages:
    """The memory images in directory ``root``, of the VMs whose directories are in
    ``vms``; ``envs``: the node's cache of environment disks; ``bs``: where images go to
    outlive the node and come from when a restore does not find them here (None: no
    chunk store)."""

    def __init__(self, root: Path, vms: Path, envs: Path, bs: Blockstore | None) -> None:
        self.root = root
        self.vms = vms
        self.envs = envs
        self.bs = bs

    def dir(self, image: str) -> Path:
        """Image ``image``'s directory; WorkspaceError when ``image`` is no image id."""
        if not is_image_id(image):
            raise WorkspaceError(f"bad VM image id {image!r}")
        return self.root / image

    def mapped(self, d: Path) -> tuple[Path, int] | None:
        """The RAM file and memory size (bytes) of the image the VM in directory ``d``
        runs on, as a VM an older loft restored does (None: it has its own RAM file)."""
        with contextlib.suppress(FileNotFoundError):
            try:
                rec = json.loads((d / _RAM_JSON).read_bytes()[:4096])
                return self.dir(str(rec["image"])) / "ram", int(rec["memory_mib"]) << 20
            except (ValueError, KeyError, TypeError) as e:
                raise WorkspaceError(f"damaged VM state {d / _RAM_JSON}: {e}") from e
        return None

    def take(self, vm: VmProcess, workspace: str) -> ImageRecord:
        """A new image of ``vm``'s memory and devices, taken with its vCPUs stopped: a
        running VM is stopped for the copy and goes on after; its record."""
        image = secrets.token_hex(16)
        d = self.dir(image)
        running = vm.phase is Phase.RUNNING
        d.mkdir(mode=0o700)
        try:
            if running:
                vm.qmp.execute("stop")
            save_state(vm.qmp, d / STATE)
            if vm.machine.ram_image is None:
                copy_sparse(vm.machine.ram, d / "ram")
                ram_from = image
            else:  # its RAM went into the stream, loaded over the image it runs from
                ram_from = vm.machine.ram_image.parent.name
            env = linked_env(vm.machine.dir)
            if env is not None:
                os.link(env.path, d / ENV_IMG)
            rec = ImageRecord(image, workspace, vm.machine.memory_mib, ram_from,
                              sha256_file(d / STATE), env=env.name if env else "",
                              env_sha256=env.sha256 if env else "")  # fmt: skip
            write_private(d / "record", encode_record(rec))
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise
        finally:
            if running:
                vm.qmp.execute("cont")
        return rec

    def here(self, rec: ImageRecord) -> bool:
        """Whether the files of ``rec``'s image are on this node."""
        state, ram = self.dir(rec.image) / STATE, self.dir(rec.ram_from) / "ram"
        return state.is_file() and ram.is_file()

    def fetch(self, rec: ImageRecord, record: bytes) -> None:
        """Bring ``rec``'s image (``record``: its bytes) here from the chunk store."""
        assert self.bs is not None
        vm_cold.fetch(self.bs, self.root, rec)
        if not (self.dir(rec.image) / "record").exists():
            write_private(self.dir(rec.image) / "record", record)

    def checked(self, rec: ImageRecord) -> tuple[Path, Path, EnvDisk | None]:
        """The state file a VM restored from ``rec`` loads, the RAM file it copies, and
        the environment disk its guest had mounted; WorkspaceError when the image is
        missing or damaged."""
        state = self.dir(rec.image) / STATE
        ram = self.dir(rec.ram_from) / "ram"
        try:
            ok = ram.stat().st_size == rec.memory_mib << 20
            ok = ok and state.stat().st_size <= (rec.memory_mib << 20) + STATE_SLACK
        except FileNotFoundError:
            ok = False
        if not ok or sha256_file(state) != rec.state_sha256:
            raise WorkspaceError(
                f"the VM image {rec.image} is missing or damaged",
                hint="restore the volume snapshot alone (a cold boot)",
            )
        return state, ram, self.env(rec)

    def env(self, rec: ImageRecord) -> EnvDisk | None:
        """The environment disk image ``rec`` was taken with (:func:`bring_env`)."""
        if not rec.env:
            return None
        return bring_env(rec.env, rec.env_sha256, self.dir(rec.image) / ENV_IMG, self.envs,
                         self.bs)  # fmt: skip

    def remove(self, record: bytes) -> None:
        """Delete the image of record ``record``, here and in the chunk store (gone
        already is fine); :class:`ImageInUse` while a VM or another image still maps its
        RAM."""
        rec = decode_record(record)
        users = [p.parent.name for p in self.vms.glob(f"*/{_RAM_JSON}")
                 if rec.image in p.read_text()]  # fmt: skip
        for p in self.root.glob("*/record"):
            if p.parent.name != rec.image and decode_record(p.read_bytes()).ram_from == rec.image:
                users.append(f"image {p.parent.name}")
        if users:
            raise ImageInUse(f"VM image {rec.image} is in use by {', '.join(sorted(users))}")
        shutil.rmtree(self.dir(rec.image), ignore_errors=True)
        if self.bs is not None:
            vm_cold.remove(self.bs, rec.image)

    def upload(self, record: bytes) -> str:
        """Put the image of record ``record`` and its environment disk into the chunk
        store (volumes of their own, see :mod:`loft.runtime.vm_cold`); the image's
        volume."""
        if self.bs is None:
            raise WorkspaceError("this VM runtime has no blockstore to upload images to")
        rec = decode_record(record)
        if rec.env:
            vm_cold.upload_env(self.bs, self.dir(rec.image) / ENV_IMG, rec.env_sha256)
        return vm_cold.upload(self.bs, self.root, rec)

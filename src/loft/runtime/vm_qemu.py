"""A loft VM's QEMU command line, pure: what boots, with which devices, from where.

One function, :func:`qemu_argv`, so a boot and a restore use the same devices (a
migration stream only loads into the machine it came from). The choices, measured on
this kind of host (docs/vm.md):

- ``-M microvm`` (virtio-mmio, no PCI, no firmware): the shortest boot; ``-smp 1``
  (multi-threaded TCG with two vCPUs hung); ``tsc_early_khz`` on the kernel command
  line (without it microvm hangs about one boot in ten under TCG);
- RAM is a file (``memory-backend-file``) in the VM's private directory: a suspend then
  saves only device state (``x-ignore-shared``) and a resume maps the file again and
  pages in what the guest touches. ``share=on`` while the VM is this file's only user;
  ``share=off`` (a private, copy-on-write mapping QEMU never writes back) for a restore
  from an image that must stay unchanged;
- the workspace volume straight from the node's NBD server (QEMU is the NBD client; no
  host mount, no nbdfuse), ``cache=none`` semantics: a guest flush is an NBD FLUSH;
- the environment as a second disk, a read-only image (:mod:`~loft.runtime.vm_envdisk`)
  that QEMU opens read-only, so not even the guest's root can change it; its store path
  name is on the kernel command line for the guest's init;
- the guest agent on a virtio-serial port named ``loft.agent``; QMP on a socket;
  the serial console to a bounded ring (:data:`CONSOLE_BYTES`);
- with outbound networking, a virtio-net NIC on the tap device of the VM's own network
  namespace (:mod:`loft.runtime.vm_net`; QEMU runs in it), never ``-netdev user``
  (whose 10.0.2.2 is the host's loopback), and the guest's network plan on the kernel
  command line. Without, no NIC at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from loft.runtime.errors import WorkspaceError
from loft.runtime.vm_net import KERNEL_ARG, TAP

__all__ = [
    "AGENT_PORT",
    "CONSOLE_BYTES",
    "ENV_SERIAL",
    "MIN_MEMORY",
    "GuestImage",
    "Machine",
    "accelerator",
    "qemu_argv",
]

AGENT_PORT = "loft.agent"
#: The environment disk's virtio serial: how the guest's init tells it from the volume
#: (the order of virtio-mmio disks in the guest is not the command line's).
ENV_SERIAL = "loft-env"
#: Below this the cloud kernel does not unpack its initramfs and reach the agent.
MIN_MEMORY = 96 << 20
#: The TSC frequency the guest kernel is told, so it skips calibrating it (which under
#: TCG on microvm sometimes never ends); any plausible value works.
_TSC_KHZ = 2600000
_CMDLINE = f"console=ttyS0 tsc_early_khz={_TSC_KHZ} quiet loglevel=4 panic=-1"
#: The serial console is a ring in QEMU's memory (read with QMP ``ringbuf-read``), not a
#: file: the tenant is root in the guest and could write to it without end.
CONSOLE_BYTES = 64 << 10
#: Unix socket paths are limited to 108 bytes with their NUL.
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class GuestImage:
    """The kernel and initramfs every loft VM boots (built by ``make guest``)."""

    kernel: Path
    initrd: Path

    @classmethod
    def at(cls, directory: Path) -> GuestImage:
        """The guest built into ``directory``; WorkspaceError when a part is missing."""
        image = cls(directory / "vmlinuz", directory / "initrd.gz")
        for part in (image.kernel, image.initrd):
            if not part.is_file():
                raise WorkspaceError(
                    f"the VM guest is not built: {part} is missing",
                    hint="run `make guest` (or set LOFT_VM_GUEST to where it was built)",
                )
        return image


def accelerator(setting: str | None = None) -> str:
    """``kvm`` or ``tcg`` from ``setting`` (default ``LOFT_VM_ACCEL``, else ``tcg``):
    ``auto`` takes KVM when ``/dev/kvm`` opens and is not PVM, whose KVM stock Debian
    kernels do not boot under."""
    value = setting or os.environ.get("LOFT_VM_ACCEL") or "tcg"
    if value not in ("auto", "kvm", "tcg"):
        raise WorkspaceError(f"bad VM accelerator {value!r}", hint="use auto, kvm or tcg")
    if value == "auto":
        usable = (
            os.access("/dev/kvm", os.R_OK | os.W_OK) and not Path("/sys/module/kvm_pvm").exists()
        )
        return "kvm" if usable else "tcg"
    return value


@dataclass(frozen=True)
class Machine:
    """One VM's QEMU: its memory, the files in its private directory ``dir``, its disk
    (export ``export`` of the NBD server on Unix socket ``nbd_socket``)."""

    dir: Path
    memory: int
    nbd_socket: Path
    export: str
    accel: str = "tcg"
    #: A snapshot's RAM image mapped privately (``share=off``) instead of the VM's own
    #: RAM file: the image stays unchanged however many VMs start from it.
    ram_image: Path | None = None
    #: The environment's image and its store path name (none: the initramfs's tools).
    env_disk: Path | None = None
    env_name: str = ""
    #: The NIC's MAC, for a VM with outbound networking (:func:`loft.runtime.vm_net.guest_mac`);
    #: None: no NIC.
    mac: str | None = None

    def __post_init__(self) -> None:
        if self.memory < MIN_MEMORY:
            raise WorkspaceError(
                f"a VM needs at least {MIN_MEMORY >> 20} MiB of memory, "
                f"not {self.memory >> 20} MiB",
                hint="raise the workspace's memory limit",
            )
        for sock in (self.qmp, self.agent, self.nbd_socket):
            if len(str(sock).encode()) > _MAX_SOCKET_PATH:
                raise WorkspaceError(f"socket path too long for Unix sockets: {sock}",
                                     hint="use a shorter data dir")  # fmt: skip

    @property
    def ram(self) -> Path:
        return self.ram_image or self.dir / "ram"

    @property
    def ram_shared(self) -> bool:
        """Whether QEMU writes guest RAM through to :attr:`ram` (and a save may skip it)."""
        return self.ram_image is None

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "agent.sock"

    @property
    def memory_mib(self) -> int:
        return (self.memory + (1 << 20) - 1) >> 20


def qemu_argv(machine: Machine, guest: GuestImage, *, incoming: bool = False) -> list[str]:
    """QEMU's arguments for ``machine``: a boot, or with ``incoming`` a machine waiting
    for a migration stream (``migrate-incoming``) with the same devices."""
    m = machine
    disk = {
        "driver": "nbd",
        "node-name": "disk0",
        "server": {"type": "unix", "path": str(m.nbd_socket)},
        "export": m.export,
        "cache": {"direct": False, "no-flush": False},
    }
    argv = [
        "qemu-system-x86_64",
        "-M", "microvm,memory-backend=mem",
        "-accel", m.accel,
        "-cpu", "max" if m.accel == "kvm" else "qemu64",
        "-smp", "1",
        "-m", f"{m.memory_mib}M",
        "-object", f"memory-backend-file,id=mem,size={m.memory_mib}M,mem-path={m.ram},"
                   f"share={'on' if m.ram_shared else 'off'}",
        "-nodefaults", "-no-reboot", "-nographic", "-no-user-config",
        "-kernel", str(guest.kernel),
        "-initrd", str(guest.initrd),
        "-append", _cmdline(m),
        "-chardev", f"ringbuf,id=console,size={CONSOLE_BYTES}",
        "-serial", "chardev:console",
        "-blockdev", json.dumps(disk),
        "-device", "virtio-blk-device,drive=disk0",
        *(_env_disk(m.env_disk) if m.env_disk else ()),
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent,path={m.agent},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
        "-qmp", f"unix:{m.qmp},server=on,wait=off",
    ]  # fmt: skip
    if m.mac is not None:
        argv += [
            "-netdev", f"tap,id=net0,ifname={TAP},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={m.mac}",
        ]  # fmt: skip
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def _cmdline(m: Machine) -> str:
    """The guest kernel's command line: the plans its init reads (an environment disk's
    store path name, the network) behind the fixed part."""
    extra = ([f"loft.env={m.env_name}"] if m.env_disk else []) + ([KERNEL_ARG] if m.mac else [])
    return " ".join([_CMDLINE, *extra])


def _env_disk(image: Path) -> list[str]:
    """The environment's image as the second virtio disk (the guest's ``vdb``):
    read-only in QEMU, so a write from the guest fails whatever it remounts."""
    node = {
        "driver": "raw",
        "node-name": "env0",
        "read-only": True,
        "file": {"driver": "file", "filename": str(image), "read-only": True},
    }
    return [
        "-blockdev",
        json.dumps(node),
        "-device",
        f"virtio-blk-device,drive=env0,serial={ENV_SERIAL}",
    ]

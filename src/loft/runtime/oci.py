"""The OCI bundle config (``config.json``) of a workspace and the process of each exec:
pure functions of the typed inputs, testable without runc.

What each part enforces (docs/security.md, "Workspace sandboxes (runc)"):

- **namespaces**: user (the workspace's own host range, 0..65535 -> ``ids.host``…; host
  root is not mapped), pid, mount, ipc, uts, cgroup and network (a new one: runc brings
  up ``lo`` and nothing else);
- **capabilities**: Docker's default set minus what a dev box does not need
  (:data:`CAPABILITIES`), for root inside only; every other user has none; the init has
  none at all; ``noNewPrivileges`` everywhere, so setuid files and file capabilities on
  the volume give nothing;
- **seccomp**: loft's deny list (:mod:`loft.runtime.oci_seccomp`);
- **/proc and /sys**: Docker's masked and read-only paths (:data:`MASKED_PATHS`,
  :data:`READONLY_PATHS`); /sys read-only;
- **devices**: the cgroup allows only runc's defaults (null, zero, full, random,
  urandom, tty, ptmx, the container's own pts); no CAP_MKNOD;
- **cgroups**: ``linux.resources`` (memory without swap beyond it, CPU quota, pids),
  which runc writes for cgroup v1 or v2 as the host has them; the cgroup is
  ``/loft/<id>``;
- **mounts**: the environment read-only at /usr and each closure path at
  ``/nix/store/<name>``, read-only, nosuid, nodev; a tmpfs /tmp, /run and /nix/store;
  the rest of the tree is the workspace's own filesystem (persistent).

The container's PID 1 is ``catatonit -P`` (the host's, static, bound read-only at
:data:`INIT_PATH`): it reaps orphans and keeps the container up with no exec attached,
and needs nothing from the environment.
"""

from __future__ import annotations

from typing import Any

from loft.runtime.layout import RuntimeDirs
from loft.runtime.oci_seccomp import oci_seccomp
from loft.runtime.spec import RUNNER_UID, ExecRequest, WindowSize, WorkspaceSpec

__all__ = [
    "CAPABILITIES",
    "INIT_PATH",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "bundle_config",
    "cgroup_path",
    "process_config",
]

OCI_VERSION = "1.0.2"
#: Where the container's init is bound (a tmpfs: nothing is left on the volume).
INIT_PATH = "/run/loft/init"
#: Root's capabilities inside. Docker's default set minus: NET_RAW (raw and packet
#: sockets: forged packets; ping works through ICMP datagram sockets, see the sysctl
#: below), MKNOD (device nodes; none would work in a user namespace anyway), AUDIT_WRITE
#: (the kernel's audit log is the host's), SETFCAP (file capabilities would persist on the
#: volume and travel with it), SYS_CHROOT (chroot is denied by seccomp anyway). What is
#: left is what package managers and servers use: files of other users, setuid/setgid to
#: other users inside, signals, ports below 1024.
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
)  # fmt: skip
#: Files and directories of /proc and /sys that describe or act on the host, covered
#: (runc binds /dev/null on files and an empty read-only tmpfs on directories).
MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/firmware", "/sys/devices/virtual/powercap",
)  # fmt: skip
#: Kernel settings and triggers, read-only.
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
_NAMESPACES = ("user", "pid", "mount", "ipc", "uts", "cgroup", "network")
_UMASK = 0o022  # what a login gives on Debian
_CPU_PERIOD = 100_000  # microseconds: the kernel's default CFS period
_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_RO = ["ro", "nosuid", "nodev"]


def cgroup_path(workspace: str) -> str:
    """The workspace's cgroup, below each controller's root (v1) or the unified root."""
    return f"/loft/{workspace}"


def _mounts(spec: WorkspaceSpec, dirs: RuntimeDirs, init: str) -> list[dict[str, Any]]:
    tmp_size = f"size={spec.limits.memory}"  # tmpfs pages are charged to the workspace
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                     "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", tmp_size]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", tmp_size]},
        {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755", "size=65536k"]},
        {"destination": INIT_PATH, "type": "bind", "source": init,
         "options": ["bind", *_RO]},
        # The environment under an empty local/ (see layout.staged), read-only.
        {"destination": "/usr", "type": "bind", "source": str(dirs.usr(spec.id)),
         "options": ["bind", *_RO]},
        # The volume's own /usr/local back over the environment's (see layout.staged).
        {"destination": "/usr/local", "type": "bind", "source": str(dirs.local(spec.id)),
         "options": ["bind", "nosuid", "nodev"]},
        {"destination": "/nix/store", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755", "size=1m"]},
    ]  # fmt: skip
    for path in sorted(spec.env.closure):
        source = dirs.store(spec.id) / spec.env.basename(path)
        mounts.append({"destination": path, "type": "bind", "source": str(source),
                       "options": ["bind", *_RO]})  # fmt: skip
    return mounts


def _resources(spec: WorkspaceSpec) -> dict[str, Any]:
    limits = spec.limits
    return {
        # memory.swap is memory + swap (v1 semantics; runc converts for v2): no swap.
        "memory": {"limit": limits.memory, "swap": limits.memory},
        "cpu": {"quota": int(limits.cpus * _CPU_PERIOD), "period": _CPU_PERIOD},
        "pids": {"limit": limits.pids},
        # Deny every device but runc's defaults, which it appends after this rule.
        "devices": [{"allow": False, "access": "rwm"}],
    }


def _capabilities(uid: int) -> dict[str, list[str]]:
    caps = list(CAPABILITIES) if uid == 0 else []
    # The bounding set is the same for everyone, so nothing exec'd can hold more.
    return {"bounding": list(CAPABILITIES), "effective": caps, "permitted": caps,
            "inheritable": [], "ambient": []}  # fmt: skip


def bundle_config(spec: WorkspaceSpec, dirs: RuntimeDirs, init: str) -> dict[str, Any]:
    """``config.json`` for ``spec``; ``init`` is the host path of ``catatonit``."""
    idmap = [{"containerID": 0, "hostID": spec.ids.host, "size": spec.ids.size}]
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0, "umask": _UMASK},
            "args": [INIT_PATH, "-P"],
            "env": [f"PATH={_BASE_PATH}"],
            "cwd": "/",
            "capabilities": {
                k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")
            },
            "noNewPrivileges": True,
        },
        "root": {"path": str(dirs.rootfs(spec.id)), "readonly": False},
        "hostname": spec.host_name,
        "mounts": _mounts(spec, dirs, init),
        "linux": {
            "uidMappings": idmap,
            "gidMappings": idmap,
            "namespaces": [{"type": t} for t in _NAMESPACES],
            "cgroupsPath": cgroup_path(spec.id),
            "resources": _resources(spec),
            # Unprivileged ICMP echo (ping) without CAP_NET_RAW, in its own network only.
            "sysctl": {"net.ipv4.ping_group_range": "0 65535"},
            "seccomp": oci_seccomp(),
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _environment(req: ExecRequest, tty: bool) -> list[str]:
    name = "root" if req.user == 0 else "runner" if req.user == RUNNER_UID else str(req.user)
    env = {
        "PATH": _ROOT_PATH if req.user == 0 else _BASE_PATH,
        "HOME": req.home,
        "USER": name,
        "LOGNAME": name,
        "LANG": "C.UTF-8",
        "SHELL": "/bin/bash",
        # As in `loft env run`: npm packages are a forest of links into the store.
        "NODE_PATH": "/usr/lib/node_modules",
        "NODE_PRESERVE_SYMLINKS": "1",
        **({"TERM": "xterm-256color"} if tty else {}),
        **req.env,
    }
    return [f"{k}={v}" for k, v in env.items()]


def process_config(req: ExecRequest, size: WindowSize | None = None) -> dict[str, Any]:
    """The OCI process of ``runc exec --process`` for ``req``; with ``size``, on a
    terminal of that size."""
    process: dict[str, Any] = {
        "terminal": size is not None,
        # Applied by runc to an init only; RuncCli.exec sets it on runc for an exec.
        "user": {"uid": req.user, "gid": req.user, "umask": _UMASK},
        "args": list(req.argv),
        "env": _environment(req, size is not None),
        "cwd": req.cwd or req.home,
        "capabilities": _capabilities(req.user),
        "noNewPrivileges": True,
    }
    if size is not None:
        process["consoleSize"] = {"height": size.rows, "width": size.cols}
    return process

"""bubblewrap sandboxes: the unpack jail and the environment runner.

Both start from an empty root (bubblewrap's tmpfs, read-only once set up), get pid, ipc,
network (so no network), uts and cgroup namespaces of their own, die with their parent,
see only what is bound in explicitly, and share one hardening:

- no capability in any set (``--cap-drop ALL``) and no_new_privs (bubblewrap sets it);
- the seccomp filter of :mod:`loft.isolation.seccomp`, installed before the command runs;
- a fresh ``/proc`` that is read-only as a whole (``/proc/sys``, ``/proc/sysrq-trigger``,
  every ``/proc/PID`` file), with the kernel-wide files that describe the host masked;
  no ``/sys``;
- a host uid that is unprivileged and owns nothing, also when loft runs as root: the
  runner joins a user namespace that maps ids 0..65535 onto
  :data:`~loft.isolation.userns.ENV_RUN_IDS` (see :class:`Sandbox`), and the jail drops
  to host uid nobody itself (see :func:`_jail`). Run by an ordinary user, bubblewrap's
  own user namespace maps the sandbox's uid to that user, and no nested one is allowed.

In the runner the command is PID 1 (``--as-pid-1``, as Docker runs a container without
``--init``): bubblewrap's own init would show bubblewrap's command line (the store's
physical paths) and loft's environment in ``/proc/1``. The jail keeps that init: there
it runs as host root without capabilities, out of the reach of the jail's nobody, and
it is what takes the jail down when loft dies (the kernel lets bubblewrap, root, signal
its root init but not a process that ``setpriv`` made nobody).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loft.envstore import EnvstoreError
from loft.isolation.mountns import readonly_bind_in_new_namespace
from loft.isolation.seccomp import compile_filter
from loft.isolation.userns import ENV_RUN_IDS, IdRange, drop_to, user_namespace

__all__ = [
    "NOBODY",
    "RUNNER_UID",
    "Sandbox",
    "SandboxError",
    "bwrap",
    "env_runner",
    "jail_writable",
    "tool_jail",
    "unpack_jail",
]

#: The uid/gid an unpack runs as: nobody, owning nothing.
NOBODY = 65534
#: The uid/gid commands run as in ``loft env run``.
RUNNER_UID = 1000
RUNNER_HOME = "/home/runner"
_MERGED_LINKS = {"/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin"}
#: Kernel-wide /proc files that describe the host (its tasks, timers, keys, memory) or act
#: on it. Each is covered with /dev/null, which cannot even be opened there (nodev). With
#: the directories below, these are Docker's masked paths.
_PROC_MASKED_FILES = ("kcore", "keys", "key-users", "latency_stats", "sched_debug",
                      "sysrq-trigger", "timer_list", "timer_stats")  # fmt: skip
_PROC_MASKED_DIRS = ("acpi", "asound", "scsi")
#: Where the runner's bind sources are when loft runs as root (see :class:`Sandbox`).
_STAGE = "/tmp"


class SandboxError(EnvstoreError):
    """bubblewrap is missing or refused to start."""


def bwrap() -> str:
    """The bubblewrap binary."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxError("bubblewrap (bwrap) is not installed", hint="run `make deps`")
    return exe


@dataclass(frozen=True)
class Sandbox:
    """bubblewrap's arguments (options, ``--``, the command) and what it needs to start.

    ``ids``: run as ``uid`` in a user namespace that root makes, mapping ids 0.. onto this
    host range (bubblewrap's own, made as root, would map ``uid`` to host root).
    bubblewrap itself then runs as the host id of ``uid``, the namespace's owner: it may
    join the namespace, and can kill the sandbox when loft dies (``--die-with-parent``;
    the kernel allows that signal only between processes of one uid).

    ``stage``: that uid cannot look paths up in the data dir (0700, root's), and
    bubblewrap resolves the sources of its binds as that uid. So bubblewrap's process gets
    a mount namespace of its own just before it starts, with ``stage`` bound read-only at
    :data:`_STAGE`, and the sources name paths there. (bubblewrap then mounts the new
    root's tmpfs over /tmp, and finds the sources under its old root, below that tmpfs.)
    """

    args: tuple[str, ...]
    ids: IdRange | None = None
    uid: int = RUNNER_UID
    stage: Path | None = None

    def run(self, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Start bubblewrap and wait for it; ``kwargs`` go to :func:`subprocess.run`."""
        with contextlib.ExitStack() as stack:
            # A fresh file per sandbox: bubblewrap reads it from the current offset.
            seccomp_fd = os.memfd_create("loft-seccomp")
            stack.callback(os.close, seccomp_fd)
            os.write(seccomp_fd, compile_filter())
            os.lseek(seccomp_fd, 0, os.SEEK_SET)
            fds, opts = [seccomp_fd], ["--seccomp", str(seccomp_fd)]
            before_exec: list[Callable[[], None]] = []
            if self.stage is not None:
                before_exec.append(readonly_bind_in_new_namespace(self.stage, _STAGE))
            if self.ids is not None:
                host_uid = self.ids.host_id(self.uid)
                userns_fd = stack.enter_context(user_namespace(self.ids, host_uid))
                fds.append(userns_fd)
                opts += ["--userns", str(userns_fd)]
                before_exec.append(lambda: drop_to(host_uid))
            if before_exec:
                kwargs["preexec_fn"] = lambda: [step() for step in before_exec]
            return subprocess.run([bwrap(), *opts, *self.args], pass_fds=fds, **kwargs)


def _namespaces(uid: int | None) -> list[str]:
    """Namespaces, uid and capabilities: ``uid`` in a user namespace (joined, see
    :class:`Sandbox`, or bubblewrap's own when not root), or None for root's jail, which
    has none and keeps just what ``setpriv`` needs to drop to nobody (:func:`_jail`)."""
    argv = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += ["--unshare-cgroup-try", "--cap-drop", "ALL"]
    if uid is None:
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
            argv += ["--cap-add", cap]
        return argv
    if os.geteuid() != 0:
        argv += ["--unshare-user", "--disable-userns"]
    return [*argv, "--uid", str(uid), "--gid", str(uid)]


def _proc() -> list[str]:
    """A fresh /proc, read-only, with the host's kernel-wide files masked (its entries
    outside /proc/PID are the kernel's, so the host's /proc says which exist)."""
    argv = ["--proc", "/proc"]
    for name in _PROC_MASKED_FILES:
        if os.path.exists(f"/proc/{name}"):
            argv += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in _PROC_MASKED_DIRS:
        if os.path.isdir(f"/proc/{name}"):
            argv += ["--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
    return [*argv, "--remount-ro", "/proc"]


def _common(uid: int | None) -> list[str]:
    """What both sandboxes share up to their own mounts (see the module docstring)."""
    argv = _namespaces(uid)
    argv += ["--die-with-parent", "--new-session", "--hostname", "loft"]
    argv += [*_proc(), "--dev", "/dev"]
    if uid is None:  # a 0755 /tmp would be root's alone, and the jail drops to nobody
        argv += ["--perms", "1777"]
    argv += ["--tmpfs", "/tmp"]
    for link, target in _MERGED_LINKS.items():
        argv += ["--symlink", target, link]
    return argv


def _jail(
    inputs: Path,
    out: Path,
    *,
    binds: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """The unpack jail up to its command: the host's /usr (trusted tools) read-only,
    ``inputs`` read-only at /jail/in, ``out`` (see :func:`jail_writable`) writable at
    /jail/out and the working directory, ``binds`` (more bubblewrap mount options), a
    clean environment plus ``env``; no network, uid nobody.

    Unprivileged, bubblewrap's user namespace makes the jail uid nobody. As root, that
    namespace would map the jail's uid to root on the host, so the jail is built without
    one and its first process drops to host uid nobody itself (:data:`_DROP_TO_NOBODY`).
    """
    as_root = os.geteuid() == 0
    argv = _common(None if as_root else NOBODY)
    if as_root:
        # Directories bubblewrap makes on its own for mount points are root's alone
        # (0700): nobody must be able to reach /jail/*.
        argv += ["--perms", "0755", "--dir", "/jail"]
    argv += ["--ro-bind", "/usr", "/usr", "--clearenv", "--setenv", "PATH", "/usr/bin"]
    for k, v in {"LC_ALL": "C.UTF-8", **(env or {})}.items():
        argv += ["--setenv", k, v]
    argv += ["--ro-bind", str(inputs), "/jail/in", "--bind", str(out), "/jail/out", *binds]
    argv += ["--chdir", "/jail/out", "--remount-ro", "/", "--"]
    return [*argv, *(_DROP_TO_NOBODY if as_root else [])]


#: The host's setpriv (util-linux, in every Debian) makes the jail's first process
#: uid/gid nobody on the host, with no supplementary groups and no capabilities left in
#: any set; bubblewrap has set no_new_privs, so nothing run later can regain them.
_DROP_TO_NOBODY = [
    "/usr/bin/setpriv",
    f"--reuid={NOBODY}",
    f"--regid={NOBODY}",
    "--clear-groups",
    "--inh-caps=-all",
    "--bounding-set=-all",
    "--",
]


def jail_writable(path: Path) -> None:
    """Create ``path`` for the jail to write into: owned by nobody when loft runs as root
    (what the jail leaves is chowned back to root when it is canonicalised), and 0755
    whatever loft's umask: bubblewrap, root without capabilities by then, enters it as
    the jail's working directory. It stays inside the private scratch space."""
    path.mkdir(exist_ok=True)
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)


def unpack_jail(helper: Path, kind: str, artefact: Path, out: Path, extra: str) -> Sandbox:
    """The jail (:func:`_jail`) an artefact is unpacked in by the helper script."""
    # The helper is its source (.py) or its bytecode (.pyc); python tells them apart by name.
    jailed = f"/jail/helper{helper.suffix}"
    argv = _jail(artefact, out, binds=["--ro-bind", str(helper), jailed])
    command = ["/usr/bin/python3", "-I", "-S", jailed, kind, "/jail/in", "/jail/out", extra]
    return Sandbox((*argv, *command))


def tool_jail(inputs: Path, out: Path, command: list[str]) -> Sandbox:
    """The jail (:func:`_jail`) running a trusted host tool over untrusted inputs, without
    host configuration (``OPENSSL_CONF=/dev/null``)."""
    return Sandbox((*_jail(inputs, out, env={"OPENSSL_CONF": "/dev/null"}), *command))


def env_runner(
    real_store_dir: Path,
    env_path: str,
    closure: Iterable[str],
    etc_entries: Iterable[str],
    command: list[str],
    *,
    extra_env: Mapping[str, str] | None = None,
    ids: IdRange = ENV_RUN_IDS,
) -> Sandbox:
    """Run ``command`` with the environment at /usr and only its closure under /nix/store.

    ``closure`` holds store paths whose directories are in ``real_store_dir``; each is
    bound read-only on its own (never the whole store). /etc is a tmpfs whose entries
    point into the environment's ``etc``, so a workspace can still write /etc. As root,
    the command's ids 0.. are the host ids ``ids``.
    """
    as_root = os.geteuid() == 0
    sources = _STAGE if as_root else str(real_store_dir)
    # The command is PID 1 (see the module docstring).
    argv = [*_common(RUNNER_UID), "--as-pid-1", "--dir", "/nix/store"]
    for path in sorted(closure):
        argv += ["--ro-bind", f"{sources}/{os.path.basename(path)}", path]
    argv += ["--ro-bind", f"{sources}/{os.path.basename(env_path)}", "/usr", "--tmpfs", "/etc"]
    for entry in sorted(etc_entries):
        argv += ["--symlink", f"/usr/etc/{entry}", f"/etc/{entry}"]
    argv += ["--tmpfs", "/home", "--dir", RUNNER_HOME, "--chdir", RUNNER_HOME]
    argv += ["--tmpfs", "/var/tmp"]
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": RUNNER_HOME,
        "USER": "runner",
        "LANG": "C.UTF-8",
        "SHELL": "/bin/sh",
        # npm packages live in /usr/lib/node_modules as a forest of links into the store;
        # keep node's module paths on that side so nested node_modules resolve.
        "NODE_PATH": "/usr/lib/node_modules",
        "NODE_PRESERVE_SYMLINKS": "1",
        **(extra_env or {}),
    }
    argv += ["--clearenv"]
    for k, v in sorted(env.items()):
        argv += ["--setenv", k, v]
    argv += ["--remount-ro", "/", "--", *command]
    if not as_root:
        return Sandbox(tuple(argv))
    return Sandbox(tuple(argv), ids=ids, stage=real_store_dir)

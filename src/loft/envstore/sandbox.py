"""bubblewrap command lines: the unpack jail and the environment runner.

Both start from an empty root (bubblewrap's tmpfs), unshare every namespace (so no
network), run as an unprivileged uid, die with their parent, and see only what is bound in
explicitly. The unpack jail's uid is unprivileged on the host too, also when loft runs
as root (see :func:`_jail`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from loft.envstore import EnvstoreError

__all__ = [
    "NOBODY",
    "SandboxError",
    "bwrap",
    "env_argv",
    "jail_writable",
    "tool_argv",
    "unpack_argv",
]

#: The uid/gid an unpack runs as: nobody, owning nothing.
NOBODY = 65534
#: The uid/gid commands run as in ``loft env run``.
RUNNER_UID = 1000
RUNNER_HOME = "/home/runner"
_MERGED_LINKS = {"/bin": "usr/bin", "/lib": "usr/lib", "/lib64": "usr/lib64", "/sbin": "usr/sbin"}


class SandboxError(EnvstoreError):
    """bubblewrap is missing or refused to start."""


def bwrap() -> str:
    """The bubblewrap binary."""
    exe = shutil.which("bwrap")
    if exe is None:
        raise SandboxError("bubblewrap (bwrap) is not installed", hint="run `make deps`")
    return exe


def _common(uid: int | None) -> list[str]:
    """Namespaces, /proc, /dev, /tmp and the usr-merge links. ``uid`` inside a fresh
    user namespace, or None for none at all (root's unpack jail, see :func:`_jail`)."""
    if uid is None:
        argv = [bwrap(), "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv = [bwrap(), "--unshare-all", "--uid", str(uid), "--gid", str(uid)]
    argv += ["--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
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
    return [*argv, "--chdir", "/jail/out", "--", *(_DROP_TO_NOBODY if as_root else [])]


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
    (what the jail leaves is chowned back to root when it is canonicalised)."""
    path.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)


def unpack_argv(helper: Path, kind: str, artefact: Path, out: Path, extra: str) -> list[str]:
    """The jail (:func:`_jail`) an artefact is unpacked in by the helper script."""
    # The helper is its source (.py) or its bytecode (.pyc); python tells them apart by name.
    jailed = f"/jail/helper{helper.suffix}"
    argv = _jail(artefact, out, binds=["--ro-bind", str(helper), jailed])
    return [*argv, "/usr/bin/python3", "-I", "-S", jailed, kind, "/jail/in", "/jail/out", extra]


def tool_argv(inputs: Path, out: Path, command: list[str]) -> list[str]:
    """The jail (:func:`_jail`) running a trusted host tool over untrusted inputs, without
    host configuration (``OPENSSL_CONF=/dev/null``)."""
    return [*_jail(inputs, out, env={"OPENSSL_CONF": "/dev/null"}), *command]


def env_argv(
    env_physical: Path,
    closure: Mapping[str, Path],
    etc_entries: Iterable[str],
    command: list[str],
    *,
    extra_env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run ``command`` with the environment at /usr and only its closure under /nix/store.

    ``closure`` maps each logical store path to its physical directory; each is bound
    read-only on its own (never the whole store). /etc is a tmpfs whose entries point
    into the environment's ``etc``, so a workspace can still write /etc.
    """
    argv = _common(RUNNER_UID)
    argv += ["--dir", "/nix/store"]
    for logical, physical in sorted(closure.items()):
        argv += ["--ro-bind", str(physical), logical]
    argv += ["--ro-bind", str(env_physical), "/usr", "--tmpfs", "/etc"]
    for entry in sorted(etc_entries):
        argv += ["--symlink", f"/usr/etc/{entry}", f"/etc/{entry}"]
    argv += ["--tmpfs", "/home", "--dir", RUNNER_HOME, "--chdir", RUNNER_HOME, "--dir", "/var/tmp"]
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
    return [*argv, "--", *command]

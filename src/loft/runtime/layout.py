"""Where the sandbox runtime keeps things under the data dir, and how runc gets its root.

::

    $LOFT_DATA_DIR/                 0711 root   (search only: see loft.datadir)
      runtime/                      0700 root
        runc/                       0700 root   runc --root: what runs (runc state, list)
        bundles/<id>/               0700 root   config.json, workspace.json, init.pid, logs
        usr-top/local/              0755 root   an empty directory: the top layer of /usr
      workspaces/                   0711 root   (shared with loft.runtime.attach)
        <id>/                       0711 root   (or root:GID 0710: see attach.py)
          sandbox/                  0700 H      H = the workspace's mapped root on the host
            rootfs/                 empty on the host; see below
            store/                  empty on the host; see below
            local/                  empty on the host; see below
            usr/                    empty on the host; see below

**The stage.** runc's init runs as the workspace's mapped root (host uid H, no privilege
outside its user namespace) when it mounts the container's root and binds, so it can only
reach paths every directory of which it may search: hence 0711 down to ``<id>``, and
``sandbox`` which only H may enter (not another workspace's root, not another local
account). Nothing is mounted there on the host: :func:`staged` makes two *detached*
mounts as root — the workspace's filesystem, idmapped onto H's range, nosuid, nodev
(:func:`loft.isolation.idmap.idmapped_clone`), and the physical store directory, read-only
— and ``runc create`` attaches them on ``rootfs/`` and ``store/`` in a mount namespace of
its own (``preexec_fn``), which the container's copies. A third, the volume's own
``/usr/local`` idmapped the same way, goes on ``local/``, from where runc binds it over
``/usr/local``: inside the container, once the environment covers the volume's ``/usr``,
nothing else could reach it (:mod:`loft.runtime.rootfs_layout`). An environment has no
``local`` directory to bind it on, and a read-only one cannot get it, so ``/usr`` is a
read-only overlay (no upper layer) mounted on ``usr/``: ``usr-top``, which holds just an
empty ``local``, over the environment. So the host's mount table never
holds a workspace's files through the stage (no other account or process can walk into
them, and no mount is ever left behind, whatever fails), and when runc has pivoted into
the root, the store directory is gone from the container but for the closure's paths it
bound.

The host-side ``rootfs/`` path must still exist: runc starts its init, for ``create`` and
every ``exec``, with that path as working directory (as root, before it joins anything).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loft import libc
from loft.datadir import search_only_dir
from loft.isolation.idmap import (
    MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
    attach,
    detached_bind,
    idmapped_clone,
)
from loft.isolation.userns import user_namespace
from loft.runtime.errors import WorkspaceError
from loft.runtime.spec import WorkspaceSpec, check_workspace_id

__all__ = ["MERGED_LINKS", "RuntimeDirs", "Stage", "check_rootfs", "merge_usr", "staged"]

#: The usr-merge links a workspace's root needs so /usr (the environment) is the system's
#: programs and libraries: the dynamic loader is /lib64/ld-linux-*.so.2 by ELF header.
MERGED_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}


@dataclass(frozen=True)
class RuntimeDirs:
    """The runtime's directories under ``data_dir`` (see the module docstring)."""

    data_dir: Path

    @property
    def root(self) -> Path:
        return self.data_dir / "runtime"

    @property
    def runc_root(self) -> Path:
        return self.root / "runc"

    def bundle(self, workspace: str) -> Path:
        return self.root / "bundles" / check_workspace_id(workspace)

    def workspace(self, workspace: str) -> Path:
        """``workspaces/<id>``, which :mod:`loft.runtime.attach` may have made first."""
        return self.data_dir / "workspaces" / check_workspace_id(workspace)

    def stage(self, workspace: str) -> Path:
        return self.workspace(workspace) / "sandbox"

    def rootfs(self, workspace: str) -> Path:
        return self.stage(workspace) / "rootfs"

    def store(self, workspace: str) -> Path:
        return self.stage(workspace) / "store"

    def local(self, workspace: str) -> Path:
        return self.stage(workspace) / "local"

    def usr(self, workspace: str) -> Path:
        return self.stage(workspace) / "usr"

    @property
    def usr_top(self) -> Path:
        return self.root / "usr-top"

    def prepare(self, spec: WorkspaceSpec) -> None:
        """Create the directories for ``spec`` with their modes and owners; refuse a data
        dir below a directory the workspace's mapped root may not search."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.data_dir, self.data_dir / "workspaces"):
            search_only_dir(d)
        if not self.workspace(spec.id).exists():  # attach's own modes stay as they are
            search_only_dir(self.workspace(spec.id))
        for d in self.data_dir.resolve().parents:
            if not os.stat(d).st_mode & stat.S_IXOTH:
                raise WorkspaceError(
                    f"{d} above the data dir is closed to other users: a workspace's "
                    "init cannot reach its root filesystem through it",
                    hint=f"chmod o+x {d} (search only), or put the data dir elsewhere",
                )
        for d in (self.root, self.runc_root, self.root / "bundles", self.bundle(spec.id)):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        for d in (self.usr_top, self.usr_top / "local"):
            d.mkdir(mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        stage = self.stage(spec.id)
        stage.mkdir(mode=0o700, exist_ok=True)
        os.chown(stage, spec.ids.host, spec.ids.host)
        os.chmod(stage, 0o700)
        for d in (self.rootfs(spec.id), self.store(spec.id), self.local(spec.id),
                  self.usr(spec.id)):  # fmt: skip
            d.mkdir(mode=0o700, exist_ok=True)

    def remove(self, workspace: str) -> None:
        """Remove a workspace's bundle and stage directories (its container is gone), and
        ``workspaces/<id>`` when nothing else (an attachment) is in it."""
        shutil.rmtree(self.bundle(workspace), ignore_errors=True)
        stage = (self.rootfs(workspace), self.store(workspace), self.local(workspace),
                 self.usr(workspace))  # fmt: skip
        for d in (*stage, self.stage(workspace)):
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()  # empty mount points: never a recursive removal under them
        with contextlib.suppress(OSError):
            self.workspace(workspace).rmdir()


def check_rootfs(rootfs: Path) -> None:
    """Refuse a root filesystem that is not a mount point mounted ``nosuid`` and ``nodev``:
    on disk it holds whatever the tenant wrote, setuid-root files and device nodes
    included, and its host-side mount must give them no power."""
    if not os.path.ismount(rootfs):
        raise WorkspaceError(f"{rootfs} is not a mount point",
                             hint="mount the workspace's filesystem there first")  # fmt: skip
    flags = os.statvfs(rootfs).f_flag
    if not (flags & os.ST_NOSUID and flags & os.ST_NODEV):
        raise WorkspaceError(f"{rootfs} is mounted without nosuid or nodev",
                             hint="mount it with -o nosuid,nodev")  # fmt: skip


def merge_usr(rootfs: Path) -> None:
    """Create the usr-merge links (:data:`MERGED_LINKS`) at the top of the workspace's
    filesystem where nothing of that name exists; a tenant's own file or link stays.

    Each is made by ``symlinkat`` in a descriptor of the mount's root directory: one
    name, no path to resolve, so nothing the tenant wrote can redirect it."""
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name, target in MERGED_LINKS.items():
            with contextlib.suppress(FileExistsError):
                os.symlink(target, name, dir_fd=fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Stage:
    """The detached mounts for one ``runc create`` and the ``preexec_fn`` attaching them."""

    fds: tuple[int, ...]
    enter: Callable[[], None]


def _usr_local(rootfs: Path) -> int:
    """An ``O_PATH`` descriptor of the volume's ``usr/local``, made if missing, opened one
    name at a time without following links: it is the tenant's filesystem, and a link
    there must not lead the host anywhere else."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(rootfs, flags)
    try:
        for name in ("usr", "local"):
            made = False
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, dir_fd=fd)
                made = True
            try:
                child = os.open(name, flags, dir_fd=fd)
                if made:  # 0755 whatever the agent's umask (077)
                    os.chmod(f"/proc/self/fd/{child}", 0o755)
            except OSError as e:  # ELOOP (a link) or ENOTDIR (a file)
                raise WorkspaceError(
                    f"the workspace's /{'usr/local' if name == 'local' else 'usr'} on its "
                    f"volume is not a directory ({os.strerror(e.errno or 0)})",
                    hint="restore a snapshot from before it changed",
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def staged(spec: WorkspaceSpec, dirs: RuntimeDirs) -> Iterator[Stage]:
    """The stage for starting ``spec`` (see the module docstring); the detached mounts
    are closed on exit, and with them anything runc did not take into its container."""
    trees: list[int] = []
    try:
        local = _usr_local(spec.rootfs)
        try:
            with user_namespace(spec.ids, spec.ids.host) as userns_fd:
                flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
                trees.append(idmapped_clone(spec.rootfs, userns_fd, flags))
                trees.append(idmapped_clone(local, userns_fd, flags))
        finally:
            os.close(local)
        ro = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        trees.append(detached_bind(spec.env.store_dir, ro))
    except BaseException:
        for fd in trees:
            os.close(fd)
        raise
    root, local_tree, store = trees
    rootfs, store_dir, local_dir = dirs.rootfs(spec.id), dirs.store(spec.id), dirs.local(spec.id)
    usr, top = os.fsencode(dirs.usr(spec.id)), os.fsencode(dirs.usr_top)
    env = os.fsencode(spec.env.basename(spec.env.path))
    at = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def enter() -> None:
        # Between fork and exec of runc: system calls only. runc makes missing mount
        # points (/nix/store on a fresh volume, /run/loft) with its umask: the agent's 077
        # would leave /nix its root's alone, and runner unable to reach the closure.
        os.umask(0o022)
        # A mount namespace of its own that receives the host's mount events but sends
        # none back.
        libc.unshare(libc.CLONE_NEWNS, "unshare(CLONE_NEWNS)")
        libc.mount(None, b"/", None, libc.MS_REC | libc.MS_SLAVE, what="mount --make-rslave /")
        attach(root, rootfs)
        attach(store, store_dir)
        attach(local_tree, local_dir)
        # Overlay's layers as /proc/self/fd links (no path to escape in its options),
        # opened in this namespace: it refuses a layer on another namespace's mount.
        lower = (os.open(top, at), os.open(env, at, dir_fd=store))
        layers = "lowerdir=" + ":".join(f"/proc/self/fd/{fd}" for fd in lower)
        readonly = libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV
        libc.mount(b"overlay", usr, b"overlay", readonly, layers.encode(), "mounting /usr")

    try:
        yield Stage(tuple(trees), enter)
    finally:
        for fd in trees:
            os.close(fd)

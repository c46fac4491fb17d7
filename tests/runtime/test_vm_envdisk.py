"""The environment as a VM's read-only disk: the image holds exactly the closure, is
built once and pruned when nothing uses it; in the guest the environment is /usr and
its closure /nix/store, read-only whatever the guest's root does, and a resume finds
the same disk."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from runtime_support import environment, example
from vm_support import BUSYBOX_ENV, Vms, busybox_env, needs_qemu

from loft.runtime.errors import WorkspaceError
from loft.runtime.spec import EnvironmentView, ExecRequest
from loft.runtime.vm_envdisk import build_env_disk

pytestmark = pytest.mark.timeout(600)


def _debugfs(image: Path, request: str) -> str:
    """What ``debugfs`` (userspace, nothing mounted) answers about ``image``."""
    r = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                       timeout=60, check=True)  # fmt: skip
    return r.stdout


def _names(image: Path, directory: str) -> set[str]:
    """The entries of ``directory`` in ``image`` (``ls -p``: /inode/mode/uid/gid/name/...)."""
    lines = _debugfs(image, f"ls -p {directory}").splitlines()
    return {f.split("/")[5] for f in lines if f.startswith("/")} - {".", ".."}


def _renamed(env: EnvironmentView, name: str) -> EnvironmentView:
    """A copy of the one-path environment ``env`` under another store path name."""
    shutil.copytree(env.store_dir / env.basename(env.path), env.store_dir / name, symlinks=True)
    return EnvironmentView(env.store_dir, f"/nix/store/{name}", (f"/nix/store/{name}",))


def test_env_disk_holds_the_closure_and_is_built_once(tmp_path: Path) -> None:
    env = busybox_env(tmp_path / "store")
    cache = tmp_path / "cache"
    disk = build_env_disk(env, cache)
    assert disk.name == BUSYBOX_ENV and disk.path == cache / f"{BUSYBOX_ENV}.img"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(disk.path.stat().st_mode) == 0o600
    assert hashlib.sha256(disk.path.read_bytes()).hexdigest() == disk.sha256
    assert _names(disk.path, "/") == {BUSYBOX_ENV}  # the closure, nothing else
    assert {"busybox", "sh"} <= _names(disk.path, f"/{BUSYBOX_ENV}/bin")
    inode = disk.path.stat().st_ino
    again = build_env_disk(env, cache)
    assert again == disk and again.path.stat().st_ino == inode  # not built again
    assert sorted(p.name for p in cache.iterdir()) == [
        ".lock",
        f"{BUSYBOX_ENV}.img",
        f"{BUSYBOX_ENV}.sha256",
    ]  # no staging or temporary file left


def test_env_disk_of_an_environment_not_in_the_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    gone = "/nix/store/" + "1" * 32 + "-gone"
    with pytest.raises(WorkspaceError, match="not in this node's store"):
        build_env_disk(EnvironmentView(store, gone, (gone,)), tmp_path / "cache")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".lock"]


def test_env_disk_prunes_only_unused_images_of_gone_environments(tmp_path: Path) -> None:
    store, cache = tmp_path / "store", tmp_path / "cache"
    kept = busybox_env(store)
    unused = _renamed(kept, "2" * 32 + "-unused")
    pinned = _renamed(kept, "3" * 32 + "-pinned")
    disks = {e.path: build_env_disk(e, cache) for e in (kept, unused, pinned)}
    os.link(disks[pinned.path].path, tmp_path / "a-vm-holds-it.img")
    for env in (unused, pinned):  # both leave the store (an env gc)
        shutil.rmtree(store / env.basename(env.path))
    build_env_disk(_renamed(kept, "4" * 32 + "-new"), cache)  # a build prunes
    assert not disks[unused.path].path.exists()
    assert not disks[unused.path].path.with_suffix(".sha256").exists()
    assert disks[pinned.path].path.exists() and disks[kept.path].path.exists()


@pytest.fixture(scope="module")
def debian(tmp_path_factory: pytest.TempPathFactory) -> EnvironmentView:
    return environment(example(tmp_path_factory))


def _root(node: Vms, ws: str, script: str) -> tuple[int, str]:
    done = node.runtime.run(ws, ExecRequest(("sh", "-c", script), user=0, cwd="/"), timeout=60)
    return done.status, (done.stdout + done.stderr).decode()


#: Sets ``dev`` to the guest's environment disk (the virtio disk of serial loft-env).
_ENV_DEV = (
    'for b in /sys/block/vd*; do [ "$(cat $b/serial)" = loft-env ] && dev=/dev/${b##*/}; done'
)


@pytest.mark.serial
@needs_qemu
def test_vm_guest_root_cannot_change_its_environment(node: Vms) -> None:
    spec = node.spec()
    node.runtime.start(spec)
    try:
        assert _root(node, spec.id, "command -v mount blockdev dd >/dev/null")[0] == 0
        assert _root(node, spec.id, f"{_ENV_DEV}; [ -b $dev ]")[0] == 0
        for attack in (
            "touch /usr/bin/evil",
            "echo x > /nix/store/evil",
            "mount -o remount,rw /nix/store && touch /nix/store/evil",
            # the kernel's read-only flag cleared: QEMU still refuses the write
            f"{_ENV_DEV}; blockdev --setrw $dev; "
            "dd if=/dev/zero of=$dev bs=4096 count=16 oflag=direct conv=fsync",
        ):
            assert _root(node, spec.id, attack)[0] != 0, attack
        image = node.runtime.dir(spec.id) / "env.img"
        cached = node.runtime.envs / f"{BUSYBOX_ENV}.sha256"
        assert hashlib.sha256(image.read_bytes()).hexdigest() == cached.read_text().strip()
        assert _root(node, spec.id, "grep ' /usr ' /proc/mounts")[1].split()[3].startswith("ro")
    finally:
        node.runtime.stop(spec.id)


@pytest.mark.serial
@needs_qemu
def test_vm_runs_a_debian_environment_across_a_resume(node: Vms, debian: EnvironmentView) -> None:
    spec = dataclasses.replace(node.spec(), env=debian)
    node.runtime.start(spec)
    try:
        assert _root(node, spec.id, "python3 -c 'print(6 * 7)'") == (0, "42\n")
        status, listed = _root(node, spec.id, "ls /nix/store")
        assert status == 0
        assert sorted(listed.split()) == sorted(debian.basename(p) for p in debian.closure)
        # /usr/local is the volume's, writable, under the read-only environment
        assert _root(node, spec.id, "echo kept > /usr/local/note && cat /usr/local/note") == (
            0,
            "kept\n",
        )
        node.runtime.suspend(spec.id)
        node.runtime.resume(spec.id)  # a warm resume: a new QEMU, the same disk
        assert _root(node, spec.id, "python3 -c 'import sys; print(sys.prefix)'") == (0, "/usr\n")
        assert _root(node, spec.id, "cat /usr/local/note") == (0, "kept\n")
    finally:
        node.runtime.stop(spec.id)
    assert not node.runtime.dir(spec.id).exists()

"""Suspend images in the chunk store on real QEMU: an upload, then a second one of the
same VM that stores only what changed, a resume from the chunk store alone with the
local image gone, and images that are damaged, cut short, of another workspace or older
than the disk refused with nothing left. One VM at a time."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from vm_support import BUSYBOX_ENV, COUNTER, Vms, needs_qemu, sh

from loft.runtime.errors import WorkspaceError
from loft.runtime.phase import Phase
from loft.runtime.vm_cold import EXTENT_SIZE
from loft.runtime.vm_store import (
    SuspendHeader,
    decode_header,
    encode_header,
    header,
    volume_name,
)

pytestmark = [pytest.mark.serial]

DISK = "d" * 64


@needs_qemu
@pytest.mark.timeout(240)
def test_vm_suspend_upload_is_incremental_and_resumes_from_the_store(node: Vms) -> None:
    rt, bs = node.runtime, node.node.bs
    spec = node.spec()
    rt.start(spec)
    pid = int(sh(node, spec.id, f"setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 & "
                                 "echo $!"))  # fmt: skip
    # 32 MiB nothing else holds (random), so the first upload has to store it
    sh(node, spec.id, "head -c 33554432 /dev/urandom > /dev/shm/fill; sleep 0.3")
    rt.suspend(spec.id)
    first = rt.upload_suspend(spec.id, DISK)
    assert first.volume == volume_name(spec.id)
    assert first.stored_bytes > 32 << 20, first
    # the same VM, run a little (1 MiB more in its tmpfs), suspended again
    rt.start(spec)
    sh(node, spec.id, "head -c 1048576 /dev/urandom > /dev/shm/more; sleep 0.3")
    rt.suspend(spec.id)
    second = rt.upload_suspend(spec.id, DISK)
    assert second.extents_written < first.extents_written / 2, (first, second)
    assert second.stored_bytes < first.stored_bytes / 4, (first, second)
    print(f"first upload {first}; second {second}")

    # the local image gone (as on another node), and the node's image of the environment
    # too: the chunk store's suspend image is fetched and resumed, on the very
    # environment disk the guest had mounted
    rt.stop(spec.id)
    env_sha = (rt.envs / f"{BUSYBOX_ENV}.sha256").read_text().strip()
    shutil.rmtree(rt.envs)
    assert not rt.suspended(spec.id) and rt.uploaded(spec.id)
    with pytest.raises(WorkspaceError, match="older than the disk"):
        rt.fetch_suspend(spec, "e" * 64)
    assert not rt.dir(spec.id).exists()
    assert rt.fetch_suspend(spec, DISK)
    assert hashlib.sha256((rt.dir(spec.id) / "env.img").read_bytes()).hexdigest() == env_sha
    rt.start(spec)
    assert sh(node, spec.id, f"kill -0 {pid} && echo alive") == "alive\n"
    count = int(sh(node, spec.id, "cat /tmp/count"))
    sh(node, spec.id, "sleep 0.4")
    assert int(sh(node, spec.id, "cat /tmp/count")) > count
    assert sh(node, spec.id, "wc -c < /dev/shm/more") == "1048576\n"

    # a RAM extent changed in the store: refused, nothing left here, nothing running
    rt.suspend(spec.id)
    rt.upload_suspend(spec.id, DISK)
    rt.stop(spec.id)
    vol = bs.open(volume_name(spec.id))
    try:
        vol.write(EXTENT_SIZE + 4096, b"\xff" * 16)
        vol.commit()
    finally:
        vol.close()
    with pytest.raises(WorkspaceError, match="damaged"):
        rt.fetch_suspend(spec, DISK)
    assert not rt.dir(spec.id).exists() and rt.status(spec.id).phase is Phase.STOPPED

    # an upload cut short (its header zeroed first, the rest never written): refused
    vol = bs.open(volume_name(spec.id))
    try:
        vol.zero(0, EXTENT_SIZE)
        vol.commit()
    finally:
        vol.close()
    with pytest.raises(WorkspaceError, match="cut short"):
        rt.fetch_suspend(spec, DISK)
    assert rt.remove_suspend_upload(spec.id)
    assert not rt.uploaded(spec.id) and not rt.fetch_suspend(spec, DISK)


@needs_qemu
@pytest.mark.timeout(180)
def test_vm_suspend_image_of_another_workspace_is_refused(node: Vms) -> None:
    rt, bs = node.runtime, node.node.bs
    a, b = node.spec(), node.spec()
    rt.start(a)
    rt.suspend(a.id)
    rt.upload_suspend(a.id, DISK)
    rt.stop(a.id)
    # b's image volume holding a's image (as a store an attacker rewrote would)
    bs.heads.create(volume_name(b.id), size=bs.get(volume_name(a.id)).size,
                    extent_size=EXTENT_SIZE, durability="local", commit_interval=60,
                    max_dirty=1 << 30)  # fmt: skip
    src, dst = bs.view(volume_name(a.id)), bs.open(volume_name(b.id))
    try:
        for e, _ in src.written_extents():
            dst.write(e * EXTENT_SIZE, src.extent(e))
        dst.commit()
    finally:
        dst.close()
    h = header(bs, b.id)
    assert h is not None and h.workspace == a.id
    with pytest.raises(WorkspaceError, match=f"of workspace {a.id}"):
        rt.fetch_suspend(b, DISK)
    assert not rt.dir(b.id).exists()


def test_vm_suspend_header_round_trips_and_any_flipped_bit_is_refused() -> None:
    h = SuspendHeader("ws1", 256, 62000, "a" * 64, "b" * 64, "c" * 64)
    data = encode_header(h)
    assert decode_header(data) == h
    for i in range(len(data)):
        for bit in (0, 5):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(WorkspaceError):
                decode_header(bytes(bad))
    for bad_value in (b"", data[:-1], data + b"x", b"LOFTVMU\n" + b"\0" * 5000):
        with pytest.raises(WorkspaceError):
            decode_header(bad_value)
    with pytest.raises(ValueError):
        SuspendHeader("ws1", 256, (256 << 20) + (65 << 20), "a" * 64, "b" * 64, "c" * 64)

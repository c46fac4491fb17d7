"""VM workspaces on real QEMU (TCG) with the disk from loft's NBD server: boot and exec,
suspend and resume (hot and warm), disk durability, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from vm_support import COUNTER, Vms, needs_qemu, sh

from loft.procfs import proc_stat
from loft.runtime.errors import WorkspaceError
from loft.runtime.forward import unix_listener
from loft.runtime.interface import DETACHED
from loft.runtime.phase import Phase
from loft.runtime.spec import ExecRequest, WindowSize
from loft.runtime.vm import VmRuntime

pytestmark = [pytest.mark.serial, needs_qemu]


@pytest.mark.timeout(120)
def test_vm_boots_and_runs_a_command(node: Vms) -> None:
    spec = node.spec()
    st = node.runtime.start(spec)
    assert st.phase is Phase.RUNNING and st.pid > 0
    done = node.runtime.run(spec.id, ExecRequest(("echo", "hi")))
    assert (done.status, done.stdout, done.stderr) == (0, b"hi\n", b"")
    done = node.runtime.run(spec.id, ExecRequest(("sh", "-c", "id -u; cat; exit 3")), input=b"in")
    assert (done.status, done.stdout) == (3, b"1000\nin")
    node.runtime.stop(spec.id)
    assert node.runtime.status(spec.id).phase is Phase.STOPPED


def _start_counter(node: Vms, ws: str) -> int:
    """A counter in the background of the guest, once it has counted; its pid (a slow
    guest may not have run it yet when the command that started it returns)."""
    out = sh(node, ws, f"setsid sh -c '{COUNTER}' </dev/null >/dev/null 2>&1 & echo $!")
    deadline = time.monotonic() + 30
    while _count(node, ws) < 1:
        assert time.monotonic() < deadline, "the counter never counted"
        time.sleep(0.05)
    return int(out)


def _count(node: Vms, ws: str) -> int:
    return int(sh(node, ws, "cat /tmp/count 2>/dev/null || true") or 0)


def _counter_runs_on(node: Vms, ws: str, pid: int, before: int) -> None:
    """The counter of pid ``pid`` is still alive and counts on from ``before``."""
    assert sh(node, ws, f"kill -0 {pid} && echo alive").strip() == "alive"
    first = _count(node, ws)
    assert first >= before
    sh(node, ws, "sleep 0.5")
    assert _count(node, ws) > first


@pytest.mark.timeout(180)
@pytest.mark.parametrize("keep", [True, False], ids=["hot", "warm"])
def test_vm_suspend_resume_keeps_processes(node: Vms, keep: bool) -> None:
    spec = node.spec()
    node.runtime.start(spec)
    pid = _start_counter(node, spec.id)
    sh(node, spec.id, "sleep 0.3")
    rt = node.runtime
    qemu = rt.status(spec.id).pid
    rt.suspend(spec.id, keep=keep)
    assert rt.suspended(spec.id)
    assert rt.status(spec.id).phase is (Phase.PAUSED if keep else Phase.STOPPED)
    assert (proc_stat(qemu) is not None) is keep  # warm: QEMU is gone, the image stays
    time.sleep(3)  # the guest's clock stands still meanwhile; the resume sets it
    rt.resume(spec.id)
    # whole seconds, read between t0 and t1: a clock left 3 s behind falls outside
    t0 = time.time()
    guest = float(sh(node, spec.id, "date +%s"))
    assert t0 - 1.5 < guest < time.time() + 0.5
    assert rt.status(spec.id).phase is Phase.RUNNING
    assert not rt.suspended(spec.id)  # the image is void once the VM runs again
    _counter_runs_on(node, spec.id, pid, 1)
    # and once more: a resumed VM suspends and resumes again
    before = _count(node, spec.id)
    rt.suspend(spec.id, keep=keep)
    rt.resume(spec.id)
    _counter_runs_on(node, spec.id, pid, before)
    rt.stop(spec.id)


@pytest.mark.timeout(180)
def test_vm_start_resumes_a_suspended_vm(node: Vms) -> None:
    spec = node.spec()
    node.runtime.start(spec)
    pid = _start_counter(node, spec.id)
    sh(node, spec.id, "sleep 0.3")
    node.runtime.suspend(spec.id)
    # a new runtime (an agent restart) starts it: from the image, not a boot
    rt = VmRuntime(node.runtime.root.parents[1], node.runtime.disk, guest=node.runtime.guest_dir)
    assert rt.adopt() == []
    rt.start(spec)
    node.runtime = rt
    _counter_runs_on(node, spec.id, pid, 1)
    rt.stop(spec.id)
    assert not rt.dir(spec.id).exists()


def _debugfs_cat(image: Path, path: str) -> bytes:
    """A file of an ext4 image, read without mounting it (the host never mounts a VM's
    volume)."""
    done = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)],
                          capture_output=True, timeout=60)  # fmt: skip
    return done.stdout


def _export(node: Vms, ws: str, dest: Path) -> Path:
    node.node.node.loft("volume", "export", ws, str(dest))
    return dest


@pytest.mark.timeout(180)
def test_vm_disk_writes_reach_the_volume_and_survive_kill(node: Vms, tmp_path: Path) -> None:
    spec = node.spec()
    rt = node.runtime
    rt.start(spec)
    sh(node, spec.id, "echo written-in-the-guest > /root/one && sync")
    image = _export(node, spec.id, tmp_path / "one.img")
    assert _debugfs_cat(image, "/root/one") == b"written-in-the-guest\n"

    # flushed, then QEMU killed: nothing flushed is lost, and the workspace boots again
    sh(node, spec.id, "head -c 3000000 /dev/urandom > /root/two && sync && md5sum /root/two")
    digest = sh(node, spec.id, "md5sum /root/two").split()[0]
    os.kill(rt.status(spec.id).pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while rt.status(spec.id).phase is not Phase.STOPPED:
        assert time.monotonic() < deadline, "the runtime did not notice QEMU's death"
        time.sleep(0.05)
    image = _export(node, spec.id, tmp_path / "two.img")
    assert hashlib.md5(_debugfs_cat(image, "/root/two")).hexdigest() == digest
    rt.start(spec)
    assert sh(node, spec.id, "md5sum /root/two; cat /root/one").split() == [
        digest, "/root/two", "written-in-the-guest"]  # fmt: skip
    rt.stop(spec.id)


def _qemus_of(node: Vms) -> list[int]:
    """Pids of QEMUs whose command line names this test's VM directories."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"qemu-system") and str(node.runtime.root).encode() in cmd:
                out.append(int(p.name))
    return out


@pytest.mark.timeout(120)
def test_vm_bad_input_is_refused_and_leaves_nothing(node: Vms, tmp_path: Path) -> None:
    rt = node.runtime
    spec = node.spec(memory=32 << 20)
    with pytest.raises(WorkspaceError, match="at least 96 MiB"):
        rt.start(spec)
    empty = tmp_path / "no-guest"
    empty.mkdir()
    spec = node.spec()
    no_kernel = VmRuntime(rt.root.parents[1], rt.disk, guest=empty)
    with pytest.raises(WorkspaceError, match="not built") as e:
        no_kernel.start(spec)
    assert "make guest" in str(e.value.hint)
    assert _qemus_of(node) == [] and not rt.dir(spec.id).exists()
    # a volume with no filesystem: the guest says so at once
    blank = replace(spec, id="blank")
    node.node.bs.create("blank", size=1 << 30)
    t0 = time.monotonic()
    with pytest.raises(WorkspaceError, match="cannot mount the workspace volume"):
        rt.start(blank)
    assert time.monotonic() - t0 < 20
    assert _qemus_of(node) == [] and not rt.dir(blank.id).exists()


@pytest.mark.timeout(180)
def test_vm_damaged_or_foreign_suspend_image_is_refused(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    rt.suspend(spec.id)
    d = rt.dir(spec.id)
    good = (d / "state").read_bytes()
    meta = json.loads((d / "suspend.json").read_text())

    # a flipped byte: refused before QEMU starts
    (d / "state").write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    with pytest.raises(WorkspaceError, match="damaged"):
        rt.start(spec)
    assert _qemus_of(node) == []

    # truncated, with a checksum that matches (as if saved so): QEMU's load fails
    cut = good[: len(good) // 2]
    (d / "state").write_bytes(cut)
    (d / "suspend.json").write_text(json.dumps({**meta, "sha256": hashlib.sha256(cut).hexdigest()}))
    with pytest.raises(WorkspaceError, match=r"loading the VM's state failed|QEMU"):
        rt.start(spec)
    assert _qemus_of(node) == [] and rt.status(spec.id).phase is Phase.STOPPED

    # another workspace's image
    (d / "state").write_bytes(good)
    (d / "suspend.json").write_text(json.dumps({**meta, "workspace": "someone-else"}))
    with pytest.raises(WorkspaceError, match="no usable suspend image"):
        rt.start(spec)
    assert _qemus_of(node) == []

    # stop drops the image; the workspace then boots afresh
    rt.stop(spec.id)
    assert not rt.suspended(spec.id)
    rt.start(spec)
    assert sh(node, spec.id, "echo back") == "back\n"
    rt.stop(spec.id)
    assert _qemus_of(node) == []


@pytest.mark.timeout(120)
def test_vm_concurrent_execs_freezes_and_files(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    long = rt.exec(spec.id, ExecRequest(("sh", "-c", "echo started; exec sleep 300"), user=0),
                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # fmt: skip
    assert long.stdout is not None and long.stdout.readline() == b"started\n"
    # another command runs while the first holds its channel
    assert sh(node, spec.id, "ps -o args | grep -c '^[s]leep 300' || true").strip() == "1"
    long.kill()  # the caller leaves: the command dies in the guest
    long.wait()
    deadline = time.monotonic() + 10
    while sh(node, spec.id, "ps -o args | grep -c '^[s]leep 300' || true").strip() != "0":
        assert time.monotonic() < deadline, "the command outlived its caller"
        time.sleep(0.1)

    # a reader that falls behind stalls its own command only (per-channel credit)
    script = "head -c 20000000 /dev/zero | tr '\\0' x; echo end >&2"
    big = rt.exec(spec.id, ExecRequest(("sh", "-c", script), user=0), stdin=subprocess.DEVNULL,
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(2)  # its pipes fill, its channel runs out of credit
    t0 = time.monotonic()
    assert sh(node, spec.id, "echo quick") == "quick\n"
    assert time.monotonic() - t0 < 5
    out, err = big.communicate(timeout=60)
    assert (len(out), out.strip(b"x"), err) == (20_000_000, b"", b"end\n")

    # a command that does not read its input yet holds neither the agent nor the host
    slow = rt.exec(spec.id, ExecRequest(("sh", "-c", "sleep 3; wc -c"), user=0),
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    counted: list[bytes] = []
    feeder = threading.Thread(
        target=lambda: counted.append(slow.communicate(b"y" * 5_000_000, 60)[0])
    )
    feeder.start()
    time.sleep(1)
    t0 = time.monotonic()
    assert sh(node, spec.id, "echo quick") == "quick\n"
    assert time.monotonic() - t0 < 2
    feeder.join(60)
    assert slow.returncode == 0 and counted[0].split() == [b"5000000"]

    # a command that cannot start: 127 and the agent's reason
    done = rt.run(spec.id, ExecRequest(("no-such-command",)))
    assert done.status == 127 and b"no-such-command" in done.stderr

    rt.write_file(spec.id, "/root/f", b"x" * 100_000, 0o600)
    assert rt.read_file(spec.id, "/root/f") == b"x" * 100_000
    assert sh(node, spec.id, "stat -c %a /root/f").strip() == "600"
    with pytest.raises(WorkspaceError, match="No such file"):
        rt.read_file(spec.id, "/root/missing")
    with pytest.raises(WorkspaceError, match="more than"):
        rt.read_file(spec.id, "/root/f", limit=1000)

    # the filesystem frozen: a write waits until the thaw
    rt.freeze_filesystem(spec.id)
    writer = rt.exec(spec.id, ExecRequest(("sh", "-c", "echo w > /root/w; sync"), user=0))
    time.sleep(1)
    assert writer.poll() is None
    rt.thaw_filesystem(spec.id)
    assert writer.wait(30) == 0
    # vCPUs paused: no command runs until thawed
    rt.freeze(spec.id)
    assert rt.status(spec.id).phase is Phase.PAUSED
    rt.thaw(spec.id)
    assert sh(node, spec.id, "cat /root/w") == "w\n"
    stats = rt.stats(spec.id)
    assert 0 < stats.memory <= stats.memory_peak and stats.memory_limit == 256 << 20
    rt.stop(spec.id)


def _read_until(fd: int, want: bytes, timeout: float = 20) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        left = deadline - time.monotonic()
        assert left > 0, got
        if select.select([fd], [], [], left)[0]:
            got += os.read(fd, 4096)
    return got


@pytest.mark.timeout(120)
def test_vm_pty_has_a_terminal_of_its_size(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    script = "tty; stty size; while read line; do stty size; [ $line = end ] && exit 5; done"
    session = rt.pty(spec.id, ExecRequest(("sh", "-c", script)), WindowSize(40, 120))
    try:
        first = _read_until(session.master, b"40 120")
        assert b"/dev/pts/" in first
        session.resize(WindowSize(50, 100))  # the relay's SIGWINCH becomes a RESIZE frame
        deadline = time.monotonic() + 20
        got = b""
        while b"50 100" not in got:
            assert time.monotonic() < deadline, got
            os.write(session.master, b"again\n")
            got += _read_until(session.master, b"\n", 5)
            time.sleep(0.05)
        os.write(session.master, b"end\n")
        assert session.wait(20) == 5
    finally:
        session.close()
    rt.stop(spec.id)


@pytest.mark.timeout(180)
def test_vm_a_new_runtime_adopts_running_and_paused_vms(node: Vms) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    pid = _start_counter(node, spec.id)
    qemu = rt.status(spec.id).pid

    def restart() -> VmRuntime:
        """An agent restart: the old runtime's connections close, QEMU stays."""
        for vm in rt._live.values():
            vm.release()
        rt._live.clear()
        return VmRuntime(rt.root.parents[1], rt.disk, guest=rt.guest_dir, bs=rt.bs)

    rt = node.runtime = restart()
    assert [(s.id, s.phase, s.pid) for s in rt.adopt()] == [(spec.id, Phase.RUNNING, qemu)]
    _counter_runs_on(node, spec.id, pid, 1)

    rt.suspend(spec.id, keep=True)  # paused: its agent cannot answer until it runs
    rt = node.runtime = restart()
    assert [(s.id, s.phase) for s in rt.adopt()] == [(spec.id, Phase.PAUSED)]
    rt.resume(spec.id)
    _counter_runs_on(node, spec.id, pid, 1)
    rt.stop(spec.id)
    assert proc_stat(qemu) is None


def _http_get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        out = b""
        try:
            s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
            s.shutdown(socket.SHUT_WR)  # half-closed: the answer still comes back
            while chunk := s.recv(65536):
                out += chunk
        except (ConnectionResetError, BrokenPipeError):
            return b""  # nothing listens inside: the forwarder hung up
        return out


@pytest.mark.timeout(120)
def test_vm_forward_a_port_through_the_agent(node: Vms, tmp_path: Path) -> None:
    rt = node.runtime
    spec = node.spec()
    rt.start(spec)
    sh(node, spec.id, "mkdir -p /srv/www && echo served > /srv/www/index.html && "
                       "httpd -p 127.0.0.1:8000 -h /srv/www")  # fmt: skip
    path = tmp_path / "fwd.sock"
    fwd = rt.forward(spec.id, 8000, unix_listener(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    reply = _http_get(path)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"served\n")
    # many at once, and a port nothing listens on closes the connection, not the VM
    assert all(_http_get(path).endswith(b"served\n") for _ in range(5))
    closed = rt.forward(spec.id, 8001, unix_listener(tmp_path / "none.sock"))
    assert _http_get(tmp_path / "none.sock") == b""
    assert sh(node, spec.id, "echo alive") == "alive\n"
    # one connection, as the preview proxy makes them
    with rt.connect(spec.id, 8000) as conn:
        conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
        assert conn.makefile("rb").read().endswith(b"served\n")
    with pytest.raises(ConnectionRefusedError):
        rt.connect(spec.id, 8001)
    rt.stop(spec.id)  # closes the forwarders too
    with pytest.raises(OSError):
        _http_get(path)
    fwd.close()
    closed.close()


def _numbers(data: bytes) -> list[int]:
    return [int(w) for w in data.split() if w.isdigit()]


@pytest.mark.timeout(180)
def test_vm_kept_command_outlives_a_suspend_and_is_taken_up_again(node: Vms) -> None:
    """The workspace's [run] command: its output, kept by the guest agent while no host
    reads it, comes back whole and in order after a warm resume; the commands of the new
    connection, whose channel numbers start again at 1, never see the old one's frames."""
    spec = node.spec()
    rt = node.runtime
    rt.start(spec)
    script = "echo $$ > /tmp/kept.pid; i=0; while :; do i=$((i+1)); echo $i; usleep 20000; done"
    kept = rt.exec_kept(spec.id, ExecRequest(("sh", "-c", script)), stdout=subprocess.PIPE)
    assert kept.stdout is not None
    before = b""
    while len(_numbers(before)) < 5:
        before += os.read(kept.stdout.fileno(), 4096)
    rt.suspend(spec.id)
    assert kept.wait(10) == DETACHED  # its relay ends, the command does not
    rt.resume(spec.id)
    for n in range(12):  # more channels than the old connection had opened
        assert sh(node, spec.id, f"echo {n}") == f"{n}\n"
    again = rt.attach_kept(spec.id, stdout=subprocess.PIPE)
    assert again.stdout is not None
    after = b""
    while len(_numbers(after)) < 20:
        after += os.read(again.stdout.fileno(), 4096)
    seen, taken = _numbers(before), _numbers(after)
    assert taken[0] > seen[-1]  # counted on, not restarted
    assert taken == list(range(taken[0], taken[0] + len(taken)))  # kept, then live: no gap
    sh(node, spec.id, "kill $(cat /tmp/kept.pid)")
    assert again.wait(10) == 128 + signal.SIGTERM
    gone = rt.attach_kept(spec.id, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = gone.communicate(timeout=10)
    assert gone.returncode == 127 and b"no kept command" in err, (out, err)
    rt.stop(spec.id)

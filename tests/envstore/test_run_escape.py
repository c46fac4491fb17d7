"""`loft env run` against escape attempts: from inside (escape_probe.py on the example
environment's python3) every attempt fails; from the host, the sandbox's process is an
unprivileged uid that owns nothing, and nothing it writes is setuid-root."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envbuild_support import LOFT, Example, cli_env, example
from envbuild_support import env_run as run
from escape_support import (
    ATTEMPTS,
    LEASE_BREAK_TIME,
    PROBE,
    assert_no_privileges,
    attempt_problem,
    lease_break_time_kept,
    syscall_numbers,
)

from loft.envstore.sandbox import RUNNER_UID
from loft.isolation.userns import ENV_RUN_IDS

pytestmark = pytest.mark.timeout(900)  # the first module to ask builds the example env


@pytest.fixture(scope="module")
def ex(tmp_path_factory: pytest.TempPathFactory) -> Example:
    return example(tmp_path_factory)


@pytest.fixture(scope="module")
def probe(ex: Example) -> Iterator[dict[str, Any]]:
    """What escape_probe.py saw in one ``loft env run``; fs.lease-break-time put back."""
    with lease_break_time_kept() as before:
        rc, out, err = run(ex, "python3", "-c", PROBE.read_text(), syscall_numbers())
        assert rc == 0, err
        result: dict[str, Any] = json.loads(out)
        result["lease_break_time"] = (before, LEASE_BREAK_TIME.read_text())
        yield result


def test_escape_probe_covers_every_attempt(probe: dict[str, Any]) -> None:
    assert sorted(probe["attempts"]) == sorted(ATTEMPTS)


@pytest.mark.parametrize("name", ATTEMPTS)
def test_escape_attempt_fails(probe: dict[str, Any], name: str) -> None:
    assert attempt_problem(probe["attempts"], name) is None


def test_escape_host_sysctl_unchanged(probe: dict[str, Any]) -> None:
    before, after = probe["lease_break_time"]
    assert after == before


def test_escape_runner_has_no_privileges(probe: dict[str, Any]) -> None:
    status = probe["status"]
    assert_no_privileges(status)
    assert status["Uid"].split() == [str(RUNNER_UID)] * 4
    # ids 0..65535 inside are the dedicated host range; host root is not mapped at all,
    # and no supplementary group (host root's) came along.
    assert probe["uid_map"] == ["0", str(ENV_RUN_IDS.host), str(ENV_RUN_IDS.size)]
    assert status["Groups"] in ("", str(RUNNER_UID))
    assert probe["personality"] == 0  # what the filter allows still works


def test_escape_pid1_and_environs_name_nothing_of_the_host(
    ex: Example, probe: dict[str, Any]
) -> None:
    # The command itself is PID 1: bubblewrap's init (its argv full of store paths, and
    # the host environment) is not in the sandbox.
    assert probe["pid1"].startswith("python3 -c ")
    host = [str(ex.data_dir), str(ex.store.real_store_dir), "bwrap", "LOFT_DATA_DIR"]
    for kind in ("cmdlines", "environs"):
        for pid, text in probe[kind].items():
            assert not [h for h in host if h in text], (kind, pid, text[:300])
    assert probe["nodename"] == "loft" != socket.gethostname()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat_line.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in lines)}


def _sandboxed_sleep(ancestor: int) -> int | None:
    """The host pid of the descendant that is PID 1 of its own namespace and runs sleep."""
    for pid in _descendants(ancestor):
        try:
            if (
                _status(pid)["NSpid"].endswith("\t1")
                and b"sleep" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ):
                return pid
        except OSError:  # it exited meanwhile
            continue
    return None


def test_escape_host_sees_an_unprivileged_unowned_uid(ex: Example) -> None:
    script = (
        "cp /bin/true /tmp/suid && chmod 4755 /tmp/suid && touch $HOME/made && "
        "echo ready && exec sleep 60"
    )
    loft = subprocess.Popen([LOFT, "env", "run", "loft.lock", "--", "sh", "-c", script],
                            cwd=ex.project, env=cli_env(ex.data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert loft.stdout is not None
        ready, _, _ = select.select([loft.stdout], [], [], 60)
        assert ready and loft.stdout.readline() == "ready\n", loft.stderr
        # The sandbox's PID 1 (`sleep` by now), seen from the host.
        deadline = time.monotonic() + 10
        while (pid := _sandboxed_sleep(loft.pid)) is None:
            assert time.monotonic() < deadline, "no sandboxed sleep found"
            time.sleep(0.05)
        status = _status(pid)
        host_uid = ENV_RUN_IDS.host_id(RUNNER_UID)
        assert status["Uid"].split() == [str(host_uid)] * 4
        assert status["Gid"].split() == [str(host_uid)] * 4
        assert_no_privileges(status)
        users = {int(line.split(":")[2]) for line in Path("/etc/passwd").read_text().splitlines()}
        groups = {int(line.split(":")[2]) for line in Path("/etc/group").read_text().splitlines()}
        assert host_uid not in users and host_uid not in groups
        # What it writes belongs to that uid on the host; a setuid bit it sets is on a
        # nosuid mount and would make a program run as that uid anyway, never as root.
        root = Path(f"/proc/{pid}/root")
        made, suid = (root / "home/runner/made").stat(), (root / "tmp/suid").stat()
        assert made.st_uid == suid.st_uid == host_uid and made.st_gid == host_uid
        assert suid.st_mode & stat.S_ISUID
        assert os.statvfs(root / "tmp").f_flag & os.ST_NOSUID
    finally:
        loft.kill()
        loft.communicate()

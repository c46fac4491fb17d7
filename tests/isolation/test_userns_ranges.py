"""User namespaces on a dedicated id range, and the private mount namespace that makes a
root-only directory reachable by such an id."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loft.isolation import IsolationError
from loft.isolation.mountns import readonly_bind_in_new_namespace
from loft.isolation.userns import ENV_RUN_IDS, IdRange, drop_to, host_owners, user_namespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="maps host id ranges: root only")
_CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)
# Inside the namespace: its maps, its nested-namespace limit, and whether a nested one
# can be made (errno, or 0).
INSIDE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
for name in ("uid_map", "gid_map", "setgroups"):
    print(" ".join(open(f"/proc/self/{name}").read().split()))
print(open("/proc/sys/user/max_user_namespaces").read().strip())
print(os.getuid(), os.getgid())
print(0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno())
"""


def join(fd: int, host_id: int) -> None:
    """preexec_fn: become ``host_id`` and enter the namespace it owns."""
    drop_to(host_id)
    if _libc.setns(fd, _CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def test_userns_maps_the_range_and_forbids_nesting() -> None:
    ids = IdRange(ENV_RUN_IDS.host, 65536)
    owner = ids.host_id(1000)
    with user_namespace(ids, owner) as fd:
        r = subprocess.run([sys.executable, "-I", "-c", INSIDE], pass_fds=[fd],
                           preexec_fn=lambda: join(fd, owner), capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    uid_map, gid_map, setgroups, limit, ids_inside, nested = r.stdout.splitlines()
    assert uid_map == gid_map == f"0 {ids.host} 65536"  # host root is not in it
    assert setgroups == "deny" and limit == "0"
    assert ids_inside == "1000 1000"
    assert nested != "0"  # no user namespace inside, whatever the host allows


def test_userns_only_the_owner_may_join() -> None:
    ids = ENV_RUN_IDS
    with user_namespace(ids, ids.host_id(1000)) as fd:
        subprocess.run([sys.executable, "-I", "-c", "pass"], pass_fds=[fd],
                       preexec_fn=lambda: join(fd, ids.host_id(1000)), check=True)  # fmt: skip
        with pytest.raises(subprocess.SubprocessError, match="preexec_fn"):  # setns: EPERM
            subprocess.run([sys.executable, "-I", "-c", "pass"], pass_fds=[fd],
                           preexec_fn=lambda: join(fd, ids.host_id(1001)))  # fmt: skip


def test_userns_refuses_a_range_host_users_own(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n")
    (tmp_path / "group").write_text("root:x:0:\nstaff:x:50:\n")
    assert host_owners(IdRange(1, 2000), tmp_path) == ["passwd alice (1000)", "group staff (50)"]
    assert host_owners(IdRange(2000), tmp_path) == []
    assert host_owners(ENV_RUN_IDS) == []  # this host's users leave the env run range free
    with pytest.raises(IsolationError, match="not free"), user_namespace(IdRange(1), 1000):
        pass  # ids 1.. belong to daemon, bin, sys... on any Debian


def test_userns_range_bounds() -> None:
    assert ENV_RUN_IDS.host_id(1000) == 0x7000_0000 + 1000
    assert ENV_RUN_IDS.host + 1000 in ENV_RUN_IDS and 0 not in ENV_RUN_IDS
    for host, size in ((0, 65536), (2**31 - 100, 65536), (5, 0)):
        with pytest.raises(ValueError):
            IdRange(host, size)
    with pytest.raises(ValueError):
        ENV_RUN_IDS.host_id(65536)
    with pytest.raises(ValueError), user_namespace(ENV_RUN_IDS, 1000):
        pass  # the owner must be one of the range's ids


def test_mountns_stage_reaches_a_private_directory(tmp_path: Path) -> None:
    private = tmp_path / "private"  # pytest's tmp dirs are 0700, root's
    (private / "store").mkdir(parents=True)
    (private / "store" / "f").write_text("hello")
    stage = readonly_bind_in_new_namespace(private / "store", "/tmp")
    code = (
        "import os\nprint(open('/tmp/f').read())\n"
        "try:\n    open('/tmp/g', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    r = subprocess.run([sys.executable, "-I", "-c", code],
                       preexec_fn=lambda: (stage(), drop_to(ENV_RUN_IDS.host_id(1000))),
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["hello", "30"]  # read through the stage, EROFS on write
    assert not Path("/tmp/f").exists()  # the host's /tmp is untouched

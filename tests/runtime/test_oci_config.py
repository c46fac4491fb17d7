"""config.json and the exec process, generated from the spec without runc: namespaces,
id maps, capabilities, seccomp, masked paths, limits, mounts."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from loft.isolation.seccomp import AARCH64, POLICY, X86_64, Always, AnyBit, ArgIn, ArgNotIn, Rule
from loft.isolation.userns import IdRange
from loft.runtime.layout import RuntimeDirs
from loft.runtime.oci import (
    CAPABILITIES,
    INIT_PATH,
    MASKED_PATHS,
    READONLY_PATHS,
    bundle_config,
    process_config,
)
from loft.runtime.oci_seccomp import oci_seccomp
from loft.runtime.spec import EnvironmentView, ExecRequest, Limits, WindowSize, WorkspaceSpec

ENV = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-loft-env"
LIBC = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-libc"
SPEC = WorkspaceSpec(
    "ws1",
    Path("/srv/mnt/ws1"),
    EnvironmentView(Path("/data/envstore/nix/store"), ENV, (ENV, LIBC)),
    IdRange(0x100000),
    Limits(memory=512 * 2**20, cpus=1.5, pids=300),
)
DIRS = RuntimeDirs(Path("/data"))


def config() -> dict[str, Any]:
    return bundle_config(SPEC, DIRS, "/usr/bin/catatonit")


def test_oci_config_namespaces_and_id_maps() -> None:
    linux = config()["linux"]
    assert {n["type"] for n in linux["namespaces"]} == {
        "user", "pid", "mount", "ipc", "uts", "cgroup", "network"
    }  # fmt: skip
    assert all("path" not in n for n in linux["namespaces"])  # all new, none joined
    want = [{"containerID": 0, "hostID": 0x100000, "size": 65536}]
    assert linux["uidMappings"] == linux["gidMappings"] == want


def test_oci_config_init_has_nothing() -> None:
    process = config()["process"]
    assert process["args"] == [INIT_PATH, "-P"]
    assert process["noNewPrivileges"] is True
    assert all(v == [] for v in process["capabilities"].values())
    init = next(m for m in config()["mounts"] if m["destination"] == INIT_PATH)
    assert init["source"] == "/usr/bin/catatonit" and "ro" in init["options"]


def test_oci_config_limits_and_cgroup() -> None:
    linux = config()["linux"]
    res = linux["resources"]
    assert res["memory"] == {"limit": 512 * 2**20, "swap": 512 * 2**20}
    assert res["cpu"] == {"quota": 150_000, "period": 100_000}
    assert res["pids"] == {"limit": 300}
    assert res["devices"][0] == {"allow": False, "access": "rwm"}
    assert linux["cgroupsPath"] == "/loft/ws1"


def test_oci_config_masked_and_read_only_paths() -> None:
    linux = config()["linux"]
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"):
        assert path in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"] and "/proc/sysrq-trigger" in READONLY_PATHS
    assert list(MASKED_PATHS) == linux["maskedPaths"]
    sys_mount = next(m for m in config()["mounts"] if m["destination"] == "/sys")
    assert "ro" in sys_mount["options"]


def test_oci_config_mounts_the_environment_read_only() -> None:
    mounts = {m["destination"]: m for m in config()["mounts"]}
    stage = "/data/workspaces/ws1/sandbox/store"
    # /usr: the overlay of the environment under an empty local/, which the volume's own
    # /usr/local (read-write, nosuid, nodev) is bound on after it.
    assert mounts["/usr"]["source"] == "/data/workspaces/ws1/sandbox/usr"
    assert mounts["/usr/local"]["source"] == "/data/workspaces/ws1/sandbox/local"
    assert {"nosuid", "nodev"} <= set(mounts["/usr/local"]["options"])
    assert "ro" not in mounts["/usr/local"]["options"]
    for path in (ENV, LIBC):
        assert mounts[path]["source"] == f"{stage}/{path.removeprefix('/nix/store/')}"
    for dest in ("/usr", ENV, LIBC):
        assert {"ro", "nosuid", "nodev"} <= set(mounts[dest]["options"])
    for dest in ("/tmp", "/run", "/nix/store", "/dev/shm"):
        assert mounts[dest]["type"] == "tmpfs" and "nosuid" in mounts[dest]["options"]
    # /nix/store (a tmpfs) comes before the closure's paths bound into it.
    order = [m["destination"] for m in config()["mounts"]]
    assert order.index("/nix/store") < order.index(ENV)
    assert order.index("/usr") < order.index("/usr/local")
    assert config()["root"] == {"path": "/data/workspaces/ws1/sandbox/rootfs", "readonly": False}


def test_oci_process_capabilities_for_root_only() -> None:
    runner = process_config(ExecRequest(("id",)))
    root = process_config(ExecRequest(("id",), user=0))
    for p in (runner, root):
        assert p["capabilities"]["bounding"] == list(CAPABILITIES)
        assert p["capabilities"]["ambient"] == p["capabilities"]["inheritable"] == []
        assert p["noNewPrivileges"] is True
    assert runner["capabilities"]["effective"] == runner["capabilities"]["permitted"] == []
    assert root["capabilities"]["effective"] == list(CAPABILITIES)
    for dropped in (
        "CAP_NET_RAW",
        "CAP_MKNOD",
        "CAP_AUDIT_WRITE",
        "CAP_SETFCAP",
        "CAP_SYS_ADMIN",
        "CAP_SYS_CHROOT",
        "CAP_NET_ADMIN",
        "CAP_SYS_PTRACE",
    ):
        assert dropped not in CAPABILITIES
    assert runner["user"] == {"uid": 1000, "gid": 1000, "umask": 0o022}
    assert runner["cwd"] == "/home/runner"
    assert root["cwd"] == "/root" and "HOME=/root" in root["env"]


def test_oci_process_environment_and_terminal() -> None:
    p = process_config(ExecRequest(("sh",), cwd="/tmp", env={"A": "1"}), WindowSize(30, 90))
    assert p["terminal"] is True and p["consoleSize"] == {"height": 30, "width": 90}
    assert p["cwd"] == "/tmp" and "A=1" in p["env"] and "TERM=xterm-256color" in p["env"]
    assert "consoleSize" not in process_config(ExecRequest(("sh",)))


# -- seccomp: the OCI entries deny exactly what loft's rules deny ------------------------


def _oci_denies(entries: list[dict[str, Any]], name: str, args: list[int]) -> int | None:
    """libseccomp's reading of the entries: the errno of the first entry for ``name``
    whose comparisons all hold, else None (the default action, allow)."""
    for e in entries:
        comparisons = e.get("args", [])
        # libseccomp keeps one comparison per argument: an entry must not need more.
        assert len({c["index"] for c in comparisons}) == len(comparisons), e
        assert all(c["op"] == "SCMP_CMP_MASKED_EQ" for c in comparisons), e
        if name in e["names"] and all(
            args[c["index"]] & c["value"] == c["valueTwo"] for c in comparisons
        ):
            return int(e["errnoRet"])
    return None


def _rule_denies(rule: Rule, args: list[int]) -> bool:
    """What loft's BPF program decides: it reads the low 32 bits of an argument (the
    kernel reads no more of these)."""
    args = [a & 0xFFFFFFFF for a in args]
    w = rule.when
    if isinstance(w, Always):
        return True
    if isinstance(w, AnyBit):
        return bool(args[w.arg] & w.mask)
    if isinstance(w, ArgIn):
        return args[w.arg] in w.values
    assert isinstance(w, ArgNotIn)
    return args[w.arg] not in w.values


_interesting = [0, 8, 0x20000, 0x20008, 0xFFFFFFFF, 0x40000, 0x10000000, 0x5412, 0x541C, 17]
_values = st.one_of(
    st.integers(0, 2**64 - 1),
    st.sampled_from(_interesting),
    # the same with high bits set, which the kernel drops and libseccomp would compare
    st.builds(lambda v, hi: v | hi << 32, st.sampled_from(_interesting), st.integers(1, 2**32 - 1)),
)


@given(args=st.lists(_values, min_size=6, max_size=6))
def test_oci_seccomp_denies_what_the_policy_denies(args: list[int]) -> None:
    entries = oci_seccomp()["syscalls"]
    for rule in POLICY:
        want = rule.errno if _rule_denies(rule, args) else None
        assert _oci_denies(entries, rule.syscall, args) == want, (rule, args)


def test_oci_seccomp_denies_nested_user_namespaces() -> None:
    entries = oci_seccomp()["syscalls"]
    for call in ("clone", "unshare"):
        assert _oci_denies(entries, call, [0x10000000, 0, 0, 0, 0, 0]) == errno.EPERM
        assert _oci_denies(entries, call, [0x10000000 | 1 << 40, 0, 0, 0, 0, 0]) == errno.EPERM
        assert _oci_denies(entries, call, [0x10000000 | 17, 0, 0, 0, 0, 0]) == errno.EPERM
        assert _oci_denies(entries, call, [17, 0, 0, 0, 0, 0]) is None  # a plain fork
    assert _oci_denies(entries, "clone3", [0] * 6) == errno.ENOSYS
    assert _oci_denies(entries, "ioctl", [0, 0x5412 | 1 << 32, 0, 0, 0, 0]) == errno.EPERM
    assert _oci_denies(entries, "personality", [0xFFFFFFFF, 0, 0, 0, 0, 0]) is None
    assert _oci_denies(entries, "personality", [0x40000, 0, 0, 0, 0, 0]) == errno.EPERM


def test_oci_seccomp_per_architecture() -> None:
    x86, arm = oci_seccomp(arch=X86_64), oci_seccomp(arch=AARCH64)
    assert x86["architectures"] == ["SCMP_ARCH_X86_64"] and x86["defaultAction"] == "SCMP_ACT_ALLOW"
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64"]
    names = {n for e in arm["syscalls"] for n in e["names"]}
    assert "iopl" not in names and "iopl" in {n for e in x86["syscalls"] for n in e["names"]}

"""What escape_probe.py must see inside a sandbox, shared by the runner's and the jail's
tests: which attempts fail how, and the process state that makes them fail."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import Iterator
from pathlib import Path

from loft.isolation.seccomp import native_arch

PROBE = Path(__file__).with_name("escape_probe.py")
LEASE_BREAK_TIME = Path("/proc/sys/fs/lease-break-time")
# What each attempt must fail with: the seccomp filter's EPERM (ENOSYS for clone3), or
# any error for what the mounts, ids and capabilities refuse.
DENIED_BY_FILTER = {
    "unshare user", "unshare mount", "unshare net", "clone user", "setns", "mount tmpfs",
    "mount proc", "umount /proc", "pivot_root", "chroot", "fsopen", "open_tree",
    "mount_setattr", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "keyctl", "add_key", "request_key", "bpf",
    "perf_event_open", "userfaultfd", "io_uring_setup", "ptrace attach", "ptrace traceme",
    "process_vm_readv", "open_by_handle_at", "name_to_handle_at", "syslog", "acct",
    "swapon", "settimeofday", "adjtimex", "personality no-ASLR", "ioctl TIOCSTI",
}  # fmt: skip
if "iopl" in native_arch().syscalls:
    DENIED_BY_FILTER.add("iopl")
DENIED_OTHERWISE = {
    "write fs.lease-break-time", "write kernel.core_pattern", "write kernel.modprobe",
    "write user.max_user_namespaces", "write net.ipv4.ip_forward", "open sysrq-trigger",
    "open /proc/1/mem", "write /sys uevent_helper", "list /sys", "mkdir /sys",
    "read /proc/kcore", "read /proc/keys", "read /proc/timer_list", "read /proc/sched_debug",
    "unshare -Ur", "setuid file",
}  # fmt: skip
ATTEMPTS = sorted(DENIED_BY_FILTER | DENIED_OTHERWISE | {"clone3"})


def syscall_numbers() -> str:
    """The probe's last argument."""
    return json.dumps(dict(native_arch().syscalls))


def attempt_problem(results: dict[str, int], name: str) -> str | None:
    """Why attempt ``name`` did not fail as it must, or None."""
    got = results[name]
    want = errno.EPERM if name in DENIED_BY_FILTER else errno.ENOSYS if name == "clone3" else 0
    if (want and got != want) or (not want and got == 0):
        return f"{name}: {errno.errorcode.get(got, got) if got else 'succeeded'}"
    return None


def assert_no_privileges(status: dict[str, str]) -> None:
    """/proc/PID/status of a sandboxed process: no capability, no_new_privs, a filter."""
    for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[field], 16) == 0, (field, status[field])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"


@contextlib.contextmanager
def lease_break_time_kept() -> Iterator[str]:
    """The host's fs.lease-break-time, put back afterwards should a probe have changed it."""
    before = LEASE_BREAK_TIME.read_text()
    try:
        yield before
    finally:
        if LEASE_BREAK_TIME.read_text() != before:
            LEASE_BREAK_TIME.write_text(before)

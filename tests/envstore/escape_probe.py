"""Escape attempts, run *inside* a sandbox by its python3; prints what happened as JSON.

Standard library only (it runs on the environment's python or the host's). The last
argument is a JSON object of system call numbers for this machine. Every attempt is
harmless should it succeed: writes put back the value they read (but for
``fs.lease-break-time``, which the host side checks and restores), files are opened
for writing and closed untouched, and the calls get arguments the kernel would refuse
or ignore. Each runs in a child process of its own, so one that works changes nothing for
the next. Each result is 0 (it worked), the errno it failed with, or -1 (the child died).
"""

import ctypes
import errno
import json
import os
import stat
import subprocess
import sys

NR = json.loads(sys.argv[-1])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
SIGCHLD = 17
AT_FDCWD = -100


def sys_call(name, *args):
    """0 or the errno of the raw system call ``name``."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *cargs)
    return 0 if r >= 0 else ctypes.get_errno()


def attempt(fn):
    """Run ``fn`` in a child process: 0, its errno, or -1."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = fn()
            result = result if isinstance(result, int) else 0
        except OSError as e:
            result = e.errno or errno.EIO
        os.write(w, str(result).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return int(out) if out else -1


def open_for_writing(path):
    os.close(os.open(path, os.O_WRONLY))


def rewrite(path):
    with open(path, "r+") as f:
        value = f.read()
        f.seek(0)
        f.write(value)


def read(path):
    with open(path) as f:
        return f.read()


def bump_lease_break_time():
    path = "/proc/sys/fs/lease-break-time"
    value = int(read(path))
    with open(path, "w") as f:
        f.write(str(value + 1))


def read_masked(path):
    with open(path, "rb") as f:
        data = f.read(4096)
    return errno.ENODATA if not data else 0  # empty counts as masked


def clone_with(flags):
    zero = [ctypes.c_long(0)] * 4
    pid = libc.syscall(ctypes.c_long(NR["clone"]), ctypes.c_long(flags | SIGCHLD), *zero)
    if pid == 0:  # the child of a successful clone: leave at once
        os._exit(0)
    if pid < 0:
        return ctypes.get_errno()
    os.waitpid(pid, 0)
    return 0


def nested_unshare_command():
    r = subprocess.run(["unshare", "-Ur", "true"], capture_output=True)
    return r.returncode or 0


def ptrace_attach():
    child = subprocess.Popen(["sleep", "30"])
    try:
        return sys_call("ptrace", 16, child.pid, 0, 0)  # PTRACE_ATTACH
    finally:
        child.kill()
        child.wait()


def process_vm_readv():
    child = subprocess.Popen(["sleep", "30"])
    buf = ctypes.create_string_buffer(8)
    local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = (ctypes.c_void_p * 2)(0x400000, 8)
    try:
        return sys_call("process_vm_readv", child.pid, local, 1, remote, 1, 0)
    finally:
        child.kill()
        child.wait()


def setns_net():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        return sys_call("setns", fd, 0)
    finally:
        os.close(fd)


def setuid_file():
    """A setuid copy of a binary in the working directory: its mount must be nosuid."""
    path = os.path.abspath("suid-probe")
    with open("/bin/true", "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    os.chmod(path, 0o4755)
    nosuid = os.statvfs(path).f_flag & os.ST_NOSUID
    return 0 if not nosuid else errno.EPERM


buf = ctypes.create_string_buffer(512)  # zeroed attrs, handles, params
null = ctypes.c_void_p(0)
ATTEMPTS = {
    # /proc and /sys
    "write fs.lease-break-time": bump_lease_break_time,
    "write kernel.core_pattern": lambda: rewrite("/proc/sys/kernel/core_pattern"),
    "write kernel.modprobe": lambda: rewrite("/proc/sys/kernel/modprobe"),
    "write user.max_user_namespaces": lambda: rewrite("/proc/sys/user/max_user_namespaces"),
    "write net.ipv4.ip_forward": lambda: rewrite("/proc/sys/net/ipv4/ip_forward"),
    "open sysrq-trigger": lambda: open_for_writing("/proc/sysrq-trigger"),
    "open /proc/1/mem": lambda: open_for_writing("/proc/1/mem"),
    "write /sys uevent_helper": lambda: open_for_writing("/sys/kernel/uevent_helper"),
    "list /sys": lambda: os.listdir("/sys"),
    "mkdir /sys": lambda: os.mkdir("/sys"),
    "read /proc/kcore": lambda: read_masked("/proc/kcore"),
    "read /proc/keys": lambda: read_masked("/proc/keys"),
    "read /proc/timer_list": lambda: read_masked("/proc/timer_list"),
    "read /proc/sched_debug": lambda: read_masked("/proc/sched_debug"),
    # namespaces and mounts
    "unshare user": lambda: sys_call("unshare", CLONE_NEWUSER),
    "unshare mount": lambda: sys_call("unshare", CLONE_NEWNS),
    "unshare net": lambda: sys_call("unshare", CLONE_NEWNET),
    "clone user": lambda: clone_with(CLONE_NEWUSER),
    "clone3": lambda: sys_call("clone3", null, 0),  # size 0: refused if ever let through
    "unshare -Ur": nested_unshare_command,
    "setns": setns_net,
    "mount tmpfs": lambda: sys_call("mount", b"none", b"/tmp", b"tmpfs", 0, null),
    "mount proc": lambda: sys_call("mount", b"proc", b"/tmp", b"proc", 0, null),
    "umount /proc": lambda: sys_call("umount2", b"/proc", 2),
    "pivot_root": lambda: sys_call("pivot_root", b"/tmp", b"/tmp"),
    "chroot": lambda: sys_call("chroot", b"/tmp"),
    "fsopen": lambda: sys_call("fsopen", b"tmpfs", 0),
    "open_tree": lambda: sys_call("open_tree", AT_FDCWD, b"/", 1),
    "mount_setattr": lambda: sys_call("mount_setattr", AT_FDCWD, b"/", 0, buf, 32),
    # the kernel, keys, tracing
    "init_module": lambda: sys_call("init_module", null, 0, b""),
    "finit_module": lambda: sys_call("finit_module", -1, b"", 0),
    "delete_module": lambda: sys_call("delete_module", b"loft", 0),
    "kexec_load": lambda: sys_call("kexec_load", 0, 0, null, 0),
    "kexec_file_load": lambda: sys_call("kexec_file_load", -1, -1, 0, b"", 0),
    "reboot": lambda: sys_call("reboot", 0, 0, 0, null),  # bad magic: refused either way
    "keyctl": lambda: sys_call("keyctl", 1, null),  # KEYCTL_JOIN_SESSION_KEYRING
    "add_key": lambda: sys_call("add_key", b"user", b"loft", b"x", 1, -2),
    "request_key": lambda: sys_call("request_key", b"user", b"loft", null, 0),
    "bpf": lambda: sys_call("bpf", 0, buf, 72),  # BPF_MAP_CREATE
    "perf_event_open": lambda: sys_call("perf_event_open", buf, 0, -1, -1, 0),
    "userfaultfd": lambda: sys_call("userfaultfd", 1),  # UFFD_USER_MODE_ONLY
    "io_uring_setup": lambda: sys_call("io_uring_setup", 1, buf),
    "ptrace attach": ptrace_attach,
    "ptrace traceme": lambda: sys_call("ptrace", 0, 0, 0, 0),
    "process_vm_readv": process_vm_readv,
    "open_by_handle_at": lambda: sys_call("open_by_handle_at", AT_FDCWD, buf, 0),
    "name_to_handle_at": lambda: sys_call("name_to_handle_at", AT_FDCWD, b"/", buf, buf, 0),
    "syslog": lambda: sys_call("syslog", 10, null, 0),  # SYSLOG_ACTION_SIZE_BUFFER
    "acct": lambda: sys_call("acct", null),
    "swapon": lambda: sys_call("swapon", b"/nonexistent", 0),
    "settimeofday": lambda: sys_call("settimeofday", null, null),  # changes nothing
    "adjtimex": lambda: sys_call("adjtimex", buf),  # modes 0: a read
    "personality no-ASLR": lambda: sys_call("personality", 0x0040000),
    "ioctl TIOCSTI": lambda: sys_call("ioctl", 0, 0x5412, b"x"),
    "setuid file": setuid_file,
}
if "iopl" in NR:
    ATTEMPTS["iopl"] = lambda: sys_call("iopl", 3)


def proc_text(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError as e:
        return f"<{errno.errorcode.get(e.errno, e.errno)}>"


status = dict(ln.split(":", 1) for ln in read("/proc/self/status").splitlines())
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print(
    json.dumps(
        {
            "attempts": {name: attempt(fn) for name, fn in ATTEMPTS.items()},
            "status": {k: v.strip() for k, v in status.items()},
            "uid_map": read("/proc/self/uid_map").split(),
            "pid1": proc_text(1, "cmdline"),
            "cmdlines": {p: proc_text(p, "cmdline") for p in pids},
            "environs": {p: proc_text(p, "environ") for p in pids},
            "nodename": os.uname().nodename,
            "personality": sys_call("personality", 0xFFFFFFFF),
            "suid_mode": oct(stat.S_IMODE(os.stat("suid-probe").st_mode)),
        }
    )
)

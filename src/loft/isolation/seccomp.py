"""Which system calls a sandbox may not make, compiled to the BPF program seccomp runs.

The policy is a deny list in the spirit of Docker's default profile: a sandbox keeps
every ordinary call, and loses those that reach past it — into the kernel itself (modules,
kexec, reboot, swap, I/O ports, the kernel log), into other processes (ptrace and its
relatives), into state shared with the whole host (keyrings, which are per host uid; the
clocks; quotas and process accounting), mounts and namespaces (which is also what stops a
nested user namespace), file handles (which open files by inode, past any mount), and
kernel interfaces with a long record of privilege escalations (bpf, perf_event_open,
userfaultfd, io_uring). A sandbox holds no capability either, so most of these would fail
anyway; the filter makes sure they fail even when a kernel bug or a setting such as
``user.max_user_namespaces`` would have let them through.

A denied call fails with EPERM, which programs handle as "not allowed here". clone3 fails
with ENOSYS instead: its flags sit in memory the filter cannot read, and on ENOSYS the C
library falls back to clone, whose flags the filter does check.

The program (``struct seccomp_data``: ``nr`` at 0, ``arch`` at 4, argument *i* at
16 + 8i, little-endian; only the low 32 bits of an argument are tested, and every argument
tested here is one the kernel truncates to 32 bits itself, so the high half cannot carry a
value past the test)::

    ld arch;  jeq NATIVE, 1, 0;  ret KILL_PROCESS       another ABI (i386 int 0x80, arm32)
    ld nr;    jge X32_BIT, 0, 1;  ret ERRNO(ENOSYS)     x86_64 only: x32 numbers
    for each call with a rule, in number order:
      jeq NR, 0, len(block);  block                      the block always returns
    ret ALLOW

An allowed call passes about 60 comparisons. That costs nothing measurable next to
seccomp's own entry cost: ``dd bs=1`` (6 million reads and writes, best of 6 on the 2-core
CI machine) took 1.43 s without a filter, 1.72 s under a filter of one rule and 1.68 s
under this one (~40 ns a call, whatever the list), so the list is searched linearly.
"""

from __future__ import annotations

import errno
import platform
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from loft.isolation import IsolationError, _syscalls

__all__ = [
    "AARCH64",
    "POLICY",
    "SECCOMP_RET_ALLOW",
    "SECCOMP_RET_ERRNO",
    "SECCOMP_RET_KILL_PROCESS",
    "X86_64",
    "Always",
    "AnyBit",
    "Arch",
    "ArgIn",
    "ArgNotIn",
    "Condition",
    "Rule",
    "compile_filter",
    "native_arch",
]

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# Classic BPF opcodes (linux/bpf_common.h) and the instruction layout (struct sock_filter:
# u16 code, u8 jt, u8 jf, u32 k, in the host's byte order).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_INSN = struct.Struct("=HBBI")
_NR_OFFSET = 0
_ARCH_OFFSET = 4


def _arg_offset(i: int) -> int:
    """Offset of the low 32 bits of argument ``i`` (little-endian)."""
    return 16 + 8 * i


@dataclass(frozen=True)
class Arch:
    """An architecture's audit number, system call table and x32 bit (0: none)."""

    name: str
    audit: int
    syscalls: Mapping[str, int] = field(repr=False)
    x32_bit: int = 0


X86_64 = Arch("x86_64", 0xC000003E, _syscalls.X86_64, x32_bit=0x40000000)
AARCH64 = Arch("aarch64", 0xC00000B7, _syscalls.AARCH64)
_ARCHES = {"x86_64": X86_64, "amd64": X86_64, "aarch64": AARCH64, "arm64": AARCH64}


def native_arch() -> Arch:
    """The architecture this process runs on; refuses one the policy has no table for."""
    machine = platform.machine()
    arch = _ARCHES.get(machine.lower())
    if arch is None:
        raise IsolationError(
            f"no seccomp filter for the {machine} architecture",
            hint="loft runs sandboxes on x86_64 and aarch64 only",
        )
    return arch


@dataclass(frozen=True)
class Always:
    """Deny every call."""


@dataclass(frozen=True)
class AnyBit:
    """Deny when argument ``arg`` has any bit of ``mask`` set."""

    arg: int
    mask: int


@dataclass(frozen=True)
class ArgIn:
    """Deny when argument ``arg`` is one of ``values``."""

    arg: int
    values: tuple[int, ...]


@dataclass(frozen=True)
class ArgNotIn:
    """Deny unless argument ``arg`` is one of ``values``."""

    arg: int
    values: tuple[int, ...]


Condition = Always | AnyBit | ArgIn | ArgNotIn


@dataclass(frozen=True)
class Rule:
    """Deny ``syscall`` with ``errno`` when ``when`` holds."""

    syscall: str
    when: Condition = Always()
    errno: int = errno.EPERM


# linux/sched.h: the namespace flags of clone() and unshare(). CLONE_NEWTIME shares its
# bit with clone()'s exit signal (the low byte), so only unshare() is checked for it.
_CLONE_NEWNS_ETC = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)
_CLONE_NEWTIME = 0x00000080
# linux/personality.h: what Docker allows: plain Linux, 32-bit uname, UNAME26, both, and
# 0xffffffff (query). The rest turn off address randomisation or make data executable.
_PER_LINUX32, _UNAME26, _PER_QUERY = 0x0008, 0x0020000, 0xFFFFFFFF
_SAFE_PERSONALITIES = (0, _PER_LINUX32, _UNAME26, _PER_LINUX32 | _UNAME26, _PER_QUERY)
# asm-generic/ioctls.h: push characters into a terminal's input (a shell outside reads
# them as its own), and the virtual console's copy/paste and more.
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C

_DENIED = (
    # the kernel itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "swapon", "swapoff", "iopl", "ioperm", "syslog", "lookup_dcookie",
    # state shared with the whole host
    "keyctl", "add_key", "request_key", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    # other processes
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
    "pidfd_getfd",
    # mounts and namespaces
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "open_tree_attr",
    "fsopen", "fsmount", "fsconfig", "fspick", "mount_setattr", "setns",
    # files by handle, past every mount and path check
    "open_by_handle_at", "name_to_handle_at",
    # kernel interfaces with a record of escalations, which no environment needs
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register",
)  # fmt: skip

#: What a sandboxed process may not do (see the module docstring for why).
POLICY: tuple[Rule, ...] = (
    *(Rule(name) for name in _DENIED),
    Rule("unshare", AnyBit(0, _CLONE_NEWNS_ETC | _CLONE_NEWTIME)),
    Rule("clone", AnyBit(0, _CLONE_NEWNS_ETC)),
    Rule("clone3", errno=errno.ENOSYS),
    Rule("personality", ArgNotIn(0, _SAFE_PERSONALITIES)),
    Rule("ioctl", ArgIn(1, (_TIOCSTI, _TIOCLINUX))),
)  # fmt: skip


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def _ret(value: int) -> bytes:
    return _insn(_RET_K, value)


def _block(rule: Rule) -> list[bytes]:
    """Instructions for one call's rule, entered with its number matched; always returns."""
    deny, allow = _ret(SECCOMP_RET_ERRNO | rule.errno), _ret(SECCOMP_RET_ALLOW)
    when = rule.when
    if isinstance(when, Always):
        return [deny]
    load = _insn(_LD_W_ABS, _arg_offset(when.arg))
    if isinstance(when, AnyBit):
        return [load, _insn(_JSET_K, when.mask, 0, 1), deny, allow]
    # A match jumps past the remaining comparisons and the fall-through return.
    n = len(when.values)
    tests = [_insn(_JEQ_K, v, n - i, 0) for i, v in enumerate(when.values)]
    if isinstance(when, ArgIn):
        return [load, *tests, allow, deny]
    return [load, *tests, deny, allow]


def compile_filter(rules: Iterable[Rule] = POLICY, arch: Arch | None = None) -> bytes:
    """The BPF program (``struct sock_filter`` array) enforcing ``rules`` on ``arch``
    (default: this machine's), as bubblewrap's ``--seccomp`` and
    ``prctl(PR_SET_SECCOMP)`` take it. Calls ``arch`` lacks are left out."""
    arch = arch or native_arch()
    by_nr: dict[int, Rule] = {}
    for rule in rules:
        nr = arch.syscalls.get(rule.syscall)
        if nr is None:
            continue
        if nr in by_nr:
            raise ValueError(f"two seccomp rules for {rule.syscall}")
        by_nr[nr] = rule
    prog: list[bytes] = [
        _insn(_LD_W_ABS, _ARCH_OFFSET),
        _insn(_JEQ_K, arch.audit, 1, 0),
        _ret(SECCOMP_RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _NR_OFFSET),
    ]
    if arch.x32_bit:
        prog += [_insn(_JGE_K, arch.x32_bit, 0, 1), _ret(SECCOMP_RET_ERRNO | errno.ENOSYS)]
    for nr, rule in sorted(by_nr.items()):
        block = _block(rule)
        assert len(block) < 256, rule  # a jump offset is one byte
        prog += [_insn(_JEQ_K, nr, 0, len(block)), *block]
    prog.append(_ret(SECCOMP_RET_ALLOW))
    return b"".join(prog)

"""The seccomp program: every rule of the policy on both architectures (run by a small
classic-BPF interpreter written from the kernel's description), and the real kernel
running it in a child process."""

from __future__ import annotations

import errno
import json
import struct
import subprocess
import sys

import pytest

from loft.isolation import IsolationError, seccomp
from loft.isolation.seccomp import (
    AARCH64,
    POLICY,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    X86_64,
    Always,
    AnyBit,
    Arch,
    ArgIn,
    ArgNotIn,
    Rule,
    compile_filter,
    native_arch,
)

ARCHES = [X86_64, AARCH64]
EPERM = SECCOMP_RET_ERRNO | errno.EPERM
I386 = 0x40000003  # AUDIT_ARCH_I386: x86_64's 32-bit system call entry (int 0x80)
ARM = 0x40000028  # AUDIT_ARCH_ARM: aarch64's 32-bit one


def run_bpf(program: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """What seccomp would return for this call (the instructions the compiler emits)."""
    args64 = (*args, *[0] * (6 - len(args)))
    data = struct.pack("<IIQ6Q", nr, arch, 0, *(a & 0xFFFF_FFFF_FFFF_FFFF for a in args64))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x06:  # ret k
            return k
        elif code in (0x15, 0x35, 0x45):  # jeq, jge, jset
            hit = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if hit else jf
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def matching_args(rule: Rule) -> tuple[int, ...]:
    """Arguments for which ``rule`` denies the call."""
    when = rule.when
    if isinstance(when, Always):
        return ()
    args = [0] * 6
    if isinstance(when, AnyBit):
        args[when.arg] = when.mask & -when.mask  # its lowest bit
    elif isinstance(when, ArgIn):
        args[when.arg] = when.values[-1]
    else:  # ArgNotIn: a value not listed
        args[when.arg] = max(when.values[:-1]) + 1 if len(when.values) > 1 else 1
        assert args[when.arg] not in when.values
    return tuple(args)


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_seccomp_every_rule_denies_on_each_arch(arch: Arch) -> None:
    program = compile_filter(POLICY, arch)
    checked = 0
    for rule in POLICY:
        nr = arch.syscalls.get(rule.syscall)
        if nr is None:
            continue
        got = run_bpf(program, nr, arch.audit, matching_args(rule))
        assert got == SECCOMP_RET_ERRNO | rule.errno, rule
        checked += 1
    assert checked >= len(POLICY) - 2  # only x86's I/O port calls are missing on aarch64


@pytest.mark.parametrize("arch", ARCHES, ids=lambda a: a.name)
def test_seccomp_argument_rules_allow_the_harmless_cases(arch: Arch) -> None:
    program = compile_filter(POLICY, arch)

    def call(name: str, *args: int) -> int:
        return run_bpf(program, arch.syscalls[name], arch.audit, args)

    sigchld, clone_thread_flags = 17, 0x003D0F00  # what pthread_create passes
    assert call("clone", sigchld) == SECCOMP_RET_ALLOW
    assert call("clone", clone_thread_flags) == SECCOMP_RET_ALLOW
    assert call("clone", 0x10000000 | sigchld) == EPERM  # CLONE_NEWUSER
    # Only the low 32 bits count; the kernel ignores the rest of clone's flags too.
    assert call("clone", (1 << 40) | 0x40000000) == EPERM  # CLONE_NEWNET
    assert call("unshare", 0x00000400) == SECCOMP_RET_ALLOW  # CLONE_FILES
    assert call("unshare", 0x00000080) == EPERM  # CLONE_NEWTIME
    assert call("unshare", 0x00020000 | 0x400) == EPERM  # CLONE_NEWNS
    assert call("personality", 0xFFFFFFFF) == SECCOMP_RET_ALLOW  # query
    assert call("personality", 0) == SECCOMP_RET_ALLOW
    assert call("personality", 0x0040000) == EPERM  # ADDR_NO_RANDOMIZE
    assert call("personality", 0x0400000) == EPERM  # READ_IMPLIES_EXEC
    assert call("ioctl", 1, 0x5401) == SECCOMP_RET_ALLOW  # TCGETS
    assert call("ioctl", 1, 0x5412) == EPERM  # TIOCSTI
    assert call("clone3", 0, 88) == SECCOMP_RET_ERRNO | errno.ENOSYS
    # Calls no rule names, including the first and the highest numbers.
    for nr in (0, 1, 60, 300, 461):
        if nr not in arch.syscalls.values():
            assert run_bpf(program, nr, arch.audit) == SECCOMP_RET_ALLOW, nr


def test_seccomp_other_abis_are_refused() -> None:
    x86 = compile_filter(POLICY, X86_64)
    # The 32-bit entry has its own numbers (keyctl is 288 there): no filter for it, so no
    # call through it at all.
    assert run_bpf(x86, 288, I386) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(x86, 0x40000000 | 250, X86_64.audit) == SECCOMP_RET_ERRNO | errno.ENOSYS
    assert run_bpf(x86, 0x40000000, X86_64.audit) == SECCOMP_RET_ERRNO | errno.ENOSYS
    arm = compile_filter(POLICY, AARCH64)
    assert run_bpf(arm, 311, ARM) == SECCOMP_RET_KILL_PROCESS
    assert run_bpf(arm, 219, X86_64.audit) == SECCOMP_RET_KILL_PROCESS


def test_seccomp_rules_compile_as_declared() -> None:
    arch = Arch("test", 0xC000003E, {"a": 1, "b": 2, "c": 3})
    rules = [Rule("a"), Rule("b", ArgNotIn(2, (5, 6, 7))), Rule("c", errno=errno.EACCES)]
    program = compile_filter(rules, arch)
    assert run_bpf(program, 1, arch.audit) == EPERM
    assert [run_bpf(program, 2, arch.audit, (0, 0, v)) for v in (4, 5, 6, 7, 8)] == [
        EPERM, SECCOMP_RET_ALLOW, SECCOMP_RET_ALLOW, SECCOMP_RET_ALLOW, EPERM,
    ]  # fmt: skip
    assert run_bpf(program, 3, arch.audit) == SECCOMP_RET_ERRNO | errno.EACCES
    with pytest.raises(ValueError, match="two seccomp rules"):
        compile_filter([Rule("a"), Rule("a", AnyBit(0, 1))], arch)


def test_seccomp_unknown_arch_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    with pytest.raises(IsolationError, match="riscv64"):
        native_arch()


# Installs the filter in a child python and makes real system calls.
KERNEL_CHECK = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = json.loads(sys.argv[1])
program = sys.stdin.buffer.read()
class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
prog = SockFprog(len(program) // 8, program)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
pid = os.fork()  # glibc's fork: clone without namespace flags
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
print(json.dumps({
    "keyctl": call("keyctl", 0, -1),
    "unshare user": call("unshare", 0x10000000),
    "unshare nothing": call("unshare", 0),
    "clone3": call("clone3", 0, 0),
    "personality query": call("personality", 0xFFFFFFFF),
    "mount": call("mount", 0, 0, 0, 0, 0),
    "getppid": 0 if os.getppid() > 0 else 1,
    "fork": os.waitstatus_to_exitcode(status),
    "status": [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")],
}))
"""


def test_seccomp_filter_in_the_kernel() -> None:
    arch = native_arch()
    r = subprocess.run(
        [sys.executable, "-I", "-c", KERNEL_CHECK, json.dumps(dict(arch.syscalls))],
        input=compile_filter(), capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout) == {
        "keyctl": errno.EPERM,
        "unshare user": errno.EPERM,
        "unshare nothing": 0,
        "clone3": errno.ENOSYS,
        "personality query": 0,
        "mount": errno.EPERM,
        "getppid": 0,
        "fork": 7,
        "status": ["2"],
    }


def test_seccomp_program_shape() -> None:
    program = compile_filter()
    assert len(program) % 8 == 0 and len(program) // 8 < 4096  # BPF_MAXINSNS
    code, _, _, k = struct.unpack_from("=HBBI", program, 0)
    assert (code, k) == (0x20, 4)  # the program starts by loading the architecture

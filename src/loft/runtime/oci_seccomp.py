"""loft's seccomp policy in the OCI form runc takes (``linux.seccomp``).

runc 1.1 cannot load a BPF program of ours: it compiles the OCI rule list with libseccomp.
So the rules of :data:`loft.isolation.seccomp.POLICY` (the one deny list every loft
sandbox gets, nested user namespaces included) are translated, not rewritten:

- ``Always()`` -> one entry, ``SCMP_ACT_ERRNO`` with the rule's errno;
- ``AnyBit(i, mask)`` -> one entry per bit of the mask, each ``SCMP_CMP_MASKED_EQ`` (bit,
  bit): libseccomp matches a call when any entry for it matches, so together they deny
  "any bit set" (clone and unshare with a namespace flag, CLONE_NEWUSER among them);
- ``ArgIn(i, values)`` -> one ``SCMP_CMP_EQ`` entry per value;
- ``ArgNotIn(i, values)`` -> one entry whose comparisons are ``SCMP_CMP_NE`` for each
  value: the comparisons of an entry must all hold, so it denies "none of these".

The default action allows; the filter is for the native architecture only, so a call
through another ABI (i386's ``int 0x80``) or an x32 number meets libseccomp's bad-arch
action and kills the thread, as loft's own BPF program kills the process.
"""

from __future__ import annotations

from typing import Any

from loft.isolation.seccomp import POLICY, Always, AnyBit, Arch, ArgIn, ArgNotIn, Rule, native_arch

__all__ = ["oci_seccomp"]

_SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def _arg(index: int, value: int, op: str, two: int = 0) -> dict[str, Any]:
    return {"index": index, "value": value, "valueTwo": two, "op": op}


def _entries(rule: Rule) -> list[list[dict[str, Any]]]:
    """The argument comparisons of each OCI entry ``rule`` becomes (ORed together)."""
    when = rule.when
    if isinstance(when, Always):
        return [[]]
    if isinstance(when, AnyBit):
        bits = [1 << b for b in range(64) if when.mask >> b & 1]
        return [[_arg(when.arg, bit, "SCMP_CMP_MASKED_EQ", bit)] for bit in bits]
    if isinstance(when, ArgIn):
        return [[_arg(when.arg, v, "SCMP_CMP_EQ")] for v in when.values]
    assert isinstance(when, ArgNotIn)
    return [[_arg(when.arg, v, "SCMP_CMP_NE") for v in when.values]]


def oci_seccomp(rules: tuple[Rule, ...] = POLICY, arch: Arch | None = None) -> dict[str, Any]:
    """``linux.seccomp`` for ``rules`` on ``arch`` (default: this machine's); calls the
    architecture lacks are left out, as :func:`loft.isolation.seccomp.compile_filter`
    does."""
    arch = arch or native_arch()
    syscalls = []
    for rule in rules:
        if rule.syscall not in arch.syscalls:
            continue
        for args in _entries(rule):
            entry: dict[str, Any] = {
                "names": [rule.syscall],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": rule.errno,
            }
            if args:
                entry["args"] = args
            syscalls.append(entry)
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [_SCMP_ARCH[arch.name]],
        "syscalls": syscalls,
    }

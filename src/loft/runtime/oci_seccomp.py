"""loft's seccomp policy in the OCI form runc takes (``linux.seccomp``).

runc 1.1 cannot load a BPF program of ours: it compiles the OCI rule list with libseccomp.
So the rules of :data:`loft.isolation.seccomp.POLICY` (the one deny list every loft
sandbox gets, nested user namespaces included) are translated, not rewritten:

- ``Always()`` -> one entry, ``SCMP_ACT_ERRNO`` with the rule's errno;
- ``AnyBit(i, mask)`` -> one entry per bit of the mask, each ``SCMP_CMP_MASKED_EQ`` (bit,
  bit): libseccomp matches a call when any entry for it matches, so together they deny
  "any bit set" (clone and unshare with a namespace flag, CLONE_NEWUSER among them);
- ``ArgIn(i, values)`` -> one entry per value, ``SCMP_CMP_MASKED_EQ`` (0xFFFFFFFF, value);
- ``ArgNotIn(i, values)`` -> the 32-bit numbers outside ``values``, cut into aligned
  blocks, one ``SCMP_CMP_MASKED_EQ`` entry per block (a few dozen for personality).

Two things libseccomp does that the translation must not trip on. An entry holds at most
one comparison per argument (runc 1.1.5 with libseccomp 2.5.4 took ``NE a, NE b, …`` on
one argument and denied *every* personality call, measured), so a "none of these" is a
union of blocks instead. And libseccomp compares all 64 bits of an argument while the
kernel reads these arguments as 32-bit ``int``: an ``EQ TIOCSTI`` would let
``TIOCSTI | 1 << 32`` through. Every comparison is therefore masked to the low 32 bits,
which is also what loft's own BPF program tests.

The default action allows; the filter is for the native architecture only, so a call
through another ABI (i386's ``int 0x80``) or an x32 number meets libseccomp's bad-arch
action and kills the thread, as loft's own BPF program kills the process.
"""

from __future__ import annotations

from typing import Any

from loft.isolation.seccomp import POLICY, Always, AnyBit, Arch, ArgIn, ArgNotIn, Rule, native_arch

__all__ = ["oci_seccomp"]

_SCMP_ARCH = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
_LOW32 = 0xFFFF_FFFF


def _blocks(first: int, last: int) -> list[tuple[int, int]]:
    """[first, last] as aligned blocks: (start, size) with start a multiple of size, a
    power of two."""
    out = []
    while first <= last:
        size = first & -first if first else _LOW32 + 1
        while first + size - 1 > last:
            size //= 2
        out.append((first, size))
        first += size
    return out


def _outside(values: tuple[int, ...]) -> list[tuple[int, int]]:
    """The 32-bit numbers not in ``values``, as aligned blocks."""
    blocks, start = [], 0
    for v in sorted(set(values)):
        blocks += _blocks(start, v - 1)
        start = v + 1
    return blocks + _blocks(start, _LOW32)


def _masked(arg: int, value: int, mask: int = _LOW32) -> list[dict[str, Any]]:
    """One comparison: the argument's bits under ``mask`` equal ``value``."""
    return [{"index": arg, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}]


def _entries(rule: Rule) -> list[list[dict[str, Any]]]:
    """The argument comparisons of each OCI entry ``rule`` becomes (ORed together)."""
    when = rule.when
    if isinstance(when, Always):
        return [[]]
    if isinstance(when, AnyBit):
        assert when.mask <= _LOW32, rule
        return [_masked(when.arg, 1 << b, 1 << b) for b in range(32) if when.mask >> b & 1]
    if isinstance(when, ArgIn):
        return [_masked(when.arg, v) for v in when.values]
    assert isinstance(when, ArgNotIn)
    return [_masked(when.arg, start, _LOW32 & ~(size - 1)) for start, size in _outside(when.values)]


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

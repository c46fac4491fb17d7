"""loft.isolation: kernel building blocks for running untrusted code on a node.

:mod:`~loft.isolation.seccomp` (which system calls a sandbox may not make, compiled to a
BPF program) and :mod:`~loft.isolation.userns` (user namespaces mapping a sandbox's ids
onto a dedicated range of unprivileged host ids). They know nothing of environments,
workspaces or bubblewrap, so every sandbox loft starts can share them.
"""

from __future__ import annotations

from loft.errors import LoftError


class IsolationError(LoftError):
    """The host cannot give a sandbox the isolation it needs (architecture, ids, kernel)."""

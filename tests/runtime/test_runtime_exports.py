"""Each of the runtime's modules' ``__all__`` matches the public names it defines."""

from __future__ import annotations

import importlib
import inspect

import pytest

STORAGE = ["attach", "template", "freeze", "rootfs_layout", "io_flusher"]
SANDBOX = ["cgroups", "console", "egress", "errors", "forward", "ids", "interface", "layout",
           "oci", "oci_seccomp", "persist", "phase", "runc", "sandbox", "seed", "spec"]  # fmt: skip


@pytest.mark.parametrize("name", STORAGE + SANDBOX)
def test_runtime_exports_match_public_definitions(name: str) -> None:
    mod = importlib.import_module(f"loft.runtime.{name}")
    exported = set(mod.__all__)
    assert all(hasattr(mod, n) for n in exported), exported - set(dir(mod))
    defined = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == mod.__name__
    }
    assert defined <= exported, f"public but not exported: {defined - exported}"

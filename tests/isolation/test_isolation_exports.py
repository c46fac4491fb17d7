"""Each isolation module's ``__all__`` matches the public names it defines."""

from __future__ import annotations

import importlib
import inspect

import pytest


@pytest.mark.parametrize("name", ["seccomp", "userns", "mountns", "idmap"])
def test_isolation_all_matches_public_definitions(name: str) -> None:
    mod = importlib.import_module(f"loft.isolation.{name}")
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

"""Every loft module that declares ``__all__`` exports exactly what it names, and every
public function or class it defines is in it (httpx's habit: the public surface is
declared, and a test keeps the declaration true). An API route module exports its router,
whose handlers it registers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import loft

#: Modules run as programs of their own (inside jails), never imported by loft.
_PROGRAMS = {"loft.envstore._unpack_helper", "loft.envstore._apt_helper"}


def _declaring_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(loft.__path__, "loft."):
        if info.name in _PROGRAMS or ".migrations" in info.name:
            continue
        if "__all__" in vars(importlib.import_module(info.name)):
            names.append(info.name)
    return sorted(names)


def test_most_modules_declare_their_surface() -> None:
    assert len(_declaring_modules()) >= 60  # a module that drops __all__ shows up here


@pytest.mark.parametrize("name", _declaring_modules())
def test_all_matches_public_definitions(name: str) -> None:
    mod = importlib.import_module(name)
    exported = list(mod.__all__)
    assert len(exported) == len(set(exported)), "a name is exported twice"
    missing = [n for n in exported if not hasattr(mod, n)]
    assert not missing, f"exported but not defined: {missing}"
    # A route module's handlers are its router's: reached through it, never imported.
    router = getattr(mod, "router", None)
    handlers = {getattr(r, "endpoint", None) for r in getattr(router, "routes", ())}
    defined = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and v.__module__ == mod.__name__
        and v not in handlers
    }
    assert defined <= set(exported), f"public but not exported: {defined - set(exported)}"

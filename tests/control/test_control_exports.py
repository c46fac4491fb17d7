"""Each module of the control plane, its client and the API types has an ``__all__``
that matches the public names it defines."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "loft.api",
    "loft.api._rules",
    "loft.api.env",
    "loft.api.errors",
    "loft.api.execs",
    "loft.api.files",
    "loft.api.health",
    "loft.api.snapshots",
    "loft.api.tokens",
    "loft.api.users",
    "loft.api.workspaces",
    "loft.client",
    "loft.client._client",
    "loft.client._config",
    "loft.client._decode",
    "loft.client._errors",
    "loft.client._transport",
    "loft.control.accounts",
    "loft.control.app",
    "loft.control.bodylimit",
    "loft.control.deps",
    "loft.control.errors",
    "loft.control.fakenode",
    "loft.control.metrics",
    "loft.control.nodeclient",
    "loft.control.quotas",
    "loft.control.records",
    "loft.control.server",
    "loft.control.state",
    "loft.api.preview",
    "loft.control.activity",
    "loft.control.fakeprocs",
    "loft.control.preview.grants",
    "loft.control.preview.headers",
    "loft.control.preview.host",
    "loft.control.preview.pages",
    "loft.control.preview.proxy",
    "loft.control.preview.relay",
    "loft.control.preview.site",
    "loft.control.ratelimit",
    "loft.control.reaper",
    "loft.control.terminals",
    "loft.control.wake",
    "loft.envstore.runspec",
]


@pytest.mark.parametrize("name", MODULES)
def test_control_exports_match_public_definitions(name: str) -> None:
    mod = importlib.import_module(name)
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


def test_control_client_imports_nothing_heavy() -> None:
    """The CLI's request path: loft.client without httpx, pydantic or the server."""
    import subprocess
    import sys

    code = (
        "import sys, loft.client, loft.cli.apiclient;"
        "print(sorted(m for m in ('httpx', 'pydantic', 'fastapi', 'sqlalchemy', 'loft.control')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_names_come_from_their_modules() -> None:
    """loft.api hands out each name from the module its table says, and the table lists
    exactly what the package imports for type checkers (the two cannot drift)."""
    import ast

    import loft.api

    source = inspect.getsource(loft.api)
    checked = {
        alias.name: node.module.rsplit(".", 1)[1]
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loft.api.")
        for alias in node.names
    }
    assert checked == loft.api._MODULE_OF
    assert set(loft.api.__all__) == {"API_VERSION", *checked}
    for name, module in checked.items():
        home = importlib.import_module(f"loft.api.{module}")
        assert getattr(loft.api, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = loft.api.Nope  # type: ignore[attr-defined]


def test_cli_request_path_builds_only_the_types_it_uses() -> None:
    """Making the API's dataclasses is most of what importing it costs: a client that
    lists workspaces imports loft.api.workspaces and none of the other type modules."""
    import subprocess
    import sys

    code = (
        "import sys, loft.client, loft.api;"
        "from loft.client._decode import decode;"
        "decode(list[loft.api.Workspace], []);"
        "print(sorted(m for m in sys.modules if m.startswith('loft.api.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['loft.api._rules', 'loft.api.workspaces']"

"""The layering contract: data flows down. The layers are the block between the
``<!-- layers -->`` markers of docs/architecture.md, so the map and the check are one
text; every import in src/loft (module top, functions, TYPE_CHECKING blocks alike) must
point to a lower layer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "loft"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, int]:
    """Package -> its layer (0 is the top), read from docs/architecture.md."""
    text = ARCHITECTURE.read_text()
    m = re.search(r"<!-- layers -->\s*```\n(.*?)```\s*<!-- /layers -->", text, re.S)
    assert m, "docs/architecture.md lost its <!-- layers --> block"
    out: dict[str, int] = {}
    for depth, line in enumerate(m.group(1).strip().splitlines()):
        for name in line.split():
            assert name not in out, f"{name} is on two layers"
            out[name] = depth
    return out


def package_of(path: Path) -> str:
    """The top-level package (or module) under loft that ``path`` belongs to."""
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def imported_packages(source: str) -> set[str]:
    """The loft packages a module's source imports, wherever the import statement is."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "loft":
                names = [f"loft.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "loft" and len(parts) > 1:
                out.add(parts[1])
    return out


def violations(package: str, imports: set[str], table: dict[str, int]) -> list[str]:
    """Why each import of ``package`` breaks the contract (empty when none does)."""
    out = []
    for target in sorted(imports - {package}):
        if target not in table:
            out.append(f"{package} imports loft.{target}, which has no layer")
        elif table[target] <= table[package]:
            way = "sideways" if table[target] == table[package] else "upward"
            out.append(f"{package} imports loft.{target} ({way})")
    return out


def test_every_package_has_a_layer() -> None:
    table = layers()
    present = {package_of(p) for p in SRC.glob("*") if p.name not in ("__init__.py", "py.typed")}
    present.discard("__pycache__")
    assert present <= set(table), f"no layer for {sorted(present - set(table))}"


def test_imports_follow_the_layers() -> None:
    table = layers()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "__init__.py":
            continue
        package = package_of(path)
        for why in violations(package, imported_packages(path.read_text()), table):
            found.append(f"{path.relative_to(ROOT)}: {why}")
    assert not found, "layering broken:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("package", "source", "says"),
    [
        ("blockstore", "from loft.node import api\n", "upward"),
        ("blockstore", "def f():\n    import loft.node.disk_service\n", "upward"),
        ("nbd", "from loft.blockstore.errors import LeaseLost\n", "sideways"),
        ("envstore", "from loft import blockstore\n", "sideways"),
        (
            "objstore",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from loft.catalog import Catalog\n",
            "sideways",
        ),
    ],
)
def test_the_contract_catches_a_new_wrong_import(package: str, source: str, says: str) -> None:
    (why,) = violations(package, imported_packages(source), layers())
    assert says in why


def real_edges() -> dict[str, set[str]]:
    """Package -> the loft packages its modules import, from the code."""
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path == SRC / "__init__.py":
            continue
        package = package_of(path)
        edges.setdefault(package, set()).update(imported_packages(path.read_text()) - {package})
    return {k: v for k, v in edges.items() if v}


def test_the_map_draws_the_real_edges() -> None:
    """docs/architecture.md's "Real edges today" paragraph is what the code imports."""
    text = ARCHITECTURE.read_text()
    m = re.search(r"Real edges today: (.*?)\.\s", text, re.S)
    assert m, "docs/architecture.md lost its 'Real edges today' paragraph"
    drawn = {
        src.strip(): {t.strip() for t in targets.split(",")}
        for src, targets in re.findall(r"`(\w+) → ([\w, \n]+)`", m.group(1))
    }
    assert drawn == real_edges()

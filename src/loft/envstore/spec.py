"""The environment spec: ``loft.toml``'s ``[env]`` table.

```toml
[env]
debian = ["python3", "git", "curl"]
pypi   = ["requests==2.32.3"]
npm    = ["left-pad@1.3.0"]
```

Parsing is pure (:func:`parse_spec` takes text); :func:`load_spec` only reads the file.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from loft.envstore import EnvstoreError

__all__ = ["DEFAULT_SPEC_FILE", "Spec", "SpecError", "load_spec", "parse_spec"]

DEFAULT_SPEC_FILE = "loft.toml"
_KEYS = ("debian", "pypi", "npm")
# Debian package names (Policy 5.6.1), with an optional ":arch" we refuse later if foreign.
_DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_NPM_NAME = re.compile(r"(@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*(@\S+)?", re.I)


class SpecError(EnvstoreError):
    """``loft.toml`` is missing, not TOML, or its ``[env]`` table is malformed."""


@dataclass(frozen=True)
class Spec:
    """What an environment asks for, in the words of each registry."""

    debian: tuple[str, ...] = ()
    pypi: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        """The spec as recorded in a lock."""
        return {"debian": list(self.debian), "pypi": list(self.pypi), "npm": list(self.npm)}


def load_spec(path: Path) -> Spec:
    """Read and validate ``path``; every failure is a :class:`SpecError` naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(
            f"{path}: no such spec file", hint="create loft.toml with an [env] table"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {e}") from e
    return parse_spec(text, source=str(path))


def parse_spec(text: str, *, source: str = DEFAULT_SPEC_FILE) -> Spec:
    """Parse the TOML text of a spec."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{source}: not valid TOML: {e}") from e
    env = doc.get("env")
    if not isinstance(env, dict):
        raise SpecError(f"{source}: no [env] table", hint='add [env] with debian = ["..."]')
    unknown = sorted(set(env) - set(_KEYS))
    if unknown:
        raise SpecError(
            f"{source}: unknown key env.{unknown[0]}", hint=f"known keys: {', '.join(_KEYS)}"
        )
    lists: dict[str, tuple[str, ...]] = {}
    for key in _KEYS:
        raw = env.get(key, [])
        if not isinstance(raw, list) or not all(isinstance(x, str) and x.strip() for x in raw):
            raise SpecError(f"{source}: env.{key} must be a list of non-empty strings")
        lists[key] = tuple(x.strip() for x in raw)
    for name in lists["debian"]:
        if not _DEBIAN_NAME.fullmatch(name):
            raise SpecError(f"{source}: {name!r} is not a Debian package name")
    for name in lists["npm"]:
        if not _NPM_NAME.fullmatch(name):
            raise SpecError(f"{source}: {name!r} is not an npm package spec (name@version)")
    for req in lists["pypi"]:
        if req.startswith("-") or "://" in req:
            raise SpecError(f"{source}: {req!r}: pypi entries are requirements, not pip options")
    if not any(lists.values()):
        raise SpecError(f"{source}: [env] asks for nothing")
    return Spec(**lists)

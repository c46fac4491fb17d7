"""Exports: which backends a server offers, under which names, and who may open them."""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from loft.nbd.backends.base import Backend
from loft.nbd.protocol import NBDError

__all__ = ["Authorizer", "Export", "ExportLookup", "ExportRegistry", "load_authz"]


@dataclass(frozen=True, slots=True)
class Export:
    """One export: a name, the backend every connection to it shares, a description."""

    name: str
    backend: Backend
    description: str = ""


class ExportLookup(Protocol):
    """What the server needs from a set of exports (the in-memory registry, or the
    catalog-backed one of the disk service)."""

    @property
    def blocking(self) -> bool:
        """True when lookups may block (a database): the server then makes them on a
        worker thread instead of the event loop."""
        ...

    def lookup(self, name: str) -> Export | None:
        """The export called ``name`` ("" is the default export), or None."""
        ...

    def exports(self) -> Iterable[Export]:
        """Every export, for NBD_OPT_LIST."""
        ...


@dataclass
class ExportRegistry:
    """An in-memory set of exports. One backend object per export, shared by all
    connections (so a FLUSH on one connection covers writes from all of them)."""

    _exports: dict[str, Export] = field(default_factory=dict)
    #: name served when a client asks for the empty export name
    default: str | None = None
    blocking = False  # a dict lookup: answered on the event loop

    def add(self, name: str, backend: Backend, description: str = "") -> Export:
        """Register ``backend`` as export ``name``."""
        if name in self._exports:
            raise NBDError(f"export {name!r} is already registered")
        export = Export(name, backend, description or backend.description)
        self._exports[name] = export
        if self.default is None:
            self.default = name
        return export

    def remove(self, name: str) -> Export | None:
        """Unregister an export (its backend is not closed)."""
        return self._exports.pop(name, None)

    def lookup(self, name: str) -> Export | None:
        if name == "" and self.default is not None:
            return self._exports.get(self.default)
        return self._exports.get(name)

    def exports(self) -> Iterable[Export]:
        return list(self._exports.values())

    def close(self) -> None:
        """Close every registered backend."""
        for export in self._exports.values():
            export.backend.close()


@dataclass(frozen=True)
class Authorizer:
    """Which exports each TCP client identity (its certificate's subject CN, see
    :func:`~loft.nbd.server.peer_identity`) may see and open.

    Patterns use shell wildcards (``vol-a@*`` allows every snapshot of ``vol-a``).
    Clients of a trusted listener (the Unix socket, whose directory only root can
    enter) are never asked about: the listener, not the identity, says who is trusted.
    """

    rules: Mapping[str, tuple[str, ...]]

    def allows(self, identity: str | None, export: str) -> bool:
        """True when ``identity`` may see and open ``export``; a client without an
        identity (None) may open nothing."""
        if identity is None:
            return False
        patterns = self.rules.get(identity, ())
        return any(fnmatch.fnmatchcase(export, p) for p in patterns)


def load_authz(path: str | Path) -> Authorizer:
    """Read an authorization file (JSON or TOML): ``{"clients": {"CN": ["export", ...]}}``."""
    p = Path(path)
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as e:
        raise NBDError(
            f"cannot read authorization file {p}: {e}",
            hint='expected {"clients": {"<certificate CN>": ["<export>", ...]}}',
        ) from None
    clients = data.get("clients") if isinstance(data, dict) else None
    if not isinstance(clients, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in clients.items()
    ):
        raise NBDError(
            f"authorization file {p} has no valid 'clients' table",
            hint='expected {"clients": {"<certificate CN>": ["<export>", ...]}}',
        )
    return Authorizer({k: tuple(v) for k, v in clients.items()})

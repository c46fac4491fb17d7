"""A workspace's snapshots (``/v1/workspaces/{name}/snapshots``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from loft.api._rules import FORBID_EXTRA, Bool, Float, Int, Rule, Str

__all__ = ["SNAPSHOT_NAME_PATTERN", "CreateSnapshot", "Snapshot", "SnapshotDeleted"]

#: A snapshot name: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit.
SNAPSHOT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


@dataclass(frozen=True, slots=True)
class CreateSnapshot:
    """Snapshot the workspace now (running or not); without a name, one is made up."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: Annotated[str, Rule(pattern=SNAPSHOT_NAME_PATTERN)] | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot; ``auto`` ones were taken by loft (before a restore, at a stop)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: Str
    created_at: Float
    auto: Bool
    #: the volume version it holds (when the node says)
    version: Int | None = None
    #: for one just taken of a running workspace: how long its writers were held (ms)
    pause_ms: Float | None = None


@dataclass(frozen=True, slots=True)
class SnapshotDeleted:
    """The snapshot deleted."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    deleted: Str

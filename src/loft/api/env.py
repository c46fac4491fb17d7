"""A workspace's environment history (``/v1/workspaces/{name}/env``): switching to new
software makes a generation; a rollback moves back to an earlier one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from loft.api._rules import FORBID_EXTRA, Float, Int, Rule, Str
from loft.api.workspaces import EnvSpec

__all__ = ["EnvGeneration", "EnvRollback", "EnvState"]


@dataclass(frozen=True, slots=True)
class EnvGeneration:
    """One generation of a workspace's environment: what it was built from (when the
    node knows), when, and the store path it is."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    number: Int
    env: EnvSpec | None = None
    created_at: Float | None = None
    env_path: Str | None = None


@dataclass(frozen=True, slots=True)
class EnvState:
    """The current generation and every kept one, oldest first."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    current: Int
    generations: list[EnvGeneration]


@dataclass(frozen=True, slots=True)
class EnvRollback:
    """Go back to a generation (without one: the one before the current)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    generation: Annotated[int, Rule(ge=1)] | None = None

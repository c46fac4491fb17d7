"""The body of every error answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from loft.api._rules import FORBID_EXTRA, Str

__all__ = ["ErrorAnswer"]


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """Why a request failed (one line for people), and what to do about it."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    error: Str
    hint: Str | None = None

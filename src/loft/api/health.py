"""``GET /healthz``: the API answers, and whether its node agent does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from loft.api._rules import FORBID_EXTRA

__all__ = ["Health"]


@dataclass(frozen=True, slots=True)
class Health:
    """``status`` is ``ok`` whenever the API answers; ``node`` says if its node did."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    status: Literal["ok"]
    node: Literal["ok", "unavailable"]

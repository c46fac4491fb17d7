"""Field rules the server enforces, written without importing pydantic.

The API's types are plain dataclasses so that a client (and the CLI's light request path)
imports nothing heavy. The server validates them with pydantic, which reads these markers
through ``__get_pydantic_core_schema__``: every field is *strict* (JSON's own types, no
``"5"`` for 5 or ``1`` for true) and may carry bounds, which also land in the OpenAPI
schema. A client ignores them.
"""

from __future__ import annotations

from typing import Annotated, Any

__all__ = [
    "FORBID_EXTRA",
    "Bool",
    "Float",
    "Int",
    "Rule",
    "Str",
]

#: The pydantic config of every type: a field it does not know is refused (a typo is an
#: error, not a no-op). Each dataclass sets it as ``__pydantic_config__``.
FORBID_EXTRA: dict[str, object] = {"extra": "forbid"}


class Rule:
    """Constraints merged into a field's pydantic core schema: always ``strict``, plus
    any of ``ge``, ``le``, ``min_length``, ``max_length``, ``pattern``."""

    __slots__ = ("constraints",)

    def __init__(self, **constraints: object) -> None:
        self.constraints = {"strict": True, **constraints}

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        schema = handler(source)
        schema.update(self.constraints)
        return schema

    def __repr__(self) -> str:
        return f"Rule({self.constraints})"


_STRICT = Rule()
Int = Annotated[int, _STRICT]
Float = Annotated[float, _STRICT]
Str = Annotated[str, _STRICT]
Bool = Annotated[bool, _STRICT]

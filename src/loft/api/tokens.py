"""API tokens of the caller (``/v1/tokens``). A token is shown once, when it is made;
the service keeps only a keyed hash of its secret."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

from loft.api._rules import FORBID_EXTRA, Float, Rule, Str

__all__ = ["CreateToken", "Token", "TokenCreated"]


@dataclass(frozen=True, slots=True)
class CreateToken:
    """A new token for the caller; the name is a note for people (``laptop``, ``ci``)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: Annotated[str, Rule(max_length=64, pattern=r"^[\x20-\x7e]*$")] = ""


@dataclass(frozen=True, slots=True)
class Token:
    """A token as listed: its public id and note, never its secret."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    id: Str
    name: Str
    created_at: Float
    #: when it last authenticated a request (updated at most once a minute)
    last_used_at: Float | None


@dataclass(frozen=True, slots=True)
class TokenCreated:
    """The token made: ``token`` is the bearer secret, shown this once."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    id: Str
    name: Str
    created_at: Float
    token: Str

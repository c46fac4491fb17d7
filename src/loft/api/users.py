"""Users, their quotas and what they use (``/v1/users``, ``/v1/me``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar

from loft.api._rules import FORBID_EXTRA, Bool, Float, Int, Rule, Str

__all__ = [
    "USER_NAME_PATTERN",
    "CreateUser",
    "Quotas",
    "UpdateUser",
    "Usage",
    "User",
    "UserCreated",
    "UserName",
]

#: A user name: lower-case letters, digits and dashes, starting with a letter.
USER_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
UserName = Annotated[str, Rule(pattern=USER_NAME_PATTERN)]

_GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Quotas:
    """What one user's workspaces may add up to: how many, their memory and CPU limits,
    and their disks' virtual sizes (bytes)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    workspaces: Annotated[int, Rule(ge=0, le=10_000)] = 10
    memory: Annotated[int, Rule(ge=0, le=1 << 50)] = 32 * _GIB
    cpus: Annotated[float, Rule(ge=0, le=4096)] = 16.0
    disk: Annotated[int, Rule(ge=0, le=1 << 60)] = 1024 * _GIB


@dataclass(frozen=True, slots=True)
class Usage:
    """What a user's workspaces add up to now, in the units of :class:`Quotas`."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    workspaces: Int
    memory: Int
    cpus: Float
    disk: Int


@dataclass(frozen=True, slots=True)
class User:
    """A user: an admin sees and manages everything, anyone else only their own."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: Str
    admin: Bool
    created_at: Float
    quotas: Quotas
    usage: Usage


@dataclass(frozen=True, slots=True)
class CreateUser:
    """A new user (admin only); its first token is in the answer, and only there."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: UserName
    admin: Bool = False
    quotas: Quotas = field(default_factory=Quotas)


@dataclass(frozen=True, slots=True)
class UserCreated:
    """The user created and its first token (shown once: only its hash is kept)."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    name: Str
    admin: Bool
    token: Str


@dataclass(frozen=True, slots=True)
class UpdateUser:
    """Change a user's admin flag or quotas (admin only); a field left out is kept."""

    __pydantic_config__: ClassVar[dict[str, object]] = FORBID_EXTRA
    admin: Bool | None = None
    quotas: Quotas | None = None

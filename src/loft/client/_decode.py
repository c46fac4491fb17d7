"""Answers into the API's dataclasses. Lenient where a client should be: a field the
server added since is ignored; a missing field with a default takes it."""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, TypeVar

from loft.client._errors import TransportError

__all__ = ["decode"]

T = TypeVar("T")


def decode(tp: Any, value: object) -> Any:
    """``value`` (decoded JSON) as type ``tp``: dataclasses, lists and dicts of them."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return decode(typing.get_args(tp)[0], value)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return decode(inner, value)
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [decode(item, v) for v in value]
    if origin is dict and isinstance(value, dict):
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TransportError(f"malformed answer: {tp.__name__} is not an object")
        hints = _hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        try:
            return tp(**{k: decode(hints[k], v) for k, v in value.items() if k in known})
        except TypeError as e:
            raise TransportError(f"malformed answer: {e}") from None
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=False)

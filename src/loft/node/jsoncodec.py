"""Typed JSON for the node API: frozen dataclasses to JSON objects and back, checked
field by field, and the JSON Schema of each (for the OpenAPI description).

A field's type is one of ``str``, ``int``, ``float``, ``bool``, ``X | None``,
``list[X]`` or another such dataclass; nothing else is accepted, so every message the
API can carry is described by its schema. Decoding rejects unknown fields, missing
required fields and wrong types with :class:`CodecError`, naming the field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, TypeVar

from loft.errors import LoftError

__all__ = ["CodecError", "decode", "encode", "schema"]

T = TypeVar("T")


class CodecError(LoftError):
    """A JSON value does not fit the type it was read as."""


def encode(obj: object) -> dict[str, Any]:
    """The JSON object of a dataclass instance."""
    return dataclasses.asdict(obj)  # type: ignore[call-overload, no-any-return]


def decode(cls: type[T], data: object, where: str = "") -> T:
    """An instance of dataclass ``cls`` from a decoded JSON value, checked."""
    if not isinstance(data, dict):
        raise CodecError(f"{where or 'body'}: expected an object")
    hints = _hints(cls)  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise CodecError(f"{where or 'body'}: unknown field {unknown[0]!r}")
    args: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise CodecError(f"{path}: required")
            continue
        args[f.name] = _value(hints[f.name], data[f.name], path)
    return cls(**args)


def _value(tp: Any, value: object, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _value(inner, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise CodecError(f"{path}: expected a list")
        (item,) = typing.get_args(tp)
        return [_value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return decode(tp, value, path)  # type: ignore[arg-type]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int in Python, never in JSON
    if tp in (int, float) and isinstance(value, bool):
        raise CodecError(f"{path}: expected {tp.__name__}")
    if tp in (str, int, float, bool):
        if not isinstance(value, tp):
            raise CodecError(f"{path}: expected {tp.__name__}")
        return value
    raise TypeError(f"{path}: type {tp!r} has no JSON form")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


_PRIMITIVE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a type; dataclasses go into ``defs`` (by name) and are
    referred to as ``#/components/schemas/NAME``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [o for o in typing.get_args(tp) if o is not type(None)]
        return {**schema(inner, defs), "nullable": True}
    if origin is list:
        (item,) = typing.get_args(tp)
        return {"type": "array", "items": schema(item, defs)}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder: a recursive type refers to itself
            hints = _hints(tp)
            fields = dataclasses.fields(tp)
            defs[name] = {
                "type": "object",
                "description": (tp.__doc__ or "").strip().splitlines()[0],
                "additionalProperties": False,
                "properties": {f.name: schema(hints[f.name], defs) for f in fields},
                "required": [
                    f.name
                    for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                ],
            }
        return {"$ref": f"#/components/schemas/{name}"}
    return {"type": _PRIMITIVE[tp]}

"""A JSON Schema of ``/status.json``, derived from the model's dataclasses.

Derived, not written by hand, so it cannot drift from what the server sends; served as
``/status.schema.json`` for readers in other languages.  Every field is required (a value
the runtime does not know is ``null``, not absent); extra properties are allowed because
version 1 may grow new fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from ratbond.status.model import DEGRADED, DOWN, SCHEMA_VERSION, UP, StatusModel

_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
    bool: {"type": "boolean"}, type(None): {"type": "null"},
}


def _schema_of(hint: Any) -> dict[str, Any]:
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _object(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_schema_of(arg) for arg in args]}
    if origin is tuple:
        return {"type": "array", "items": _schema_of(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(args[1])}
    raise TypeError(f"no JSON Schema for {hint!r}")


def _object(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    return {"type": "object", "properties": {name: _schema_of(hints[name]) for name in names},
            "required": names}


def json_schema() -> dict[str, Any]:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "title": f"ratbond /status.json, schema_version {SCHEMA_VERSION}",
              **_object(StatusModel)}
    schema["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    schema["properties"]["state"] = {"enum": [UP, DEGRADED, DOWN]}
    return schema

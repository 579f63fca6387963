"""Writes the flat TOML a settings document needs (``ratbond client --config`` reads it).

Only what the client's config file holds: strings, whole and decimal numbers, booleans,
lists of those and one level of inline table (``link-rate``).  Anything else is refused,
so a document can never smuggle in something the loader would read differently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{key!r} is not a settings key")
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _value(value: object, *, depth: int = 0) -> str:
    """A scalar anywhere; a list of scalars at the top or in a table; a table at the top."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML basic-string escapes
    if isinstance(value, list) and depth < 2:
        return "[" + ", ".join(_value(v, depth=2) for v in value) + "]"
    if isinstance(value, dict) and depth == 0:
        return "{" + ", ".join(f"{_key(k)} = {_value(v, depth=1)}"
                               for k, v in value.items()) + "}"
    raise ValueError(f"{value!r} cannot be a setting")


def render(settings: Mapping[str, object]) -> str:
    """``key = value`` lines; raises ValueError for a value a config file cannot hold."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in settings.items())

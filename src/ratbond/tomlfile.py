"""Reading a TOML file a user wrote (config file, clients file): one message per failure.

The callers turn :class:`TomlFileError` into their own error type, so every loader says
the same thing for an unreadable file, bad TOML or a file that is not UTF-8.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


class TomlFileError(ValueError):
    """The file could not be read as TOML; the message names the flag, file and cause."""


def read_toml(path: str, flag: str) -> dict[str, Any]:
    """The parsed file given with ``flag`` (``--config``, ``--clients``)."""
    try:
        with Path(path).open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as exc:
        raise TomlFileError(f"{flag}: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(f"{flag}: {path!r} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes before it parses
        raise TomlFileError(f"{flag}: {path!r} is not UTF-8 text (byte {exc.start} is "
                            f"{exc.object[exc.start]:#04x}); TOML files are UTF-8") from None

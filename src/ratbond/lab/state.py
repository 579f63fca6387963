"""Where a lab records itself, so another process (``ratbond lab down``) can find it.

``/run/ratbond-lab/<name>.json`` holds the namespace prefix, the links and the emulator
pids; ``/run/ratbond-lab/<name>/`` holds the emulators' control sockets and logs. The
file is written before the first namespace is made, so even a build killed half-way
can be removed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_DIR = Path(os.environ.get("RATBOND_LAB_RUN_DIR", "/run/ratbond-lab"))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class LabError(RuntimeError):
    """A lab cannot be built, found or changed; the message says what to do."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LabError(f"lab name {name!r}: use 1-40 letters, digits, '_', '.', '-' "
                       "(starting with a letter or digit)")
    return name


@dataclass
class LabState:
    """The persisted description of one lab (JSON-friendly fields only)."""

    name: str
    prefix: str
    links: list[dict[str, Any]]
    phase: str = "building"
    emulators: dict[str, dict[str, Any]] = field(default_factory=dict)
    owner_pid: int = field(default_factory=os.getpid)
    #: IPv6 on the WAN side too (WAN links, ISP and server dual-stack); see Lab.up(ipv6=).
    ipv6: bool = False

    @property
    def path(self) -> Path:
        return state_path(self.name)

    @property
    def workdir(self) -> Path:
        return RUN_DIR / self.name

    def save(self) -> None:
        """Write atomically, so a reader never sees half a file."""
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        for path in (self.path, self.path.with_suffix(".json.tmp")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            RUN_DIR.rmdir()  # only when no other lab is left


def state_path(name: str) -> Path:
    return RUN_DIR / f"{check_name(name)}.json"


def load_state(name: str) -> LabState:
    path = state_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab named {name!r} (no {path}); start one with "
                       "'ratbond lab up --links ...'") from None
    except ValueError as exc:
        raise LabError(f"lab state {path} is unreadable: {exc}") from None
    return LabState(**data)


def list_states() -> list[str]:
    """Names of the labs recorded on this machine."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(p.stem for p in RUN_DIR.glob("*.json"))

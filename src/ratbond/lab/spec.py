"""What one emulated WAN link looks like, and the short text form users type for it.

Grammar of one link (``ratbond lab up --links A,B,C``)::

    direct                      plain veth, no emulator (for CPU-bound benchmarks)
    RATE[:PART]...              RATE is DOWN/UP or one number for both, in Mbit/s;
                                ``*`` means unlimited
    PART  20ms                  one-way delay, each direction
          j5ms                  jitter (never reorders)
          0.1%                  random loss, each direction
          q100ms                bounded queue, in ms of the rate (tail drop)

Examples: ``30/10:20ms:0.1%``, ``20:40ms``, ``10:60ms:1%``, ``*:5ms``, ``direct``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

ALLOWED = ("a link is 'direct' or RATE[:DELAYms][:jJITTERms][:LOSS%][:qQUEUEms] with RATE = "
           "DOWN/UP or one value for both in Mbit/s ('*' = unlimited), "
           "e.g. 30/10:20ms:0.1%")

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DELAY = re.compile(rf"{_NUMBER}ms")
_JITTER = re.compile(rf"j{_NUMBER}ms")
_QUEUE = re.compile(rf"q{_NUMBER}ms")
_LOSS = re.compile(rf"{_NUMBER}%")


class LinkSpecError(ValueError):
    """A link description does not parse; the message names the bad part and the grammar."""


@dataclass(frozen=True)
class LinkSpec:
    """One WAN link: rates in Mbit/s (None = unlimited), one-way delay/jitter, loss fraction."""

    down_mbit: float | None
    up_mbit: float | None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    queue_ms: float = 50.0
    direct: bool = False

    def __post_init__(self) -> None:
        for name in ("down_mbit", "up_mbit"):
            rate = getattr(self, name)
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise LinkSpecError(f"{name}={rate!r}: a rate must be a positive number or None")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise LinkSpecError(f"{name}={value!r}: must be a number >= 0")
        if not (math.isfinite(self.queue_ms) and self.queue_ms > 0):
            raise LinkSpecError(f"queue_ms={self.queue_ms!r}: must be a number > 0")
        if not 0.0 <= self.loss <= 1.0:
            raise LinkSpecError(f"loss={self.loss!r}: must be a fraction between 0 and 1")
        if self.direct and not self.is_transparent:
            raise LinkSpecError("a direct link has no emulator: it cannot have a rate, delay, "
                                "jitter or loss")

    @property
    def is_transparent(self) -> bool:
        """True when the link changes nothing (it may then be a plain veth)."""
        return (self.down_mbit is None and self.up_mbit is None and self.delay_ms == 0
                and self.jitter_ms == 0 and self.loss == 0)

    @classmethod
    def parse(cls, text: str) -> LinkSpec:
        """Parse the short form (module docstring); errors name the bad part."""
        spec = text.strip()
        if spec.lower() == "direct":
            return cls(None, None, direct=True)
        if not spec:
            raise LinkSpecError(f"empty link description: {ALLOWED}")
        rate, *parts = spec.split(":")
        down, up = _parse_rate(rate, spec)
        values: dict[str, float] = {}
        for part in parts:
            key, value = _parse_part(part.strip(), spec)
            if key in values:
                raise LinkSpecError(f"link {spec!r}: {key} given twice ({part!r}); {ALLOWED}")
            values[key] = value
        try:
            return cls(down, up, delay_ms=values.get("delay_ms", 0.0),
                       jitter_ms=values.get("jitter_ms", 0.0), loss=values.get("loss", 0.0),
                       queue_ms=values.get("queue_ms", 50.0))
        except LinkSpecError as exc:
            raise LinkSpecError(f"link {spec!r}: {exc}") from None

    def to_text(self) -> str:
        """The short form; ``LinkSpec.parse(s.to_text()) == s``."""
        if self.direct:
            return "direct"
        down, up = _fmt_rate(self.down_mbit), _fmt_rate(self.up_mbit)
        out = [down if down == up else f"{down}/{up}"]
        if self.delay_ms:
            out.append(f"{_fmt(self.delay_ms)}ms")
        if self.jitter_ms:
            out.append(f"j{_fmt(self.jitter_ms)}ms")
        if self.loss:
            out.append(f"{_fmt_percent(self.loss)}%")
        if self.queue_ms != 50.0:
            out.append(f"q{_fmt(self.queue_ms)}ms")
        return ":".join(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkSpec:
        """Build from a mapping of field names (state files, TOML tables)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LinkSpecError(f"unknown link field(s) {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))


def parse_links(text: str) -> list[LinkSpec]:
    """A comma-separated list of links, or the path of a TOML file with ``links = [...]``.

    In the TOML file each entry is a short-form string or a table of LinkSpec fields.
    """
    if text.endswith(".toml"):
        return load_links_toml(Path(text))
    items = text.split(",")
    if not text.strip() or any(not item.strip() for item in items):
        raise LinkSpecError(f"--links {text!r}: empty entry; give links separated by commas, "
                            f"{ALLOWED}")
    return [LinkSpec.parse(item) for item in items]


def load_links_toml(path: Path) -> list[LinkSpec]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LinkSpecError(f"links file {str(path)!r}: {exc}") from None
    entries = data.get("links")
    if not isinstance(entries, list) or not entries:
        raise LinkSpecError(f"links file {str(path)!r}: needs a non-empty 'links = [...]' list")
    out: list[LinkSpec] = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(LinkSpec.parse(entry))
        elif isinstance(entry, dict):
            out.append(LinkSpec.from_dict(entry))
        else:
            raise LinkSpecError(f"links file {str(path)!r}: entry {entry!r} is neither a string "
                                "nor a table")
    return out


def parse_percent(text: str) -> float:
    """``'5%'`` or ``'0.05'`` -> 0.05 (for ``ratbond lab link --loss``)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise LinkSpecError(f"loss {text!r}: give a percentage like 5% or a fraction like "
                            "0.05") from None
    if not 0.0 <= value <= 1.0:
        raise LinkSpecError(f"loss {text!r}: must be between 0% and 100%")
    return value


def parse_ms(text: str) -> float:
    """``'20ms'`` or ``'20'`` -> 20.0."""
    raw = text.strip().removesuffix("ms")
    try:
        value = float(raw)
    except ValueError:
        raise LinkSpecError(f"duration {text!r}: give milliseconds like 20ms") from None
    if not (math.isfinite(value) and value >= 0):
        raise LinkSpecError(f"duration {text!r}: must be >= 0 ms")
    return value


def _parse_rate(text: str, spec: str) -> tuple[float | None, float | None]:
    halves = text.split("/")
    if len(halves) > 2:
        raise LinkSpecError(f"link {spec!r}: rate {text!r} has more than one '/'; {ALLOWED}")
    rates = [_parse_one_rate(h.strip(), spec) for h in halves]
    return (rates[0], rates[-1])


def _parse_one_rate(text: str, spec: str) -> float | None:
    if text in ("*", "inf", "unlimited"):
        return None
    if not re.fullmatch(_NUMBER, text) or float(text) <= 0:
        raise LinkSpecError(f"link {spec!r}: bad rate {text!r} (Mbit/s > 0 or '*'); {ALLOWED}")
    return float(text)


def _parse_part(part: str, spec: str) -> tuple[str, float]:
    for pattern, key, divisor in ((_JITTER, "jitter_ms", 1), (_QUEUE, "queue_ms", 1),
                                  (_DELAY, "delay_ms", 1), (_LOSS, "loss", 100)):
        match = pattern.fullmatch(part)
        if match:
            return key, float(Decimal(match.group(1)) / divisor)
    raise LinkSpecError(f"link {spec!r}: bad part {part!r}; {ALLOWED}")


def _fmt(value: float) -> str:
    return f"{value:g}"


def _fmt_percent(fraction: float) -> str:
    """Percent text that parses back to exactly ``fraction`` (decimal, no float error)."""
    return format((Decimal(repr(fraction)) * 100).normalize(), "f")


def _fmt_rate(rate: float | None) -> str:
    return "*" if rate is None else _fmt(rate)


def format_links(links: Sequence[LinkSpec]) -> str:
    return ",".join(link.to_text() for link in links)

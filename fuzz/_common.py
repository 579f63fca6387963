"""What every harness shares: optional atheris instrumentation and the libFuzzer entry."""

from __future__ import annotations

import contextlib
import importlib
import random
import sys
from collections.abc import Callable, Iterator

PSK = bytes(range(32))
WALL_EPOCH = 1_800_000_000.0


def seeded(seed: int) -> Callable[[int], bytes]:
    """A deterministic stand-in for ``os.urandom``: the same input takes the same path."""
    return random.Random(seed).randbytes


@contextlib.contextmanager
def instrumented(module_name: str) -> Iterator[None]:
    """Instrument ``ratbond`` for coverage when the harness runs as the fuzzer's main
    module; a plain import (the unit suite) needs no atheris and instruments nothing."""
    if module_name != "__main__":
        yield
        return
    atheris = importlib.import_module("atheris")

    with atheris.instrument_imports(include=["ratbond"]):
        yield


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Hand ``test_one_input`` to libFuzzer with the command line's flags and corpus."""
    atheris = importlib.import_module("atheris")

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def split(data: bytes, parts: int) -> list[bytes]:
    """Cut ``data`` into at most ``parts`` pieces at the 0xFF 0x00 separators a mutator can
    find and keep (several datagrams in one input)."""
    return data.split(b"\xff\x00", parts - 1)

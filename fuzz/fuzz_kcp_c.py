"""Fuzz the C engine (siokcp, the reference ikcp): the same harness as the pure engine's,
then both engines in lock-step on the same input (:func:`fuzz.fuzz_kcp.twin`).  libFuzzer
sees no coverage inside the C code (it is not built for it); the pure engine's coverage
steers the inputs both get."""

from __future__ import annotations

from fuzz._common import fuzz, instrumented

with instrumented(__name__):
    from fuzz import fuzz_kcp


def test_one_input(data: bytes) -> None:
    fuzz_kcp.run(data, "c")
    fuzz_kcp.twin(data)


if __name__ == "__main__":
    fuzz(test_one_input)

"""Coverage-guided fuzz harnesses (atheris), one per entry point that takes outside bytes.

Each ``fuzz_*.py`` module exposes ``test_one_input(data: bytes) -> None`` that raises only
when an invariant breaks, so the unit suite can run it over the seed corpus without
atheris, and ``python -m fuzz.fuzz_<name> [libFuzzer flags] DIR`` fuzzes it for real.
``bench/fuzz.py`` runs them all and reports inputs/s and coverage.
"""

"""Run a harness once over every file of corpus directories, without atheris.

    python3 -m fuzz.replay HARNESS DIR [DIR ...]

Used under ``coverage run`` by ``bench/fuzz.py`` to turn a fuzzed corpus into line
coverage, and to reproduce a crash file by hand (the traceback is the report).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path


def load(harness: str) -> Callable[[bytes], None]:
    module = importlib.import_module(f"fuzz.fuzz_{harness}")
    entry: Callable[[bytes], None] = module.test_one_input
    return entry


def replay(harness: str, folders: list[Path]) -> int:
    """Feed every file to the harness in name order; the number of inputs run."""
    test_one_input = load(harness)
    count = 0
    for folder in folders:
        files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        for path in files:
            test_one_input(path.read_bytes())
            count += 1
    return count


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    count = replay(argv[0], [Path(arg) for arg in argv[1:]])
    print(f"{argv[0]}: {count} inputs, no invariant broken")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``ratbond lab`` and ``ratbond demo`` subcommands (filled in by the lab work)."""

from __future__ import annotations

import argparse
from typing import Any


def add_lab_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("lab", help="emulated WAN links in namespaces")
    p.set_defaults(handler=lambda _a: p.print_help())


def add_demo_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="bring up a lab and show the bond")
    p.set_defaults(handler=lambda _a: p.print_help())

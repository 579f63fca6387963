"""Command line: parses arguments and hands over to a subcommand; nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ratbond import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratbond",
        description="Bond several WAN links into one TUN interface over KCP.",
    )
    parser.add_argument("--version", action="version", version=f"ratbond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from ratbond.lab.cli import add_demo_parser, add_lab_parser

    add_lab_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

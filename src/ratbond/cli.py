"""Command line: parses arguments and hands over to a subcommand; nothing else lives here.

Flags keep the Go original's names (``--listen-addr``, ``--connect-addr``, ``--tunnel-id``,
``--aes --secret``, ``--tunnel-ip``, ``--tun-name``, ``--mux``, ``--balance-consistent`` /
``--balance-roundrobin``, ``--http-listen-addr``, ``--debug``, ``--trace``, ``--nosyslog``) so
existing command lines keep working.  Values are validated in :mod:`ratbond.config`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ratbond import __version__
from ratbond.config import (
    DEFAULT_HTTP_LISTEN,
    DEFAULT_PORT,
    DEFAULT_TUNNEL_ID,
    DEFAULT_TUNNEL_IP,
    DEFAULT_TUNNEL_IP6,
    MAX_MUX,
    ConfigError,
    client_settings,
    load_toml,
    server_settings,
)

_S = argparse.SUPPRESS  # flags not given stay absent, so a config file's value survives


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=_S,
                   help="TOML file with the same settings (flag names as keys); flags win")
    p.add_argument("--tunnel-id", metavar="N", default=_S,
                   help=f"tunnel number; the server's TUN is tun<N> (default {DEFAULT_TUNNEL_ID})")
    p.add_argument("--tunnel-ip", metavar="CIDR", default=_S,
                   help="IPv4 subnet of the tunnel, /30 or larger: server takes the first host, "
                        f"client the second (default {DEFAULT_TUNNEL_IP})")
    p.add_argument("--tunnel-ip6", metavar="CIDR", default=_S,
                   help="IPv6 subnet inside the tunnel, or 'none' (default "
                        f"{DEFAULT_TUNNEL_IP6})")
    p.add_argument("--aes", action="store_true", default=_S,
                   help="encrypt (ChaCha20-Poly1305 or AES-256-GCM, keys from an authenticated "
                        "X25519 handshake); needs a secret")
    p.add_argument("--secret", metavar="S", default=_S,
                   help="pre-shared secret: every datagram is authenticated and replay-protected"
                        " (prefer --secret-file or RATBOND_SECRET: the command line is visible)")
    p.add_argument("--secret-file", metavar="FILE", default=_S,
                   help="read the secret from FILE")
    p.add_argument("--cipher", choices=("chacha20-poly1305", "aes-256-gcm"), default=_S,
                   help="AEAD used with --aes (default chacha20-poly1305)")
    balance = p.add_mutually_exclusive_group()
    balance.add_argument("--balance-consistent", dest="balance", action="store_const",
                         const="consistent", default=_S,
                         help="hash each flow onto one path (default)")
    balance.add_argument("--balance-roundrobin", dest="balance", action="store_const",
                         const="roundrobin", default=_S,
                         help="spread packets over all paths; the receiver restores order")
    balance.add_argument("--balance", choices=("consistent", "roundrobin"), default=_S,
                         help=argparse.SUPPRESS)
    p.add_argument("--http-listen-addr", metavar="HOST:PORT", default=_S,
                   help=f"status page and /metrics, or 'disable' (default {DEFAULT_HTTP_LISTEN})")
    p.add_argument("--hello-interval", metavar="SECONDS", default=_S,
                   help="HELLO period on every path (default 0.5)")
    p.add_argument("--dead-after", metavar="SECONDS", default=_S,
                   help="a path silent this long is dead (default 2; the Go original used 10)")
    p.add_argument("--kcp-engine", choices=("auto", "python", "c"), default=_S,
                   help="KCP implementation: c (reference ikcp, if installed) or python "
                        "(default auto)")
    p.add_argument("--kcp-window", metavar="SEGMENTS", default=_S,
                   help="KCP send/receive window per path (default 1024)")
    p.add_argument("--debug", action="store_true", default=_S, help="debug logging")
    p.add_argument("--trace", action="store_true", default=_S, help="per-packet logging")
    p.add_argument("--nosyslog", action="store_true", default=_S,
                   help="log to stderr instead of syslog")


def _add_server(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "server", help="run the server (on the VPS)",
        description="Accept a client's paths, reassemble its traffic onto tun<tunnel-id>.")
    p.add_argument("--listen-addr", metavar="HOST:PORT", default=_S,
                   help=f"UDP address to listen on (default 0.0.0.0:{DEFAULT_PORT})")
    _add_common(p)
    p.set_defaults(handler=_run_server)


def _add_client(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "client", help="run the client (on the router with the WAN links)",
        description="Bond this machine's WAN links into one TUN towards the server.")
    p.add_argument("--connect-addr", metavar="HOST:PORT", default=_S,
                   help="the server's address (required)")
    p.add_argument("--tun-name", metavar="NAME", default=_S,
                   help="name of the client's TUN (default tun<tunnel-id>)")
    p.add_argument("--mux", metavar="N", default=_S,
                   help=f"KCP paths per WAN link, 1..{MAX_MUX} (default 1)")
    p.add_argument("--wan", metavar="IFNAME", action="append", default=_S,
                   help="use only these WAN interfaces (repeatable, globs like 'wwan*')")
    p.add_argument("--exclude-wan", metavar="IFNAME", action="append", default=_S,
                   help="never use these interfaces (repeatable, globs)")
    p.add_argument("--rescan-interval", metavar="SECONDS", default=_S,
                   help="full WAN rescan period, in case a netlink event was missed (default 15)")
    _add_common(p)
    p.set_defaults(handler=_run_client)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """Config file values overlaid by the flags given on the command line."""
    flags = {key.replace("_", "-"): value for key, value in vars(args).items()
             if key not in ("handler", "command")}
    merged = load_toml(flags.pop("config")) if "config" in flags else {}
    merged.pop("config", None)
    merged.update(flags)
    return merged


def _run_server(args: argparse.Namespace) -> int:
    settings = server_settings(_options(args), os.environ)
    from ratbond.runtime.server import run_server

    return run_server(settings)


def _run_client(args: argparse.Namespace) -> int:
    settings = client_settings(_options(args), os.environ)
    from ratbond.runtime.client import run_client

    return run_client(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratbond",
        description="Bond several WAN links into one TUN interface over KCP.",
    )
    parser.add_argument("--version", action="version", version=f"ratbond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server(sub)
    _add_client(sub)

    from ratbond.lab.cli import add_demo_parser, add_lab_parser

    add_lab_parser(sub)
    add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"ratbond {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

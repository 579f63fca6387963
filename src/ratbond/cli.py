"""Command line: parses arguments and hands over to a subcommand; nothing else lives here.

Flags keep the Go original's names (``--listen-addr``, ``--connect-addr``, ``--tunnel-id``,
``--aes --secret``, ``--tunnel-ip``, ``--tun-name``, ``--mux``, ``--balance-consistent`` /
``--balance-roundrobin``, ``--http-listen-addr``, ``--debug``, ``--trace``, ``--nosyslog``) so
existing command lines keep working.  Values are validated in :mod:`ratbond.config`; start-up
failures the user can fix are told in one line (:mod:`ratbond.startup_errors`), exit code 1.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from ratbond import __version__
from ratbond.config import (
    BALANCES,
    CIPHERS,
    DEFAULT_BALANCE,
    DEFAULT_HTTP_LISTEN,
    DEFAULT_PORT,
    DEFAULT_TUNNEL_ID,
    DEFAULT_TUNNEL_IP,
    DEFAULT_TUNNEL_IP6,
    DUPLICATES,
    MAX_MUX,
    CommonSettings,
    ConfigError,
    Options,
    client_settings,
    load_toml,
    server_settings,
)
from ratbond.keygen import add_genkey_parser
from ratbond.mqtt.options import add_mqtt_flags

_S = argparse.SUPPRESS  # flags not given stay absent, so a config file's value survives
_DURATION = "seconds, or with a unit: 1.5, 2s, 800ms"

_BALANCE_HELP = {
    "adaptive": "send each packet on the path where it arrives first (capacity, queue, RTT);"
                " the receiver restores order",
    "consistent": "hash each flow (TCP/UDP 5-tuple) onto one path",
    "roundrobin": "spread packets over all paths; the receiver restores order",
    "redundant": "send every packet on the two best paths; the first copy wins",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", default=_S,
                   help="TOML file with the same settings (flag names as keys); flags win")
    p.add_argument("--tunnel-id", metavar="N", default=_S,
                   help=f"tunnel number; the server's TUN is tun<N> (default {DEFAULT_TUNNEL_ID})")
    p.add_argument("--tunnel-ip", metavar="CIDR", default=_S,
                   help="IPv4 subnet of the tunnel, /30 or larger: client takes the first host, "
                        f"server the second, as in the Go original (default "
                        f"{DEFAULT_TUNNEL_IP})")
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
                   help="read the secret from FILE (make one with: ratbond genkey -o FILE)")
    p.add_argument("--cipher", choices=CIPHERS, default=_S,
                   help="AEAD used with --aes (default chacha20-poly1305)")
    balance = p.add_mutually_exclusive_group()
    for mode in BALANCES:
        default = " (default)" if mode == DEFAULT_BALANCE else ""
        balance.add_argument(f"--balance-{mode}", dest="balance", action="store_const",
                             const=mode, default=_S, help=_BALANCE_HELP[mode] + default)
    balance.add_argument("--balance", choices=BALANCES, default=_S, help=argparse.SUPPRESS)
    p.add_argument("--duplicate", choices=DUPLICATES, default=_S,
                   help="also copy small packets (small: TCP ACKs, DNS, ICMP, < 200 bytes) or "
                        "DSCP EF/CS5 ones (ef) onto a second path (default none)")
    p.add_argument("--http-listen-addr", metavar="HOST:PORT", default=_S,
                   help=f"status page and /metrics, or 'disable' (default {DEFAULT_HTTP_LISTEN})")
    p.add_argument("--http-token-file", metavar="FILE", default=_S,
                   help="require the bearer token in FILE for the status page and /metrics")
    p.add_argument("--hello-interval", metavar="DURATION", default=_S,
                   help=f"HELLO period on every path ({_DURATION}; default 0.5)")
    p.add_argument("--dead-after", metavar="DURATION", default=_S,
                   help=f"a path silent this long is dead ({_DURATION}; default 2, the Go "
                        "original used 10)")
    p.add_argument("--kcp-engine", choices=("auto", "python", "c"), default=_S,
                   help="KCP implementation: c (reference ikcp, if installed) or python "
                        "(default auto)")
    p.add_argument("--kcp-window", metavar="SEGMENTS", default=_S,
                   help="KCP send/receive window per path (default 1024)")
    p.add_argument("--debug", action="store_true", default=_S,
                   help="debug logging (and a traceback with start-up errors)")
    p.add_argument("--trace", action="store_true", default=_S, help="per-packet logging")
    p.add_argument("--nosyslog", action="store_true", default=_S,
                   help="log to stderr instead of syslog")
    p.add_argument("--tune-sysctls", action="store_true", default=_S,
                   help="set the sysctls the tunnel needs (socket buffers, forwarding, "
                        "rp_filter) instead of warning with the command")


def _add_server(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "server", help="run the server (on the VPS)",
        description="Accept a client's paths, reassemble its traffic onto tun<tunnel-id>.")
    p.add_argument("--listen-addr", metavar="HOST:PORT", default=_S,
                   help=f"UDP address to listen on (default 0.0.0.0:{DEFAULT_PORT}; "
                        f"[::]:{DEFAULT_PORT} for dual stack)")
    p.add_argument("--nat", action="store_true", default=_S,
                   help="enable forwarding and masquerade the tunnel subnet(s) out of "
                        "--nat-out (nftables table 'ratbond', removed on exit); clamps TCP MSS")
    p.add_argument("--nat-out", metavar="IFNAME", default=_S,
                   help="uplink for --nat (default: the interface of the default route)")
    p.add_argument("--route", metavar="CIDR", action="append", default=_S,
                   help="route this client-side LAN into the tunnel via the client's tunnel "
                        "address (repeatable; removed on exit; masqueraded too with --nat)")
    p.add_argument("--clients", metavar="FILE", default=_S,
                   help="serve many clients: a TOML file with a [[client]] table per router "
                        "(name, secret-file, tunnel-id, tunnel-ip, routes...; see "
                        "examples/clients.toml); reloaded on SIGHUP")
    _add_common(p)
    add_mqtt_flags(p)  # --mqtt-* (ratbond.mqtt)
    p.set_defaults(handler=_run_server)


def _add_client(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "client", help="run the client (on the router with the WAN links)",
        usage="%(prog)s --connect-addr=HOST:PORT [options]",
        description="Bond this machine's WAN links into one TUN towards the server.")
    required = p.add_argument_group("required (on the command line or in --config)")
    required.add_argument("--connect-addr", metavar="HOST:PORT", default=_S,
                          help="the server's address, e.g. vps.example.net:12345 or "
                               "[2001:db8::1]:12345")
    p.add_argument("--tun-name", metavar="NAME", default=_S,
                   help="name of the client's TUN (default tun<tunnel-id>)")
    p.add_argument("--mux", metavar="N", default=_S,
                   help=f"KCP paths per WAN link, 1..{MAX_MUX} (default 1)")
    p.add_argument("--wan", metavar="IFNAME", action="append", default=_S,
                   help="use only these WAN interfaces (repeatable, globs like 'wwan*')")
    p.add_argument("--exclude-wan", metavar="IFNAME", action="append", default=_S,
                   help="never use these interfaces (repeatable, globs)")
    p.add_argument("--backup-wan", metavar="IFNAME", action="append", default=_S,
                   help="carry data on these interfaces only while every other path is down "
                        "(repeatable, globs)")
    p.add_argument("--link-rate", metavar="IFNAME=DOWN/UP", action="append", default=_S,
                   help="a link's rate in Mbit/s, e.g. wan1=30/10 (DOWN alone: the same both "
                        "ways); caps and seeds the path's estimate (repeatable)")
    p.add_argument("--rescan-interval", metavar="DURATION", default=_S,
                   help=f"full WAN rescan period, in case a netlink event was missed "
                        f"({_DURATION}; default 15)")
    p.add_argument("--manage-policy-routing", action="store_true", default=_S,
                   help="give each WAN (an interface with a default route in main) its own "
                        "table and 'from <wan-ip>' rule at start, keep them right while "
                        "running (new lease, new gateway, WAN added or gone), remove them on "
                        "exit")
    p.add_argument("--policy-table-base", metavar="N", default=_S,
                   help="first table of --manage-policy-routing (default 100; uses N..N+31)")
    p.add_argument("--policy-pref", metavar="N", default=_S,
                   help="priority of --manage-policy-routing's rules (default 10000)")
    _add_common(p)
    add_mqtt_flags(p)  # --mqtt-* (ratbond.mqtt)
    p.set_defaults(handler=_run_client)


def _options(args: argparse.Namespace) -> Options:
    """Config file values overlaid by the flags given on the command line."""
    flags = {key.replace("_", "-"): value for key, value in vars(args).items()
             if key not in ("handler", "command")}
    base = load_toml(flags.pop("config")) if "config" in flags else Options()
    return base.overlay(flags)


_Settings = TypeVar("_Settings", bound=CommonSettings)


def _start(role: str, settings: _Settings, run: Callable[[_Settings], int]) -> int:
    """Run one end; a start-up failure the user can fix becomes one line and exit code 1."""
    for warning in settings.warnings:
        print(f"ratbond {role}: warning: {warning}", file=sys.stderr)
    try:
        return run(settings)
    except Exception as exc:
        from ratbond.startup_errors import explain_startup_error

        line = explain_startup_error(exc, settings)
        if line is None:
            raise
        if settings.log_level != "info":
            traceback.print_exc()
        print(f"ratbond {role}: {line}", file=sys.stderr)
        return 1


def _run_server(args: argparse.Namespace) -> int:
    settings = server_settings(_options(args), os.environ)
    from ratbond.runtime.server import run_server

    return _start("server", settings, run_server)


def _run_client(args: argparse.Namespace) -> int:
    settings = client_settings(_options(args), os.environ)
    from ratbond.runtime.client import run_client

    return _start("client", settings, run_client)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratbond",
        description="Bond several WAN links into one TUN interface over KCP.",
    )
    parser.add_argument("--version", action="version", version=f"ratbond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_server(sub)
    _add_client(sub)
    add_genkey_parser(sub)

    from ratbond.lab.cli import add_demo_parser, add_lab_parser

    add_lab_parser(sub)
    add_demo_parser(sub)
    from ratbond.status_cli import add_subparser as add_status_parser

    add_status_parser(sub)
    # deployment helpers (ratbond.deploy_cli)
    from ratbond.deploy_cli import add_deploy_parsers

    add_deploy_parsers(sub)
    # the fleet on MQTT (ratbond.mqtt.cli)
    from ratbond.mqtt.cli import add_fleet_parsers

    add_fleet_parsers(sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _chosen_parsers(parser: argparse.ArgumentParser,
                    args: argparse.Namespace) -> list[argparse.ArgumentParser]:
    """The parsers ``args`` went through, outermost first (``ratbond lab up`` -> 3)."""
    chain = [parser]
    while True:
        action = next((a for a in chain[-1]._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if action is None or chosen not in action.choices:
            return chain
        chain.append(action.choices[chosen])


def _long_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _refuse_extras(chain: Sequence[argparse.ArgumentParser], extras: Sequence[str]) -> NoReturn:
    """Argparse reports a subcommand's unknown flag with the top-level usage; name the flag
    and show the subcommand's usage instead (and say where a flag of a sibling belongs)."""
    parser = chain[-1]
    known = sorted(_long_flags(parser))
    siblings = _subparsers(chain[-2]) if len(chain) > 1 else {}
    problems: list[str] = []
    previous_was_flag = False
    for extra in extras:
        if not extra.startswith("-"):
            if not previous_was_flag:  # else most likely the unknown flag's value
                problems.append(f"unexpected argument {extra!r}")
            previous_was_flag = False
            continue
        flag = extra.split("=", 1)[0]
        previous_was_flag = "=" not in extra
        owners = [name for name, other in siblings.items()
                  if other is not parser and flag in _long_flags(other)]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        hint = (f" (it is a flag of 'ratbond {owners[0]}')" if owners
                else f" (did you mean {close[0]}?)" if close else "")
        problems.append(f"unknown flag {flag}{hint}")
    parser.error("; ".join(problems))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_extras(_chosen_parsers(parser, args), extras)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"ratbond {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

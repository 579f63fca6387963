"""Deployment subcommands: ``ratbond policy-routing show|apply|remove``,
``ratbond check-config FILE`` and ``ratbond doctor client|server`` (:mod:`ratbond.doctor`).

Parsers and handlers only; the work is done by :mod:`ratbond.linux.policy` and
:mod:`ratbond.config`.  Exit codes: 0 done, 1 the kernel refused or a WAN is not ready
(nothing changed), 2 bad arguments or an invalid config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ratbond.linux.policy import DEFAULT_PREF, DEFAULT_TABLE_BASE, MAX_WANS, Plan

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def add_policy_routing_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "policy-routing", help="show, create or remove the per-WAN routing tables and rules",
        description="One routing table and one 'from <wan-ip>' rule per WAN, built from each "
                    "interface's current address and the gateway of its default route in the "
                    f"main table. ratbond's routes carry proto 98; its rules the --pref given "
                    f"and a table in --table-base .. --table-base+{MAX_WANS - 1}.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print WANs, tables, rules, gateways; and what is "
                                           "missing, with the fix")
    show.set_defaults(handler=_show)
    for name, helptext in (("apply", "create (or bring up to date) one table and rule per "
                                     "--wan"),
                           ("remove", "remove what 'apply' added, and nothing else")):
        q = actions.add_parser(name, help=helptext)
        if name == "apply":
            q.add_argument("--wan", metavar="IFNAME", action="append", required=True,
                           help="a WAN interface (repeatable; the first gets --table-base)")
        q.add_argument("--table-base", metavar="N", type=int, default=DEFAULT_TABLE_BASE,
                       help=f"first table number (default {DEFAULT_TABLE_BASE})")
        q.add_argument("--pref", metavar="N", type=int, default=DEFAULT_PREF,
                       help=f"priority of the rules (default {DEFAULT_PREF})")
        q.add_argument("--dry-run", action="store_true",
                       help="print the ip commands, change nothing")
        q.set_defaults(handler=_apply if name == "apply" else _remove)


def _policy() -> Any:
    from ratbond.linux.netlink import Rtnl
    from ratbond.linux.policy import PolicyRouting

    return PolicyRouting(Rtnl())


def _names() -> dict[int, str]:
    return {index: name for index, name in _if_nameindex()}


def _if_nameindex() -> list[tuple[int, str]]:
    import socket

    return list(socket.if_nameindex())


def _show(_args: argparse.Namespace) -> int:
    from ratbond.linux.policy import describe

    policy = _policy()
    links = policy.links()
    # A TUN (ratbond's own, or a VPN's) with a default route is not a WAN to offer.
    tuns = [link.name for link in links if Path(f"/sys/class/net/{link.name}/tun_flags").exists()]
    for line in describe(links, policy.addresses(), policy.routes(), policy.rules(),
                         ignore=tuns):
        print(line)
    return EXIT_OK


def _run_plan(plan: Plan, args: argparse.Namespace, policy: Any, verb: str) -> int:
    for problem in plan.problems:
        print(f"ratbond policy-routing {verb}: {problem}", file=sys.stderr)
    if plan.problems:
        print(f"ratbond policy-routing {verb}: nothing changed", file=sys.stderr)
        return EXIT_FAILED
    names = _names()
    for change in plan.changes:
        print(("would run: " if args.dry_run else "") + change.command(names))
    if not plan.changes:
        print("nothing to do: already as wanted")
    if not args.dry_run:
        try:
            policy.apply(plan)
        except OSError as exc:
            hint = (" (needs root or CAP_NET_ADMIN)" if exc.errno in (errno.EPERM, errno.EACCES)
                    else "")
            print(f"ratbond policy-routing {verb}: the kernel refused a change: "
                  f"{exc.strerror or exc}{hint}; run 'ratbond policy-routing remove' to undo "
                  "what was done", file=sys.stderr)
            return EXIT_FAILED
    for wan, (table, addresses) in plan.wans.items():
        print(f"{wan}: table {table}, from {', '.join(addresses) or '-'}")
    return EXIT_OK


def _apply(args: argparse.Namespace) -> int:
    policy = _policy()
    plan = policy.plan_apply(args.wan, table_base=args.table_base, pref=args.pref)
    return _run_plan(plan, args, policy, "apply")


def _remove(args: argparse.Namespace) -> int:
    policy = _policy()
    plan = policy.plan_remove(table_base=args.table_base, pref=args.pref)
    return _run_plan(plan, args, policy, "remove")


def add_check_config_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config", help="validate a TOML config file and print the effective settings",
        description="Check FILE exactly as 'ratbond client|server --config FILE' would at start "
                    "and print every effective setting (secrets redacted). Exit code 0 when "
                    "valid, 2 when not.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--role", choices=("client", "server"),
                   help="which end the file is for (default: client when it has connect-addr, "
                        "else server)")
    p.set_defaults(handler=_check_config)


def detect_role(keys: Iterable[str]) -> str:
    """A client file must name its server (``connect-addr``); anything else is a server's."""
    return "client" if "connect-addr" in set(keys) else "server"


def effective_settings(settings: object) -> list[str]:
    """``key = value`` lines for every setting, in TOML spelling; secrets stay redacted."""
    lines = []
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        if f.name == "warnings":
            continue
        value = getattr(settings, f.name)
        if isinstance(value, Mapping):
            value = dict(value)
        shown = repr(value) if f.name == "secret" and value is not None else _plain(value)
        lines.append(f"{f.name.replace('_', '-')} = {shown}")
    return lines


def _plain(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_plain(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_plain(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (int, float)):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return json.dumps(str(value))


def _check_config(args: argparse.Namespace) -> int:
    from ratbond.config import client_settings, load_toml, server_settings

    options = load_toml(args.file)  # ConfigError -> ratbond.cli prints it, exit code 2
    role = args.role or detect_role(options)
    build = client_settings if role == "client" else server_settings
    settings = build(options, os.environ)
    print(f"# {args.file}: valid {role} configuration; effective settings:")
    for line in effective_settings(settings):
        print(line)
    for warning in settings.warnings:
        print(f"ratbond check-config: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def add_deploy_parsers(sub: Any) -> None:
    """Register every deployment subcommand (called from :func:`ratbond.cli.build_parser`)."""
    add_policy_routing_parser(sub)
    add_check_config_parser(sub)
    from ratbond.doctor import add_doctor_parser

    add_doctor_parser(sub)

"""``ratbond lab ...`` and ``ratbond demo``: parse, hand over to the lab, print results.

Every handler returns an exit code: 0 done, 1 the lab refused (message on stderr), 2 bad
usage (argparse), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ratbond.lab.spec import LinkSpec, LinkSpecError, parse_links, parse_ms, parse_percent
from ratbond.lab.state import LabError, list_states
from ratbond.lab.topology import Lab

DEFAULT_NAME = "lab"
Handler = Callable[[argparse.Namespace], int]


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Let argparse show our parse errors verbatim (it hides plain ValueError text)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except LinkSpecError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_mbit(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("mbit"))
    except ValueError:
        raise LinkSpecError(f"rate {text!r}: give Mbit/s like 5 or 5.5") from None
    if not value > 0:
        raise LinkSpecError(f"rate {text!r}: must be > 0 Mbit/s")
    return value


def add_lab_parser(sub: Any) -> None:
    lab: argparse.ArgumentParser = sub.add_parser(
        "lab", help="emulated WAN links in network namespaces",
        description="Build a client router, emulated WAN links, an ISP and a server in "
                    "network namespaces on this machine (needs root).")
    lab.set_defaults(handler=lambda _a: _help(lab))
    cmds = lab.add_subparsers(dest="lab_command", metavar="ACTION")

    def named(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help_text,
                                                     description=help_text)
        p.add_argument("--name", default=DEFAULT_NAME, help="lab name (default: %(default)s)")
        p.set_defaults(handler=handler)
        return p

    up = named("up", "create the lab and start the link emulators", _cmd_up)
    up.add_argument("--links", required=True, type=_arg(parse_links),
                    help="comma-separated links such as 30/10:20ms:0.1%%,20:40ms,10:60ms:1%% "
                         "(DOWN/UP Mbit/s, one-way delay, jJITTERms, LOSS%%, qQUEUEms, "
                         "or 'direct'), or a .toml file with links = [...]")
    named("down", "stop the emulators and remove every namespace of the lab", _cmd_down)
    status = named("status", "show the lab's namespaces, links and counters", _cmd_status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    cmds.add_parser("list", help="names of the labs on this machine").set_defaults(
        handler=_cmd_list)
    ex = named("exec", "run a command inside one of the lab's namespaces", _cmd_exec)
    ex.add_argument("role", help="client, server, isp or emu<N>")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    link = named("link", "change an emulated link at runtime", _cmd_link)
    link.add_argument("index", type=int, help="link number, from 1")
    link.add_argument("--rate", type=_arg(_positive_mbit), help="Mbit/s, both directions")
    link.add_argument("--rate-down", type=_arg(_positive_mbit), help="Mbit/s towards the client")
    link.add_argument("--rate-up", type=_arg(_positive_mbit), help="Mbit/s from the client")
    link.add_argument("--delay", type=_arg(parse_ms), help="one-way delay, e.g. 30ms")
    link.add_argument("--jitter", type=_arg(parse_ms), help="jitter, e.g. 5ms")
    link.add_argument("--loss", type=_arg(parse_percent), help="random loss, e.g. 5%%")
    link.add_argument("--queue", type=_arg(parse_ms), help="queue size in ms of the rate")
    mode = link.add_mutually_exclusive_group()
    mode.add_argument("--blackhole", action="store_true", help="drop everything both ways")
    mode.add_argument("--restore", action="store_true", help="back to the link as built")
    wan = named("wan", "take a client WAN interface down or up", _cmd_wan)
    wan.add_argument("index", type=int, help="link number, from 1")
    wan.add_argument("state", choices=["up", "down"])


def add_demo_parser(sub: Any) -> None:
    from ratbond.lab.demo import add_demo_arguments, run_demo

    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="bring up a lab, bond its links, cut one, report",
        description="Bring up a lab with three different WAN links, measure them, run a "
                    "ratbond server and client over them, measure the bond, cut a link and "
                    "restore it, print a report and tear everything down (needs root).")
    add_demo_arguments(p)
    p.set_defaults(handler=lambda a: _guarded(run_demo, a))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _fail(message: str) -> int:
    print(f"ratbond lab: error: {message}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so builds and demos clean up on either.

    Ctrl-C is made to raise even when this process inherited SIGINT ignored (as anything
    started in the background of a non-interactive shell does): the clean-up path must be
    reachable however the lab was started.
    """

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _guarded(handler: Handler, args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        return _fail("the lab needs root: it creates network namespaces (try sudo)")
    try:
        with terminate_as_interrupt():
            return handler(args)
    except (LabError, LinkSpecError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("interrupted; everything the lab made was removed", file=sys.stderr)
        return 130


def _root(handler: Handler) -> Handler:
    return lambda args: _guarded(handler, args)


@_root
def _cmd_up(args: argparse.Namespace) -> int:
    links: list[LinkSpec] = args.links
    print(f"building lab {args.name!r} with {len(links)} link(s)...", flush=True)
    lab = Lab.up(links, name=args.name)
    print(f"lab {lab.name!r} is up (namespaces {lab.prefix}*)")
    for i, spec in enumerate(lab.links, 1):
        kind = "direct veth" if spec.direct else "emulated"
        print(f"  wan{i} {lab.wan_address(i):<12} {spec.to_text():<18} {kind}, "
              f"server sees {lab.public_address(i)}")
    print(f"  server {lab.server_public_ip}")
    print(f"next: ratbond lab exec client --name {lab.name} -- ip rule ; "
          f"ratbond lab down --name {lab.name}")
    return 0


@_root
def _cmd_down(args: argparse.Namespace) -> int:
    Lab.attach(args.name).down()
    print(f"lab {args.name!r} removed")
    return 0


def status_data(lab: Lab) -> dict[str, Any]:
    """What ``lab status`` shows, as data."""
    links = []
    for i, spec in enumerate(lab.links, 1):
        entry: dict[str, Any] = {"index": i, "wan": f"wan{i}", "address": lab.wan_address(i),
                                 "public": lab.public_address(i), "spec": spec.to_text()}
        try:
            entry["counters"] = lab.counters(i)
            if not spec.direct:
                entry["settings"] = lab.link(i).settings()
        except (LabError, subprocess.SubprocessError, OSError) as exc:
            entry["error"] = str(exc)
        links.append(entry)
    return {"name": lab.name, "prefix": lab.prefix, "phase": lab.state.phase,
            "alive": lab.is_alive(), "server": lab.server_public_ip,
            "namespaces": [lab.prefix + r for r in lab.roles()], "links": links}


@_root
def _cmd_status(args: argparse.Namespace) -> int:
    data = status_data(Lab.attach(args.name))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    roles = ",".join(r.removeprefix(data["prefix"]) for r in data["namespaces"])
    health = "alive" if data["alive"] else "BROKEN (namespace or emulator missing)"
    print(f"lab {data['name']!r}: {data['phase']}, {health}, "
          f"namespaces {data['prefix']}{{{roles}}}")
    for link in data["links"]:
        print(f"  wan{link['index']} {link['address']:<12} -> {link['public']:<13} "
              f"{link['spec']}")
        if "error" in link:
            print(f"      error: {link['error']}")
            continue
        for direction in ("down", "up"):
            c = link["counters"][direction]
            print(f"      {direction:<4} passed {c['passed']:>8}  lost {c['lost']:>6}  "
                  f"tail-dropped {c['tail_dropped']:>6}  blackholed {c['blackholed']:>6}")
    return 0


def _cmd_list(_args: argparse.Namespace) -> int:
    for name in list_states():
        print(name)
    return 0


@_root
def _cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        return _fail("nothing to run: ratbond lab exec ROLE -- CMD ...")
    ns = Lab.attach(args.name).namespace(args.role)
    try:
        return subprocess.run(ns.exec_argv(*argv), check=False).returncode
    except KeyboardInterrupt:
        return 130


@_root
def _cmd_link(args: argparse.Namespace) -> int:
    control = Lab.attach(args.name).link(args.index)
    if args.blackhole:
        control.blackhole()
    elif args.restore:
        control.restore()
    changes = {"rate_down": args.rate_down if args.rate_down is not None else args.rate,
               "rate_up": args.rate_up if args.rate_up is not None else args.rate,
               "delay_ms": args.delay, "jitter_ms": args.jitter, "loss": args.loss,
               "queue_ms": args.queue}
    if any(v is not None for v in changes.values()):
        control.set(**changes)
    elif not (args.blackhole or args.restore):
        return _fail("nothing to change: give --rate/--delay/--jitter/--loss/--queue, "
                     "--blackhole or --restore")
    settings = control.settings()
    for direction in ("down", "up"):
        s = settings[direction]
        rate = "unlimited" if s["rate_mbit"] is None else f"{s['rate_mbit']:g} Mbit/s"
        print(f"link {args.index} {direction:<4} {rate}, delay {s['delay_ms']:g} ms, jitter "
              f"{s['jitter_ms']:g} ms, loss {s['loss'] * 100:g}%, queue {s['queue_ms']:g} ms"
              f"{', BLACKHOLE' if s['blackhole'] else ''}")
    return 0


@_root
def _cmd_wan(args: argparse.Namespace) -> int:
    Lab.attach(args.name).set_wan_updown(args.index, args.state == "up")
    print(f"wan{args.index} {args.state}")
    return 0

"""``ratbond doctor client|server``: what stands between this machine and a running bond.

One line per check, ``OK``, ``WARN`` or ``FAIL``, each failing one with its fix; exit code
0 when all is OK, 1 with warnings, 2 with failures.  It takes the same flags and ``--config``
as ``ratbond client``/``server`` and changes nothing.

Client: TUN support, per-WAN policy routing (the analysis of ``policy-routing show``), a
real handshake to the server from each WAN (:mod:`ratbond.doctor_probe`: any answer proves
the UDP port is reachable, a refusal names the setting that differs), the path MTU per WAN,
clock skew (the server checks handshake timestamps), sysctls.  Server: TUN support, the UDP
port bound by ratbond (and answering a handshake), forwarding, NAT and ``nft``, sysctls.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

from ratbond.config import WAN_MTU, ClientSettings, CommonSettings, ServerSettings

__all__ = ["Check", "add_doctor_parser", "exit_code", "format_check", "summary"]

Status = Literal["OK", "WARN", "FAIL"]
EXIT_OK, EXIT_WARN, EXIT_FAIL = 0, 1, 2
TUN_PATH = "/dev/net/tun"
CAP_NET_ADMIN = 12
#: The largest outer packet ratbond sends: WAN_MTU with an IPv6 header, 20 bytes less on IPv4.
LARGEST_PACKET = {4: WAN_MTU - 20, 6: WAN_MTU}


@dataclass(frozen=True)
class Check:
    """One finding: its status, what was checked, what was seen, and what to do."""

    status: Status
    name: str
    detail: str
    fix: str = ""


def format_check(check: Check) -> str:
    """``FAIL policy wan2: ...; fix: ...`` -- one line, the status first for grep."""
    fix = f"; fix: {check.fix}" if check.fix and check.status != "OK" else ""
    return f"{check.status:<4} {check.name}: {check.detail}{fix}"


def exit_code(checks: Iterable[Check]) -> int:
    statuses = {c.status for c in checks}
    if "FAIL" in statuses:
        return EXIT_FAIL
    return EXIT_WARN if "WARN" in statuses else EXIT_OK


def summary(checks: Sequence[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in ("OK", "WARN", "FAIL")}
    return (f"{len(checks)} checks: {counts['OK']} OK, {counts['WARN']} warning(s), "
            f"{counts['FAIL']} failure(s)")


# -- checks both ends share ---------------------------------------------------------------


def _has_cap_net_admin(status_text: str) -> bool:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    return False


def check_tun(path: str = TUN_PATH, status_file: str = "/proc/self/status") -> Check:
    """The TUN device node opens, and this process may create a TUN (CAP_NET_ADMIN)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return Check("FAIL", "tun", f"{path} does not exist",
                     "load the tun module (modprobe tun; OpenWrt: opkg install kmod-tun)")
    except OSError as exc:
        return Check("FAIL", "tun", f"{path} does not open: {exc.strerror}",
                     "run as root or with CAP_NET_ADMIN; in a container pass --device "
                     "/dev/net/tun")
    os.close(fd)
    try:
        capable = _has_cap_net_admin(Path(status_file).read_text())
    except OSError:
        capable = os.geteuid() == 0
    if not capable:
        return Check("FAIL", "tun", f"{path} opens, but this process lacks CAP_NET_ADMIN to "
                     "create a TUN", "run as root, or AmbientCapabilities=CAP_NET_ADMIN "
                     "CAP_NET_RAW in the systemd unit")
    return Check("OK", "tun", f"{path} opens and CAP_NET_ADMIN is held")


def sysctl_checks(role: Literal["client", "server"], *, wans: Sequence[str] = (),
                  forwarding: bool = False, tuns: Sequence[str] = ()) -> list[Check]:
    """The start-up sysctl check (:mod:`ratbond.linux.sysctl`), one line per finding."""
    from ratbond.linux import sysctl

    lines = sysctl.check(role, wans=wans, forwarding=forwarding, tuns=tuns)
    if not lines:
        return [Check("OK", "sysctl", "socket buffer limits, forwarding and rp_filter as the "
                      "tunnel needs")]
    out = []
    for line in lines:
        what, _, fix = line.partition("; fix: ")
        out.append(Check("WARN", "sysctl", what, fix))
    return out


# -- the client ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WanFamily:
    """One WAN's address of one family and how policy routing treats it."""

    name: str
    index: int
    version: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    tables: tuple[int, ...]  # its own tables with a default route via it
    rule_tables: tuple[int, ...]  # tables that a 'from <address>' rule selects, of those
    gateway: str | None


def wan_families(links: Sequence[Any], addresses: Sequence[Any], routes: Sequence[Any],
                 rules: Sequence[Any], *, include: Sequence[str] = (),
                 exclude: Sequence[str] = (), ignore: Sequence[str] = ()) -> list[WanFamily]:
    """Interfaces with a default route (in main or a table of their own) and a usable
    address, per family; ``ignore`` (TUNs) and names outside the globs left out."""
    from ratbond.linux.policy import MAIN_TABLE

    out: list[WanFamily] = []
    for link in sorted(links, key=lambda lk: lk.index):
        if link.name in ignore or link.name == "lo":
            continue
        if include and not any(fnmatchcase(link.name, g) for g in include):
            continue
        if any(fnmatchcase(link.name, g) for g in exclude):
            continue
        for version in (4, 6):
            defaults = [r for r in routes if r.oif == link.index and r.dst.prefixlen == 0
                        and r.dst.version == version]
            addr = next((a for a in addresses if a.index == link.index
                         and a.address.version == version and not a.address.is_link_local),
                        None)
            if not defaults or addr is None:
                continue
            tables = tuple(sorted({r.table for r in defaults
                                   if r.table not in (0, 253, MAIN_TABLE, 255)}))
            host = ipaddress.ip_network(addr.address)
            selecting = tuple(sorted({u.table for u in rules
                                      if u.src == host and u.table in tables}))
            gateway = next((r.gateway for r in defaults if r.gateway), None)
            out.append(WanFamily(link.name, link.index, version, addr.address, tables,
                                 selecting, gateway))
    return out


def policy_checks(wans: Sequence[WanFamily], *, managed: bool) -> list[Check]:
    """A rule from each WAN address to a table with a default route via that WAN."""
    if not wans:
        return [Check("FAIL", "policy", "no interface has a default route and an address: "
                      "ratbond has no WAN to use", "connect the WANs first (ip route show; "
                      "each WAN needs its default route, DHCP or static)")]
    out: list[Check] = []
    missing = sorted({w.name for w in wans if not w.rule_tables and w.version == 4})
    apply = "ratbond policy-routing apply " + " ".join(f"--wan {n}" for n in missing) + \
        " (or run the client with --manage-policy-routing)"
    for wan in wans:
        name = f"policy {wan.name} IPv{wan.version}"
        if wan.rule_tables:
            out.append(Check("OK", name, f"rule from {wan.address} -> table "
                             f"{wan.rule_tables[0]} (default via {wan.gateway or 'on-link'})"))
        elif managed:
            out.append(Check("OK", name, f"no table for {wan.address} yet: the client makes "
                             "it at start (--manage-policy-routing)"))
        elif wan.tables:
            six = "-6 " if wan.version == 6 else ""
            out.append(Check("FAIL" if wan.version == 4 else "WARN", name,
                             f"table {wan.tables[0]} has its default route but no rule 'from "
                             f"{wan.address}' selects it: replies leave by the main table",
                             f"ip {six}rule add pref 10000 from {wan.address} lookup "
                             f"{wan.tables[0]}"))
        else:
            out.append(Check("FAIL" if wan.version == 4 else "WARN", name,
                             f"no table of its own and no rule from {wan.address}: the client "
                             "does not use it as a WAN", apply))
    return out


def reach_and_mtu_checks(settings: ClientSettings, wans: Sequence[WanFamily], *,
                         timeout: float) -> list[Check]:
    """Per WAN: a real handshake to the server, then the path MTU; and the clock line."""
    from ratbond.doctor_probe import path_mtu, probe_server
    from ratbond.runtime.common import channel_config, channel_limits

    target = settings.connect
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        return [Check("FAIL", "server", f"{target.host} does not resolve: {exc}",
                      "check --connect-addr and this router's DNS")]
    servers: dict[int, tuple[str, int]] = {}
    for family, _t, _p, _n, sockaddr in infos:
        version = 4 if family == socket.AF_INET else 6
        servers.setdefault(version, (str(sockaddr[0]), int(sockaddr[1])))
    config = channel_config(settings)
    limits = channel_limits()
    out: list[Check] = []
    answered = skewed = False
    for wan in wans:
        server = servers.get(wan.version)
        if server is None:
            continue
        name = f"reach {wan.name} IPv{wan.version}"
        where = f"{server[0]} UDP {server[1]} from {wan.address}"
        result = probe_server(config, local=wan.address, device=wan.name, server=server,
                              timeout=timeout, limits=limits)
        answered = answered or result.outcome == "accepted"
        skewed = skewed or result.clock_skewed
        out.append(_reach_check(name, where, result, timeout))
        if result.outcome in ("accepted", "refused"):
            mtu = path_mtu(wan.address, wan.name, server[0])
            out.append(_mtu_check(f"mtu {wan.name} IPv{wan.version}", mtu, wan.version))
    if not out:
        return [Check("FAIL", "reach", f"no WAN has an address of the server's family "
                      f"({', '.join(f'IPv{v}' for v in sorted(servers))})",
                      "give a WAN an address of that family or use another --connect-addr")]
    out.append(_clock_check(config.psk is not None, answered, skewed, limits.clock_tolerance))
    return out


def _reach_check(name: str, where: str, result: Any, timeout: float) -> Check:
    if result.outcome == "accepted":
        load = ", after a cookie round (server under load)" if result.cookie else ""
        return Check("OK", name, f"{where}: the server answered in "
                     f"{result.rtt * 1000:.0f} ms{load}; secret, cipher and tunnel addressing "
                     "agree")
    if result.outcome == "refused":
        why, fix = _split_fix(result.detail)
        return Check("FAIL", name, f"{where}: reachable, but {why}", fix)
    if result.outcome == "unreachable":
        return Check("FAIL", name, f"{where}: ICMP port unreachable: nothing listens on that "
                     "port", "start 'ratbond server' there (systemctl status ratbond-server) "
                     "and check that --connect-addr names its --listen-addr port")
    if result.outcome == "silent":
        return Check("FAIL", name, f"{where}: no answer within {timeout:g} s: the UDP port is "
                     "blocked or the address is wrong",
                     "open the UDP port in the VPS's firewall and the provider's security "
                     "group (nft list ruleset; ufw allow PORT/udp); check --connect-addr")
    return Check("FAIL", name, f"{where}: {result.detail}", "check the WAN's address and link")


def _split_fix(refusal: str) -> tuple[str, str]:
    """The client's refusal text ends in what to do (": use the same ...", ": fix NTP ...")."""
    for marker in (": use ", ": fix "):
        why, sep, fix = refusal.rpartition(marker)
        if sep:
            return why, marker[2:] + fix
    if "--secret" in refusal:
        return refusal, "give both ends the same secret (--secret-file with the same content)"
    return refusal, "make both ends' settings agree"


def _mtu_check(name: str, mtu: int | None, version: int) -> Check:
    largest = LARGEST_PACKET[version]
    if mtu is None:
        return Check("WARN", name, "path MTU unknown (the probe could not run)",
                     "check the WAN link (ip link show)")
    if mtu >= largest:
        return Check("OK", name, f"path MTU {mtu}, ratbond's largest packet is {largest}")
    return Check("WARN", name, f"path MTU {mtu} < {largest}, ratbond's largest packet: this "
                 "host fragments the larger ones (slower, and lost where fragments are "
                 "dropped)", "raise the WAN's MTU if the link allows (PPPoE: RFC 4638, MTU "
                 "1500) or ask the ISP; the tunnel still works")


def _clock_check(secure: bool, answered: bool, skewed: bool, tolerance: float) -> Check:
    if skewed:
        return Check("FAIL", "clock", f"more than {tolerance:g} s off the server's clock (it "
                     "refused the handshake timestamp)", "fix NTP on this router "
                     "(timedatectl set-ntp true; OpenWrt: System > Time Synchronization)")
    if not secure:
        return Check("WARN", "clock", "unknown: plaintext mode carries no handshake timestamp",
                     "use --aes with a --secret-file on both ends")
    if answered:
        return Check("OK", "clock", f"within {tolerance:g} s of the server's (it accepted the "
                     "handshake timestamp)")
    return Check("WARN", "clock", "unknown: the server did not answer", "fix reachability first")


def _tun_names(links: Sequence[Any]) -> list[str]:
    return [link.name for link in links
            if Path(f"/sys/class/net/{link.name}/tun_flags").exists()]


def client_checks(settings: ClientSettings, *, timeout: float = 3.0) -> list[Check]:
    from ratbond.linux import sysctl
    from ratbond.linux.netlink import Rtnl
    from ratbond.linux.policy import PolicyRouting

    checks = [check_tun()]
    with Rtnl() as rtnl:
        policy = PolicyRouting(rtnl)
        links, addresses = policy.links(), policy.addresses()
        routes, rules = policy.routes(), policy.rules()
        _wans, lans = sysctl.wans_and_lans(links, addresses, rtnl.routes(),
                                           tun=settings.client_tun_name)
    ignore = [settings.client_tun_name, *_tun_names(links)]
    wans = wan_families(links, addresses, routes, rules, include=settings.included_wans,
                        exclude=settings.exclude_wans, ignore=ignore)
    checks += policy_checks(wans, managed=settings.manage_policy_routing)
    if wans:
        checks += reach_and_mtu_checks(settings, wans, timeout=timeout)
    names = sorted({w.name for w in wans if w.version == 4})
    checks += sysctl_checks("client", wans=names, forwarding=bool(lans))
    return checks


# -- the server ---------------------------------------------------------------------------


def _udp_inodes(port: int, tables: Iterable[str] = ("/proc/net/udp", "/proc/net/udp6")
                ) -> set[str]:
    """Socket inodes bound to UDP ``port`` (any address)."""
    inodes: set[str] = set()
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _owners(inodes: set[str]) -> list[tuple[int, str]]:
    """(pid, command line) of the processes holding these socket inodes."""
    wanted = {f"socket:[{i}]" for i in inodes}
    found: list[tuple[int, str]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            if wanted & set(fds):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found.append((int(proc.name), cmd))
        except OSError:
            continue
    return found


def port_check(settings: ServerSettings) -> Check:
    port = settings.listen.port
    name = f"port UDP {port}"
    inodes = _udp_inodes(port)
    if not inodes:
        return Check("FAIL", name, "nothing is bound to it: the server is not running",
                     "start it: systemctl start ratbond-server (or ratbond server ...)")
    owners = _owners(inodes)
    ours = [(pid, cmd) for pid, cmd in owners if "ratbond" in cmd]
    if ours:
        return Check("OK", name, f"bound by ratbond (pid {ours[0][0]})")
    other = owners[0][1] if owners else "another program (no permission to see which)"
    return Check("FAIL", name, f"bound by {other}, not by ratbond",
                 "stop that program or give ratbond another --listen-addr port")


def self_probe_check(settings: ServerSettings, *, timeout: float) -> Check | None:
    """A handshake to our own port with this config: proves it answers and agrees."""
    from ratbond.doctor_probe import probe_server
    from ratbond.runtime.common import channel_config, channel_limits

    if settings.clients is not None:  # many credentials: no single one to probe with
        return None
    name = "answers"
    host = settings.listen.host
    try:
        listen = ipaddress.ip_address(host)
    except ValueError:
        return Check("WARN", name, f"--listen-addr host {host!r} is a name: not probed",
                     "give --listen-addr an IP address (or 0.0.0.0)")
    local = ipaddress.ip_address("::1" if listen.version == 6 else "127.0.0.1") \
        if listen.is_unspecified else listen
    target = str(local)
    result = probe_server(channel_config(settings), local=local, device=None,
                          server=(target, settings.listen.port), timeout=timeout,
                          limits=channel_limits())
    if result.outcome == "accepted":
        return Check("OK", name, f"a handshake to {target} UDP {settings.listen.port} with "
                     "this config is accepted")
    if result.outcome == "refused":
        return Check("FAIL", name, f"the running server refuses this config: {result.detail}",
                     "this file and the running server's settings differ; restart it with them")
    return Check("WARN", name, f"no handshake answer on {target} UDP {settings.listen.port} "
                 f"({result.outcome})", "check the server's log (journalctl -u ratbond-server)")


def nat_checks(settings: ServerSettings,
               run: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None
               ) -> list[Check]:
    """``nft`` present, and the tunnel subnet masqueraded (ratbond's own table or the user's)."""
    from ratbond.linux.sysctl import read

    runner = run or (lambda argv: subprocess.run(list(argv), capture_output=True, text=True,
                                                 check=False, timeout=10))
    out: list[Check] = []
    nft = shutil.which("nft")
    if nft is None:
        out.append(Check("FAIL" if settings.nat else "WARN", "nft", "the nft binary is missing",
                         "install the 'nftables' package (--nat needs it)"))
    else:
        out.append(Check("OK", "nft", f"{nft} present"))
    forwarding = read("net.ipv4.ip_forward")
    if forwarding == 1:
        out.append(Check("OK", "forwarding", "net.ipv4.ip_forward is 1"))
    else:
        out.append(Check("FAIL" if settings.nat or settings.routes else "WARN", "forwarding",
                         f"net.ipv4.ip_forward is {forwarding}: the clients' traffic stops "
                         "here", "run the server with --nat (sets it), or sysctl -w "
                         "net.ipv4.ip_forward=1"))
    subnet = str(settings.tunnel_ip)
    ruleset = runner([nft, "list", "ruleset"]).stdout if nft else ""
    ours = "table inet ratbond" in ruleset
    masq = [line for line in ruleset.splitlines() if "masquerade" in line]
    if ours and any(subnet in line for line in masq):
        out.append(Check("OK", "nat", f"{subnet} masqueraded (nftables table inet ratbond)"))
    elif any(subnet in line for line in masq):
        out.append(Check("OK", "nat", f"{subnet} masqueraded by a rule of your own"))
    elif settings.nat:
        out.append(Check("FAIL", "nat", f"--nat is set but no masquerade for {subnet} is "
                         "loaded: the server is not running with this config",
                         "restart the server with this config"))
    else:
        out.append(Check("WARN", "nat", f"nothing masquerades {subnet}: a client's traffic "
                         "to the internet gets no answer (fine if you route it yourself)",
                         "run the server with --nat"))
    return out


def server_checks(settings: ServerSettings, *, timeout: float = 3.0) -> list[Check]:
    checks = [check_tun(), port_check(settings)]
    if checks[-1].status == "OK":
        probe = self_probe_check(settings, timeout=timeout)
        if probe is not None:
            checks.append(probe)
    checks += nat_checks(settings)
    tun = settings.server_tun_name if settings.clients is None else "tun*"
    from ratbond.linux.sysctl import matching_interfaces

    checks += sysctl_checks("server", forwarding=settings.nat or bool(settings.routes),
                            tuns=matching_interfaces(tun))
    return checks


# -- command line --------------------------------------------------------------------------


def add_doctor_parser(sub: Any) -> None:
    """``ratbond doctor client|server [that role's flags]`` (the flags come from
    :mod:`ratbond.cli`, so a config file or command line that runs also diagnoses)."""
    from ratbond import cli

    p: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check this machine's setup for a client or a server, with the fixes",
        description="One line per check (OK, WARN or FAIL, with the fix). Give the same flags "
                    "or --config as for 'ratbond client' or 'ratbond server'. Exit code 0 all "
                    "OK, 1 warnings, 2 failures. Changes nothing.")
    roles = p.add_subparsers(dest="role", metavar="ROLE", required=True)
    roles_before = set(roles.choices)
    # The roles' own flags, defined once in ratbond.cli.
    cli._add_client(roles)
    cli._add_server(roles)
    for role in set(roles.choices) - roles_before:
        parser = roles.choices[role]
        parser.description = (f"Check this machine as a ratbond {role} with these settings "
                              "(the same flags or --config as 'ratbond " + role + "'); "
                              "changes nothing.")
        parser.add_argument("--probe-timeout", metavar="SECONDS", type=float, default=3.0,
                            help="how long to wait for the server's answer (default 3)")
        parser.set_defaults(handler=_run_doctor)


def _settings(args: argparse.Namespace) -> CommonSettings:
    from ratbond import cli
    from ratbond.config import client_settings, server_settings

    flags = {k: v for k, v in vars(args).items() if k not in ("role", "probe_timeout")}
    options = cli._options(argparse.Namespace(**flags))
    build = client_settings if args.role == "client" else server_settings
    return build(options, os.environ)


def _run_doctor(args: argparse.Namespace) -> int:
    settings = _settings(args)  # ConfigError -> ratbond.cli prints it, exit code 2
    checks = [Check("WARN", "config", warning) for warning in settings.warnings]
    if isinstance(settings, ClientSettings):
        checks += client_checks(settings, timeout=args.probe_timeout)
    else:
        assert isinstance(settings, ServerSettings)
        checks += server_checks(settings, timeout=args.probe_timeout)
    for check in checks:
        print(format_check(check), flush=True)
    print(summary(checks))
    return exit_code(checks)

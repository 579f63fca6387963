"""The server's forwarding for ``--nat`` and ``--route``: masquerade, MSS clamp, LAN routes.

The nftables table ``inet ratbond`` is ratbond's alone: it is written in one ``nft -f -``
transaction (declared, deleted and re-created, so a table left by a crash is replaced, never
merged) and deleted on exit.  Nothing else in the ruleset is touched.  :func:`ruleset` is
pure and unit-tested; :class:`ServerForwarding` runs ``nft`` and rtnetlink.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import shutil
import socket
import subprocess
from collections.abc import Sequence

from ratbond.config import ServerSettings
from ratbond.linux import sysctl
from ratbond.linux.netlink import NetlinkRequestError, Rtnl

__all__ = ["TABLE", "NatError", "ServerForwarding", "default_route_interface", "ruleset",
           "start_server_forwarding", "stop_server_forwarding"]

TABLE = "ratbond"
MAIN_TABLE = 254
NFT_TIMEOUT_S = 10.0
log = logging.getLogger("ratbond.nat")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NatError(RuntimeError):
    """``--nat`` cannot be set up; the message is the one line the user reads."""

    user_facing = True  # ratbond.startup_errors prints it as is, exit code 1


def _quote(name: str) -> str:
    if not name or any(c in name for c in '"\\\n') or len(name) > 15:
        raise NatError(f"{name!r} is not an interface name")
    return f'"{name}"'


def ruleset(*, tun: str | Sequence[str], out_if: str, sources: Sequence[Network]) -> str:
    """The ``nft -f`` text: masquerade ``sources`` leaving by ``out_if``, and clamp the MSS
    of TCP SYNs forwarded into or out of ``tun`` to the route's MTU (the TUN's 1391 on the
    way in, so hosts behind the client never send segments the tunnel must fragment).
    ``tun`` may name several TUNs (``--clients``: one per client)."""
    masq = []
    for net in sources:
        family = "ip" if net.version == 4 else "ip6"
        masq.append(f"    oifname {_quote(out_if)} {family} saddr {net} counter masquerade")
    tun_q = (_quote(tun) if isinstance(tun, str)
             else "{ " + ", ".join(_quote(name) for name in tun) + " }")
    return "\n".join([
        f"table inet {TABLE} {{}}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        *masq,
        "  }",
        "  chain forward {",
        "    type filter hook forward priority mangle; policy accept;",
        f"    iifname {tun_q} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
        f"    oifname {tun_q} tcp flags syn / syn,rst tcp option maxseg size set rt mtu",
        "  }",
        "}",
        "",
    ])


def default_route_interface(rtnl: Rtnl) -> str:
    """The interface of the main table's IPv4 default route (the uplink, on a VPS)."""
    for route in rtnl.routes():
        if route.table == MAIN_TABLE and route.dst_len == 0 and route.oif is not None \
                and route.family == socket.AF_INET:
            return socket.if_indextoname(route.oif)
    raise NatError("--nat: no IPv4 default route in table main to find the uplink; give "
                   "--nat-out IFNAME")


def _nft(nft: str, *args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([nft, *args], input=text, capture_output=True, text=True,
                          timeout=NFT_TIMEOUT_S, check=False)


class ServerForwarding:
    """What ``--nat`` and ``--route`` set up after the TUN exists, undone by :meth:`stop`."""

    def __init__(self, settings: ServerSettings, *, rtnl_factory: type[Rtnl] = Rtnl) -> None:
        self.settings = settings
        self._rtnl_factory = rtnl_factory
        self.nft: str | None = None
        self.table_installed = False
        self.routes: list[tuple[Network, str, int]] = []  # (dst, gateway, oif) we added

    def start(self, tun: str) -> None:
        s = self.settings
        if s.nat:
            self.nft = shutil.which("nft")
            if self.nft is None:
                raise NatError("--nat needs the nft binary: install the 'nftables' package "
                               "(apt-get install nftables, opkg install nftables)")
            self._install_table(tun)
        if s.routes:
            self._add_routes(tun)

    def _install_table(self, tun: str) -> None:
        s = self.settings
        assert self.nft is not None
        with self._rtnl_factory() as rtnl:
            out_if = s.nat_out or default_route_interface(rtnl)
        sources: list[Network] = [s.tunnel_ip]
        if s.tunnel_ip6 is not None:
            sources.append(s.tunnel_ip6)
        sources += [net for net in s.routes if net not in sources]
        sysctl.ensure("net.ipv4.ip_forward", 1, why="--nat forwards the tunnel's traffic")
        if s.tunnel_ip6 is not None:
            # With forwarding on, accept_ra=1 stops honouring router advertisements: a VPS
            # whose IPv6 default route comes from SLAAC would lose it.  2 keeps them.
            ra_key = f"net.ipv6.conf.{out_if}.accept_ra"
            if sysctl.read(ra_key) == 1:
                sysctl.ensure(ra_key, 2, why="keep the uplink's router advertisements with "
                                              "IPv6 forwarding on")
            sysctl.ensure("net.ipv6.conf.all.forwarding", 1,
                          why="--nat forwards the tunnel's IPv6 traffic")
        done = _nft(self.nft, "-f", "-", text=ruleset(tun=tun, out_if=out_if, sources=sources))
        if done.returncode != 0:
            raise NatError(f"--nat: nft refused the ratbond table: "
                           f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
        self.table_installed = True
        log.info("NAT: masquerading %s out of %s (nftables table inet %s)",
                 ", ".join(map(str, sources)), out_if, TABLE)

    def _add_routes(self, tun: str) -> None:
        s = self.settings
        with self._rtnl_factory() as rtnl:
            oif = rtnl.link_index(tun)
            for net in s.routes:
                via = s.client_tunnel_address if net.version == 4 else s.client_tunnel_address6
                assert via is not None  # config refuses an IPv6 --route without --tunnel-ip6
                gateway = str(via.ip)
                try:
                    rtnl.gateway_route("add", dst=str(net.network_address),
                                       dst_len=net.prefixlen, oif=oif, gateway=gateway,
                                       table=MAIN_TABLE)
                except NetlinkRequestError as exc:
                    if exc.errno != errno.EEXIST:
                        raise
                    log.warning("--route %s: a route exists already; left as it is", net)
                    continue
                self.routes.append((net, gateway, oif))
                log.info("route %s via %s dev %s", net, gateway, tun)

    def stop(self) -> None:
        """Undo everything :meth:`start` did; never raises (it runs on the way out)."""
        if self.routes:
            try:
                with self._rtnl_factory() as rtnl:
                    for net, gateway, oif in self.routes:
                        with contextlib.suppress(OSError):  # gone with the TUN already
                            rtnl.gateway_route("del", dst=str(net.network_address),
                                               dst_len=net.prefixlen, oif=oif, gateway=gateway,
                                               table=MAIN_TABLE)
            except OSError as exc:
                log.warning("could not remove the --route routes: %s", exc)
            self.routes = []
        if self.table_installed and self.nft is not None:
            done = _nft(self.nft, "delete", "table", "inet", TABLE)
            if done.returncode != 0:
                log.warning("could not delete nftables table inet %s: %s", TABLE,
                            done.stderr.strip())
            self.table_installed = False


def start_server_forwarding(settings: ServerSettings, tun: str) -> ServerForwarding:
    """The server's start-up call (TUN up): sysctl check, ``--nat``, ``--route``.  On a
    failure whatever was done is undone before the error propagates."""
    sysctl.at_start("server", tune=settings.tune_sysctls, tun=tun,
                    warn=lambda line: log.warning("%s", line))
    forwarding = ServerForwarding(settings)
    try:
        forwarding.start(tun)
    except BaseException:
        forwarding.stop()
        raise
    return forwarding


def stop_server_forwarding(forwarding: ServerForwarding | None) -> None:
    """The server's exit call: remove the nftables table and the LAN routes, if any."""
    if forwarding is not None:
        forwarding.stop()

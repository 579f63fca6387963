"""The kernel settings a tunnel end needs: checked at start, warned about or set.

* ``net.core.rmem_max`` / ``wmem_max`` cap what a socket may ask for; the path sockets ask
  for 4 MiB, and with the kernel's default (~200 KiB) a burst on a fast link is dropped in
  the socket before ratbond sees it.
* ``net.ipv4.ip_forward``: the server forwards the tunnel's traffic with ``--nat``; a client
  routing a LAN into the tunnel forwards too.
* ``rp_filter`` on a client WAN: strict mode (1) drops a reply arriving on a WAN that is not
  the main table's route back to the sender, i.e. every WAN but one.  Loose mode (2) keeps
  the spoofing check.  The kernel uses the larger of ``all`` and the interface's value.
* ``rp_filter`` on the server's TUN: strict mode drops every packet from a client-side LAN
  that the server does not route back into that TUN (a LAN without ``--route``).

:func:`needs` is pure (values in, findings out); :func:`check` reads ``/proc/sys`` and
either sets what is off (``tune=True``, ``--tune-sysctls``) or returns one warning per
finding with the exact ``sysctl -w`` command.
"""

from __future__ import annotations

import fnmatch
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ratbond.linux.wan import NON_WAN_TABLES, AddrInfo, LinkInfo, RouteInfo

__all__ = ["SOCKET_BUFFER", "Need", "check", "ensure", "matching_interfaces", "needs", "read",
           "write"]

SOCKET_BUFFER = 4 << 20  # what ratbond's sockets ask for (4 MiB)
PROC_SYS = Path("/proc/sys")
log = logging.getLogger("ratbond.sysctl")


@dataclass(frozen=True)
class Need:
    """A setting that is not what the tunnel wants."""

    key: str
    current: int | None
    wanted: int
    why: str

    @property
    def command(self) -> str:
        return f"sysctl -w {self.key}={self.wanted}"

    def warning(self) -> str:
        now = "missing" if self.current is None else str(self.current)
        return f"{self.key} is {now}: {self.why}; fix: {self.command} (or --tune-sysctls)"


def _path(key: str) -> Path:
    # net.ipv4.conf.<ifname>.rp_filter: an interface name may itself hold a dot (eth0.100).
    parts = key.split(".")
    if len(parts) > 5 and parts[0] == "net" and parts[1] in ("ipv4", "ipv6") \
            and parts[2] == "conf":
        parts = [*parts[:3], ".".join(parts[3:-1]), parts[-1]]
    return PROC_SYS.joinpath(*parts)


def read(key: str) -> int | None:
    """The integer value of ``key`` (None when the kernel has no such setting)."""
    try:
        return int(_path(key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write(key: str, value: int) -> None:
    _path(key).write_text(f"{value}\n")


def ensure(key: str, value: int, *, why: str) -> None:
    """Set ``key`` to ``value`` unless it already is (``--nat`` needs forwarding on)."""
    if read(key) == value:
        return
    try:
        write(key, value)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot set {key}={value} ({why}): {exc.strerror}") from None
    log.info("set %s=%d: %s", key, value, why)


def needs(role: Literal["client", "server"], values: Mapping[str, int | None], *,
          wans: Sequence[str] = (), forwarding: bool = False,
          tuns: Sequence[str] = ()) -> list[Need]:
    """What is off, given the current ``values`` of the keys :func:`keys_for` names."""
    out: list[Need] = []
    for key in ("net.core.rmem_max", "net.core.wmem_max"):
        current = values.get(key)
        if current is not None and current < SOCKET_BUFFER:
            out.append(Need(key, current, SOCKET_BUFFER,
                            "the path sockets ask for 4 MiB buffers; smaller ones drop bursts"))
    if forwarding and values.get("net.ipv4.ip_forward") != 1:
        why = ("--nat forwards the tunnel's traffic" if role == "server"
               else "a LAN routed through this router's tunnel needs forwarding")
        out.append(Need("net.ipv4.ip_forward", values.get("net.ipv4.ip_forward"), 1, why))
    if role == "client":
        every = values.get("net.ipv4.conf.all.rp_filter")
        if every == 1:
            out.append(Need("net.ipv4.conf.all.rp_filter", 1, 2,
                            "strict reverse-path filtering drops replies on every WAN but "
                            "the main table's"))
        for wan in wans if every != 2 else ():  # the kernel uses max(all, interface)
            key = f"net.ipv4.conf.{wan}.rp_filter"
            if values.get(key) == 1:
                out.append(Need(key, 1, 2, f"strict reverse-path filtering on {wan} drops "
                                           "its replies unless main routes to it"))
    if role == "server":
        out += _tun_rp_filter(values, tuns)
    return out


def _tun_rp_filter(values: Mapping[str, int | None], tuns: Sequence[str]) -> list[Need]:
    """Loose mode (2) on the server's TUN(s): setting the TUN's own value is enough, since
    the kernel uses max(all, interface), and leaves every other interface alone."""
    every = values.get("net.ipv4.conf.all.rp_filter") or 0
    out = []
    for tun in tuns:
        key = f"net.ipv4.conf.{tun}.rp_filter"
        own = values.get(key)
        if own is None or max(every, own) != 1:
            continue
        via = " (net.ipv4.conf.all.rp_filter is 1)" if every == 1 and own != 1 else ""
        out.append(Need(key, own, 2, f"strict reverse-path filtering on {tun}{via} drops "
                                     "packets from a client-side LAN the server does not "
                                     "route back into the tunnel (one without --route)"))
    return out


def at_start(role: Literal["client", "server"], *, tune: bool, forwarding: bool = False,
             tun: str | None = None, warn: Callable[[str], None]) -> None:
    """The start-up check of either end; never stops it.  On the client the WANs come from
    rtnetlink, and an address on any other interface (but ``tun`` and loopback) is taken as
    a LAN routed through the tunnel, which needs forwarding.  On the server ``tun`` (a name
    or a glob like ``tun*``) names the TUN(s) whose rp_filter matters."""
    wans: list[str] = []
    tuns = matching_interfaces(tun) if role == "server" and tun else []
    if role == "client":
        try:
            wans, lans = _wans_and_lans(tun)
        except OSError as exc:
            log.debug("sysctl check: cannot list interfaces: %s", exc)
        else:
            forwarding = forwarding or bool(lans)
    for line in check(role, wans=wans, forwarding=forwarding, tune=tune, tuns=tuns):
        warn(line)


def matching_interfaces(pattern: str) -> list[str]:
    """Interfaces (by their ``/proc/sys/net/ipv4/conf`` entry) a name or glob matches."""
    try:
        names = [p.name for p in (PROC_SYS / "net/ipv4/conf").iterdir()]
    except OSError:
        return []
    return sorted(n for n in names if n not in ("all", "default")
                  and fnmatch.fnmatchcase(n, pattern))


def _wans_and_lans(tun: str | None) -> tuple[list[str], list[str]]:
    from ratbond.linux.netlink import Rtnl

    with Rtnl() as rtnl:
        return wans_and_lans(rtnl.links(), rtnl.addresses(), rtnl.routes(), tun=tun)


def wans_and_lans(links: Sequence[LinkInfo], addresses: Sequence[AddrInfo],
                  routes: Sequence[RouteInfo], *, tun: str | None = None
                  ) -> tuple[list[str], list[str]]:
    """Interfaces with an IPv4 default route in a table of their own (WANs), and addressed
    ones with no default route anywhere, but loopback and ``tun`` (LANs)."""
    names = {link.index: link.name for link in links}
    defaults = [r for r in routes if r.dst_len == 0 and r.family == socket.AF_INET
                and r.oif is not None]
    oifs = {r.oif for r in defaults if r.table not in NON_WAN_TABLES}
    addressed = {a.index for a in addresses if a.family == socket.AF_INET
                 and not a.address.is_loopback}
    wans = sorted(names[i] for i in oifs if i in names)
    lans = sorted(names[i] for i in addressed - {r.oif for r in defaults}
                  if i in names and names[i] != tun)
    return wans, lans


def keys_for(role: Literal["client", "server"], wans: Sequence[str],
             tuns: Sequence[str] = ()) -> list[str]:
    keys = ["net.core.rmem_max", "net.core.wmem_max", "net.ipv4.ip_forward",
            "net.ipv4.conf.all.rp_filter"]
    names = wans if role == "client" else tuns
    return keys + [f"net.ipv4.conf.{n}.rp_filter" for n in names]


def check(role: Literal["client", "server"], *, wans: Sequence[str] = (),
          forwarding: bool = False, tune: bool = False, tuns: Sequence[str] = (),
          reader: Callable[[str], int | None] = read,
          writer: Callable[[str, int], None] = write) -> list[str]:
    """Warnings for what is off; with ``tune`` set it instead (a failed write still warns)."""
    values = {key: reader(key) for key in keys_for(role, wans, tuns)}
    warnings: list[str] = []
    for need in needs(role, values, wans=wans, forwarding=forwarding, tuns=tuns):
        if tune:
            try:
                writer(need.key, need.wanted)
                log.info("--tune-sysctls: set %s=%d (was %s)", need.key, need.wanted,
                         need.current)
                continue
            except OSError as exc:
                warnings.append(f"--tune-sysctls could not set {need.key}: {exc.strerror}; "
                                + need.warning())
                continue
        warnings.append(need.warning())
    return warnings

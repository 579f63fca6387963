"""The host side of a server with a clients file: one TUN (and its routes) per client.

:class:`ClientTunnels` opens ``tun<tunnel-id>`` for each client with the server's address in
that client's subnet(s), adds the client's ``routes`` via its tunnel address, and undoes
both when the client is removed or the server stops.  Isolation between clients is the
kernel's: each client's traffic enters and leaves by its own TUN, so it reaches another
client only if the admin's routing and firewall send it there.

:func:`plan_reload` compares the running entries with a re-read file (SIGHUP): unchanged
clients keep their session and TUN; removed or changed ones are dropped (their session
closed, TUN and routes removed) and changed or added ones (re)created.  Secrets are stretched
once each (scrypt is slow on purpose) and remembered by digest across reloads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ratbond.clients import ClientEntry, ClientsFile
from ratbond.config import TUN_MTU, ServerSettings
from ratbond.crypto import stretch
from ratbond.crypto.credentials import ClientCredential
from ratbond.linux import sysctl
from ratbond.linux.nat import TABLE, NatError, ServerForwarding, default_route_interface, ruleset
from ratbond.linux.netlink import Rtnl
from ratbond.linux.tun import TunDevice, TunError
from ratbond.wire import pack_tunnel_info

log = logging.getLogger("ratbond.server")


class ClientTunBusyError(OSError):
    """A client's TUN exists already; the message is the one line the user reads."""

    user_facing = True  # ratbond.startup_errors prints it as is, exit code 1


@dataclass
class ClientTun:
    """One client's TUN and the routes added for it."""

    entry: ClientEntry
    tun: TunDevice
    forwarding: ServerForwarding | None = None
    reading: bool = False


@dataclass(frozen=True)
class ReloadPlan:
    """What a re-read clients file changes, by client name."""

    added: tuple[ClientEntry, ...] = ()
    changed: tuple[ClientEntry, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def dropped(self) -> tuple[str, ...]:
        """Clients whose session must end (removed, or changed in any way)."""
        return self.removed + tuple(e.name for e in self.changed)

    @property
    def opened(self) -> tuple[ClientEntry, ...]:
        """Clients whose TUN must be (re)created."""
        return self.changed + self.added


def plan_reload(running: Mapping[str, ClientEntry], new: ClientsFile) -> ReloadPlan:
    """Compare the running entries with the new file (entries compare secrets too)."""
    fresh = new.by_name()
    return ReloadPlan(
        added=tuple(e for name, e in fresh.items() if name not in running),
        changed=tuple(e for name, e in fresh.items()
                      if name in running and running[name] != e),
        removed=tuple(name for name in running if name not in fresh),
        unchanged=tuple(name for name, e in fresh.items()
                        if name in running and running[name] == e),
    )


@dataclass
class ClientTunnels:
    """Every client's TUN, opened and closed as the clients file says."""

    settings: ServerSettings
    tuns: dict[str, ClientTun] = field(default_factory=dict)
    _psks: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    def credentials(self, entries: Iterable[ClientEntry]) -> list[ClientCredential]:
        """The channel's credentials; each secret stretched once per process."""
        out: list[ClientCredential] = []
        for entry in entries:
            digest = hashlib.sha256(entry.secret.reveal()).digest()
            psk = self._psks.get(digest)
            if psk is None:
                psk = self._psks[digest] = stretch(entry.secret)
            out.append(ClientCredential(entry.name, psk,
                                        pack_tunnel_info(entry.tunnel_ip, entry.tunnel_ip6)))
        return out

    def forget_unused(self, entries: Iterable[ClientEntry]) -> None:
        """Drop stretched keys no entry uses any more (a removed client's key)."""
        keep = {hashlib.sha256(e.secret.reveal()).digest() for e in entries}
        for digest in [d for d in self._psks if d not in keep]:
            del self._psks[digest]

    def open(self, entry: ClientEntry) -> ClientTun:
        """Create ``tun<tunnel-id>`` with the server's addresses and the client's routes."""
        try:
            tun = TunDevice.open(entry.tun_name, mtu=TUN_MTU)
        except TunError as exc:
            if exc.errno != errno.EBUSY:
                raise
            raise ClientTunBusyError(f"client {entry.name}: TUN {entry.tun_name} is busy: is "
                                "another ratbond running? (stop it, or give this client "
                                "another tunnel-id in the clients file)") from exc
        client_tun = ClientTun(entry, tun)
        try:
            tun.configure(address=entry.server_address, address6=entry.server_address6)
            if entry.routes:
                forwarding = ServerForwarding(dataclasses.replace(
                    self.settings, nat=False, tunnel_ip=entry.tunnel_ip,
                    tunnel_ip6=entry.tunnel_ip6, routes=entry.routes))
                client_tun.forwarding = forwarding
                forwarding.start(tun.name)
        except BaseException:
            self._release(client_tun)
            raise
        self.tuns[entry.name] = client_tun
        log.info("client %s: tunnel %s up with %s%s", entry.name, tun.name,
                 entry.server_address,
                 "".join(f", route {net}" for net in entry.routes))
        return client_tun

    def close(self, name: str) -> None:
        """Remove a client's routes and TUN (the caller stopped reading it)."""
        client_tun = self.tuns.pop(name, None)
        if client_tun is not None:
            self._release(client_tun)
            log.info("client %s: tunnel %s removed", name, client_tun.entry.tun_name)

    def close_all(self) -> None:
        for name in list(self.tuns):
            self.close(name)

    @staticmethod
    def _release(client_tun: ClientTun) -> None:
        if client_tun.forwarding is not None:
            with contextlib.suppress(Exception):
                client_tun.forwarding.stop()
        client_tun.tun.close()


NFT_TIMEOUT_S = 10.0


class ClientsNat:
    """``--nat`` with a clients file: one nftables table ``inet ratbond`` masquerading every
    client's subnets and routes and clamping the MSS on every client's TUN; rewritten in
    one transaction whenever the set of clients changes, deleted on exit."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.nft = shutil.which("nft")
        self.installed = False
        self._out_if: str | None = None

    def apply(self, entries: Iterable[ClientEntry]) -> None:
        """Install (or replace) the table for ``entries``; raises :class:`NatError`."""
        chosen = list(entries)
        if not chosen:
            self.remove()
            return
        if self.nft is None:
            raise NatError("--nat needs the nft binary: install the 'nftables' package "
                           "(apt-get install nftables, opkg install nftables)")
        if self._out_if is None:
            with Rtnl() as rtnl:
                self._out_if = self.settings.nat_out or default_route_interface(rtnl)
        sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in chosen:
            for net in (entry.tunnel_ip, entry.tunnel_ip6, *entry.routes):
                if net is not None and net not in sources:
                    sources.append(net)
        sysctl.ensure("net.ipv4.ip_forward", 1, why="--nat forwards the clients' traffic")
        if any(net.version == 6 for net in sources):
            sysctl.ensure("net.ipv6.conf.all.forwarding", 1,
                          why="--nat forwards the clients' IPv6 traffic")
        text = ruleset(tun=[e.tun_name for e in chosen], out_if=self._out_if, sources=sources)
        done = subprocess.run([self.nft, "-f", "-"], input=text, capture_output=True,
                              text=True, timeout=NFT_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise NatError(f"--nat: nft refused the ratbond table: "
                           f"{done.stderr.strip().splitlines()[-1:] or done.returncode}")
        self.installed = True
        log.info("NAT: masquerading %d client subnets out of %s (nftables table inet %s)",
                 len(sources), self._out_if, TABLE)

    def remove(self) -> None:
        """Delete the table; never raises (it runs on the way out)."""
        if not self.installed or self.nft is None:
            return
        done = subprocess.run([self.nft, "delete", "table", "inet", TABLE],
                              capture_output=True, text=True, timeout=NFT_TIMEOUT_S,
                              check=False)
        if done.returncode != 0:
            log.warning("could not delete nftables table inet %s: %s", TABLE,
                        done.stderr.strip())
        self.installed = False

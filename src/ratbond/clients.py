"""The server's clients file (``ratbond server --clients FILE``): one entry per router.

Each ``[[client]]`` table names one router, its own secret (so one leaked router key
compromises only that router), its ``tunnel-id`` (the server's TUN for it is
``tun<tunnel-id>``, as in the Go original), its tunnel subnet(s), the LAN prefixes behind it
(``routes``) and the source addresses it may use (``allowed-ips``, by default its tunnel
addresses and routes).  Everything is checked here, once, when the file is read (at start
and on SIGHUP), so the runtime never meets an invalid entry; every message names the file,
the client, the key, the value and what is allowed.

:class:`AllowedIps` is the isolation check on the data path: a packet that came out of a
client's session reaches that client's TUN only if its source address is one the client owns.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ratbond.crypto import Secret, SecretError, load_secret
from ratbond.crypto.secret import permission_warning
from ratbond.tomlfile import TomlFileError, read_toml

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Keys a ``[[client]]`` table may hold (``_`` may be written for ``-``).
CLIENT_KEYS = ("name", "secret", "secret-file", "tunnel-id", "tunnel-ip", "tunnel-ip6",
               "routes", "allowed-ips")
MAX_NAME = 32
MAX_CLIENTS = 4096
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class ClientsFileError(ValueError):
    """The clients file is invalid; the message names the client, the key and the value."""


class AllowedIps:
    """Which source addresses one client may use, checked on raw IP packets.

    Networks are kept as (network int, mask int) pairs per family, so a check is a few
    integer operations on the packet's source field and builds no address object.
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(networks)
        self._v4 = tuple((int(n.network_address), int(n.netmask))
                         for n in self.networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask))
                         for n in self.networks if n.version == 6)

    def permits(self, packet: bytes) -> bool:
        """True if ``packet`` (an IPv4 or IPv6 packet) has a source address in the set, or
        an IPv6 link-local one."""
        if len(packet) < 20:
            return False
        version = packet[0] >> 4
        if version == 4:
            source = int.from_bytes(packet[12:16], "big")
            nets = self._v4
        elif version == 6 and len(packet) >= 40:
            if packet[8] == 0xFE and packet[9] & 0xC0 == 0x80:
                # fe80::/10 is valid on this client's own TUN only (router solicitations,
                # MLD): it impersonates nobody, and refusing it would only count noise
                return True
            source = int.from_bytes(packet[8:24], "big")
            nets = self._v6
        else:
            return False
        return any(source & mask == net for net, mask in nets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AllowedIps):
            return NotImplemented
        return self.networks == other.networks

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"AllowedIps({', '.join(map(str, self.networks))})"


@dataclass(frozen=True)
class ClientEntry:
    """One router the server accepts, as the clients file describes it."""

    name: str
    secret: Secret = field(repr=False)
    tunnel_id: int
    tunnel_ip: ipaddress.IPv4Network
    tunnel_ip6: ipaddress.IPv6Network | None = None
    routes: tuple[Network, ...] = ()
    allowed_ips: AllowedIps = field(default_factory=lambda: AllowedIps(()))

    @property
    def tun_name(self) -> str:
        return f"tun{self.tunnel_id}"

    # The same order as ``--tunnel-ip`` (ratbond.config): client first host, server second.

    @property
    def server_address(self) -> ipaddress.IPv4Interface:
        return _host(self.tunnel_ip, 2)  # type: ignore[return-value]

    @property
    def client_address(self) -> ipaddress.IPv4Interface:
        return _host(self.tunnel_ip, 1)  # type: ignore[return-value]

    @property
    def server_address6(self) -> ipaddress.IPv6Interface | None:
        return None if self.tunnel_ip6 is None else _host(self.tunnel_ip6, 2)  # type: ignore[return-value]

    @property
    def client_address6(self) -> ipaddress.IPv6Interface | None:
        return None if self.tunnel_ip6 is None else _host(self.tunnel_ip6, 1)  # type: ignore[return-value]


def _host(net: Network, index: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{net.network_address + index}/{net.prefixlen}")


@dataclass(frozen=True)
class ClientsFile:
    """Every entry of one clients file, in file order, and what to warn about."""

    path: str
    clients: tuple[ClientEntry, ...]
    warnings: tuple[str, ...] = ()

    def by_name(self) -> dict[str, ClientEntry]:
        return {entry.name: entry for entry in self.clients}

    def __str__(self) -> str:
        """The file and its clients in one line (``check-config``; no secret)."""
        listed = "; ".join(f"{e.name} {e.tun_name} {e.tunnel_ip}"
                           + (f" {e.tunnel_ip6}" if e.tunnel_ip6 else "")
                           + "".join(f" route {net}" for net in e.routes)
                           for e in self.clients)
        return f"{self.path} ({len(self.clients)} clients: {listed})"


# --------------------------------------------------------------------------- loading


def load_clients(path: str, env: Mapping[str, str] | None = None) -> ClientsFile:
    """Read and check ``path``; raises :class:`ClientsFileError` with the one line to fix."""
    del env  # a client's secret never comes from the environment: one variable, many clients
    try:
        data = read_toml(path, "--clients")
    except TomlFileError as exc:
        raise ClientsFileError(str(exc)) from None
    return parse_clients(data, path)


def parse_clients(data: Mapping[str, Any], path: str) -> ClientsFile:
    """Check the parsed TOML of a clients file (split out so tests need no file)."""
    extra = sorted(set(data) - {"client"})
    if extra:
        raise ClientsFileError(f"{path}: {extra[0]}: unknown key; the file holds [[client]] "
                               "tables only")
    tables = data.get("client")
    if tables is None:
        raise ClientsFileError(f"{path}: no [[client]] table; add one per router (see "
                               "examples/clients.toml)")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ClientsFileError(f"{path}: client: write each client as a [[client]] table")
    if len(tables) > MAX_CLIENTS:
        raise ClientsFileError(f"{path}: {len(tables)} clients; at most {MAX_CLIENTS} allowed")
    warnings: list[str] = []
    entries = [_entry(path, index, table, warnings) for index, table in enumerate(tables)]
    _check_unique(path, entries)
    return ClientsFile(path, tuple(entries), tuple(warnings))


def _entry(path: str, index: int, table: Mapping[str, Any],
           warnings: list[str]) -> ClientEntry:
    options: dict[str, Any] = {}
    raw_name = table.get("name")
    where = f"{path}: client {raw_name!r}" if isinstance(raw_name, str) else \
        f"{path}: client #{index + 1}"
    for raw, value in table.items():
        key = raw.replace("_", "-")
        if key not in CLIENT_KEYS:
            close = difflib.get_close_matches(key, CLIENT_KEYS, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else \
                f" (allowed: {', '.join(CLIENT_KEYS)})"
            raise ClientsFileError(f"{where}: {raw}: unknown key{hint}")
        if key in options:
            raise ClientsFileError(f"{where}: {raw}: the same key is written twice; keep one")
        options[key] = value
    for required in ("name", "tunnel-id", "tunnel-ip"):
        if required not in options:
            raise ClientsFileError(f"{where}: {required}: required")
    name = _name(where, options["name"])
    tunnel_id = _tunnel_id(where, options["tunnel-id"])
    tunnel_ip, tunnel_ip6 = _tunnel_nets(where, options)
    routes = _networks(where, "routes", options.get("routes", []))
    for net in routes:
        if net.prefixlen == 0:
            raise ClientsFileError(f"{where}: routes: {str(net)!r} is everything; name the "
                                   "client's LAN prefixes")
        if net.version == 6 and tunnel_ip6 is None:
            raise ClientsFileError(f"{where}: routes: {str(net)!r} is IPv6 but the client has "
                                   "no tunnel-ip6 to route it through")
    tunnel_nets: list[Network] = [tunnel_ip] + ([tunnel_ip6] if tunnel_ip6 else [])
    if "allowed-ips" in options:
        allowed = _networks(where, "allowed-ips", options["allowed-ips"])
    else:
        allowed = tuple(tunnel_nets) + routes
    secret = _secret(where, options, warnings)
    return ClientEntry(name, secret, tunnel_id, tunnel_ip, tunnel_ip6, routes,
                       AllowedIps(allowed))


def _tunnel_nets(where: str, options: Mapping[str, Any]
                 ) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None]:
    tunnel_ip = _network(where, "tunnel-ip", options["tunnel-ip"], 4)
    assert isinstance(tunnel_ip, ipaddress.IPv4Network)
    if tunnel_ip.prefixlen > 30:
        raise ClientsFileError(f"{where}: tunnel-ip: {str(tunnel_ip)!r} is too small; a /30 or "
                               "a larger subnet holds the client (first host) and the server "
                               "(second host)")
    raw6 = options.get("tunnel-ip6")
    if raw6 is None or (isinstance(raw6, str) and raw6.lower() in ("", "none")):
        return tunnel_ip, None
    tunnel_ip6 = _network(where, "tunnel-ip6", raw6, 6)
    assert isinstance(tunnel_ip6, ipaddress.IPv6Network)
    if tunnel_ip6.prefixlen > 126:
        raise ClientsFileError(f"{where}: tunnel-ip6: {str(tunnel_ip6)!r} is too small; use "
                               "a /126 or larger")
    return tunnel_ip, tunnel_ip6


def _name(where: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME \
            or not set(value) <= _NAME_CHARS:
        raise ClientsFileError(f"{where}: name: {value!r} is not a client name (1-{MAX_NAME} "
                               "letters, digits, '-', '_' or '.')")
    return value


def _tunnel_id(where: str, value: object) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 0 <= number <= 99999:
        raise ClientsFileError(f"{where}: tunnel-id: {value!r} is not a whole number in "
                               "0..99999 (the server's TUN is tun<tunnel-id>)")
    return number


def _network(where: str, key: str, value: object, version: int | None) -> Network:
    example = {4: "10.10.11.0/30", 6: "fd00:7262:6f6e:6401::/64"}.get(version or 4)
    if not isinstance(value, str):
        raise ClientsFileError(f"{where}: {key}: {value!r} is not a network in quotes like "
                               f"{example!r}")
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ClientsFileError(f"{where}: {key}: {value!r} is not a network like "
                               f"{example} ({exc})") from None
    if version is not None and net.version != version:
        raise ClientsFileError(f"{where}: {key}: {value!r} is not an IPv{version} network "
                               f"like {example}")
    return net


def _networks(where: str, key: str, value: object) -> tuple[Network, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ClientsFileError(f"{where}: {key}: {value!r} is not a list of networks like "
                               "[\"192.168.7.0/24\"]")
    return tuple(_network(where, key, item, None) for item in value)


def _secret(where: str, options: Mapping[str, Any], warnings: list[str]) -> Secret:
    text, file = options.get("secret"), options.get("secret-file")
    if text is not None and file is not None:
        raise ClientsFileError(f"{where}: secret and secret-file: give one, not both")
    if text is None and file is None:
        raise ClientsFileError(f"{where}: secret-file: required (or secret); every client has "
                               "its own, made with: ratbond genkey --output FILE")
    for key, value in (("secret", text), ("secret-file", file)):
        if value is not None and not isinstance(value, str):
            raise ClientsFileError(f"{where}: {key}: {value!r} is not a string (write it in "
                                   "quotes)")
    try:
        secret = load_secret(text, file, {})
    except SecretError as exc:
        raise ClientsFileError(f"{where}: {exc}") from None
    assert secret is not None
    if file is not None:
        warning = permission_warning(file, f"{where}: secret-file")
        if warning:
            warnings.append(warning)
    return secret


def _check_unique(path: str, entries: Sequence[ClientEntry]) -> None:
    """Names, tunnel ids, secrets and address space must not be shared between clients."""
    seen_names: dict[str, ClientEntry] = {}
    seen_ids: dict[int, ClientEntry] = {}
    for entry in entries:
        where = f"{path}: client {entry.name!r}"
        if entry.name in seen_names:
            raise ClientsFileError(f"{where}: name: {entry.name!r} is used by another client; "
                                   "names must be unique")
        seen_names[entry.name] = entry
        other = seen_ids.get(entry.tunnel_id)
        if other is not None:
            raise ClientsFileError(f"{where}: tunnel-id: {entry.tunnel_id} is also client "
                                   f"{other.name!r}'s; each client needs its own tun<tunnel-id>")
        seen_ids[entry.tunnel_id] = entry
    secrets: dict[bytes, ClientEntry] = {}
    for entry in entries:
        digest = hashlib.sha256(entry.secret.reveal()).digest()
        other = secrets.get(digest)
        if other is not None:
            raise ClientsFileError(f"{path}: client {entry.name!r}: secret: the same as "
                                   f"client {other.name!r}'s; each client needs its own "
                                   "(ratbond genkey --output FILE)")
        secrets[digest] = entry
    _check_disjoint(path, entries)


def _check_disjoint(path: str, entries: Sequence[ClientEntry]) -> None:
    """No address one client owns may be another's (sorted sweep: fine for thousands)."""
    spans: list[tuple[int, int, int, ClientEntry, str, Network]] = []
    for entry in entries:
        for key, net in _owned(entry):
            spans.append((net.version, int(net.network_address), int(net.broadcast_address),
                          entry, key, net))
    spans.sort(key=lambda span: (span[0], span[1], -span[2]))
    order = {id(entry): index for index, entry in enumerate(entries)}
    for i, (version, _first, last, entry, key, net) in enumerate(spans):
        for later in spans[i + 1:]:
            if later[0] != version or later[1] > last:
                break
            if later[3] is not entry:
                this = (version, _first, last, entry, key, net)
                # blame the entry further down the file: the one most likely just added
                mine, theirs = ((later, this) if order[id(later[3])] > order[id(entry)]
                                else (this, later))
                raise ClientsFileError(
                    f"{path}: client {mine[3].name!r}: {mine[4]}: {str(mine[5])!r} overlaps "
                    f"client {theirs[3].name!r}'s {theirs[4]} {str(theirs[5])!r}; clients' "
                    "subnets must not overlap")


def _owned(entry: ClientEntry) -> list[tuple[str, Network]]:
    owned: list[tuple[str, Network]] = [("tunnel-ip", entry.tunnel_ip)]
    if entry.tunnel_ip6 is not None:
        owned.append(("tunnel-ip6", entry.tunnel_ip6))
    owned += [("routes", net) for net in entry.routes]
    owned += [("allowed-ips", net) for net in entry.allowed_ips.networks
              if not any(net == n for _, n in owned)]
    return owned

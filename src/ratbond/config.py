"""Validated settings for ``ratbond server`` and ``ratbond client``.

Settings come from an optional TOML file and from flags (flags win).  Every value is checked
here, once, at start, by the same parser whichever source it came from: a bad one raises
:class:`ConfigError` naming where it came from (``--mux`` for a flag, ``FILE: mux`` for a
file key), the value and what is allowed, so the runtime never meets an invalid setting.
Flag names are those of the Go original, so users migrating keep their command lines.
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import math
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ratbond.clients import ClientsFile, ClientsFileError, load_clients
from ratbond.crypto import ENV_VAR, Secret, SecretError, load_secret
from ratbond.crypto.secret import permission_warning
from ratbond.mqtt.options import MQTT_KEYS, MqttSettings, mqtt_settings
from ratbond.tomlfile import TomlFileError, read_toml

Balance = Literal["adaptive", "consistent", "roundrobin", "redundant"]
BALANCES: tuple[Balance, ...] = ("adaptive", "consistent", "roundrobin", "redundant")
#: The one place the default scheduler is chosen (flags, help and settings all read it).
DEFAULT_BALANCE: Balance = "adaptive"
Duplicate = Literal["none", "small", "ef"]
DUPLICATES: tuple[Duplicate, ...] = ("none", "small", "ef")
KcpEngineName = Literal["auto", "python", "c"]
Cipher = Literal["chacha20-poly1305", "aes-256-gcm"]
CIPHERS: tuple[Cipher, ...] = ("chacha20-poly1305", "aes-256-gcm")

DEFAULT_PORT = 12345
DEFAULT_TUNNEL_ID = 660
DEFAULT_TUNNEL_IP = "10.10.10.0/30"
DEFAULT_TUNNEL_IP6 = "fd00:7262:6f6e:6400::/64"
_DEFAULT_NET = ipaddress.IPv4Network(DEFAULT_TUNNEL_IP)
_DEFAULT_NET6 = ipaddress.IPv6Network(DEFAULT_TUNNEL_IP6)
#: Defaults of ``policy-routing apply`` (ratbond.linux.policy; a unit test keeps them equal).
POLICY_TABLE_BASE = 100
POLICY_PREF = 10000
_POLICY_TABLES = 32  # ratbond.linux.policy.MAX_WANS
DEFAULT_HTTP_LISTEN = "127.0.0.1:8091"
MAX_MUX = 16
#: Bounds of ``--link-rate`` in Mbit/s: 10 kbit/s .. 100 Gbit/s.
MIN_LINK_MBPS = 0.01
MAX_LINK_MBPS = 100_000.0
#: A token file larger than this is not a token (a wrong path, most likely).
MAX_TOKEN_BYTES = 4096

# Bytes every inner packet carries on the wire, worst case (IPv6 between the WANs and the server):
# outer IPv6 40 + UDP 8 + ratbond header 16 + AEAD tag 16 + KCP header 24 + bond DATA header 5.
WAN_MTU = 1500
OUTER_OVERHEAD = 40 + 8 + 16 + 16
KCP_MTU = WAN_MTU - OUTER_OVERHEAD  # 1420: what one KCP datagram may occupy
TUN_MTU = KCP_MTU - 24 - 5  # 1391: an inner packet that fits one KCP segment, unfragmented


class ConfigError(ValueError):
    """A setting is invalid; the message names the flag, the value and what is allowed."""


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class LinkRateMbps(NamedTuple):
    """A WAN link's rate as the user knows it (``--link-rate wan1=30/10``), in Mbit/s."""

    down_mbps: float
    up_mbps: float


def _no_link_rates() -> Mapping[str, LinkRateMbps]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class CommonSettings:
    """Settings both ends share."""

    tunnel_id: int = DEFAULT_TUNNEL_ID
    tunnel_ip: ipaddress.IPv4Network = _DEFAULT_NET
    tunnel_ip6: ipaddress.IPv6Network | None = _DEFAULT_NET6
    aes: bool = False
    secret: Secret | None = field(default=None, repr=False)
    cipher: Cipher = "chacha20-poly1305"
    balance: Balance = DEFAULT_BALANCE
    duplicate: Duplicate = "none"
    http_listen: HostPort | None = None
    http_token_file: Path | None = None
    log_level: Literal["info", "debug", "trace"] = "info"
    syslog: bool = True
    # Faster than the original's 2 s / 10 s: bench/failover.py measured a blackholed path
    # leaving in 2.0 s (worst flow stall ~3 s instead of >16 s) with no false PathDown on a
    # saturated 120 ms-RTT, 1 %-loss link; 1 s already flapped there, so 2 s keeps a 2x margin.
    hello_interval: float = 0.5
    dead_after: float = 2.0
    kcp_engine: KcpEngineName = "auto"
    kcp_window: int = 1024
    #: ``--mqtt-*`` (docs/fleet.md): None publishes nothing.
    mqtt: MqttSettings | None = None
    #: Things worth saying at start that do not stop it (e.g. a secret file others can read).
    warnings: tuple[str, ...] = field(default=(), compare=False)
    # Set the sysctls the tunnel needs instead of warning (--tune-sysctls).
    tune_sysctls: bool = False

    @property
    def server_tunnel_address(self) -> ipaddress.IPv4Interface:
        """Second usable host of ``--tunnel-ip`` (the Go original's order)."""
        return ipaddress.IPv4Interface(f"{self.tunnel_ip.network_address + 2}/"
                                       f"{self.tunnel_ip.prefixlen}")

    @property
    def client_tunnel_address(self) -> ipaddress.IPv4Interface:
        """First usable host of ``--tunnel-ip`` (the Go original's order)."""
        return ipaddress.IPv4Interface(f"{self.tunnel_ip.network_address + 1}/"
                                       f"{self.tunnel_ip.prefixlen}")

    @property
    def server_tunnel_address6(self) -> ipaddress.IPv6Interface | None:
        if self.tunnel_ip6 is None:
            return None
        return ipaddress.IPv6Interface(f"{self.tunnel_ip6.network_address + 2}/"
                                       f"{self.tunnel_ip6.prefixlen}")

    @property
    def client_tunnel_address6(self) -> ipaddress.IPv6Interface | None:
        if self.tunnel_ip6 is None:
            return None
        return ipaddress.IPv6Interface(f"{self.tunnel_ip6.network_address + 1}/"
                                       f"{self.tunnel_ip6.prefixlen}")

    @property
    def server_tun_name(self) -> str:
        """The server's TUN is always ``tun<tunnel-id>``, as in the original."""
        return f"tun{self.tunnel_id}"


@dataclass(frozen=True)
class ServerSettings(CommonSettings):
    listen: HostPort = HostPort("0.0.0.0", DEFAULT_PORT)
    # Forwarding + masquerading out of ``nat_out`` (None: the default route's
    # interface), and routes to client-side LANs via the client's tunnel address.
    nat: bool = False
    nat_out: str | None = None
    routes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: ``--clients FILE``: many clients, each with its own secret and tun<tunnel-id>
    #: (ratbond.clients); None is the single client of ``--secret``/``--tunnel-id``.
    clients: ClientsFile | None = None


@dataclass(frozen=True)
class ClientSettings(CommonSettings):
    connect: HostPort = HostPort("127.0.0.1", DEFAULT_PORT)
    tun_name: str | None = None
    mux: int = 1
    wans: tuple[str, ...] = ()
    exclude_wans: tuple[str, ...] = ()
    #: WANs (names or globs) that carry data only while every other path is down.  They are
    #: used even when ``wans`` narrows the set (they need not be repeated in ``--wan``).
    backup_wans: tuple[str, ...] = ()
    #: ifname (or glob, as given) -> the link's rate; read-only, excluded from hashing.
    link_rates: Mapping[str, LinkRateMbps] = field(default_factory=_no_link_rates,
                                                  hash=False)
    rescan_interval: float = 15.0
    #: --manage-policy-routing: keep one table + 'from <wan-ip>' rule per WAN while running
    #: (tables policy_table_base.., rules at policy_pref; ratbond.linux.policy_keeper).
    manage_policy_routing: bool = False
    policy_table_base: int = POLICY_TABLE_BASE
    policy_pref: int = POLICY_PREF

    @property
    def client_tun_name(self) -> str:
        return self.tun_name or f"tun{self.tunnel_id}"

    @property
    def included_wans(self) -> tuple[str, ...]:
        """The ``--wan`` patterns plus the backup WANs; empty means every WAN."""
        return self.wans + self.backup_wans if self.wans else ()

    def is_backup_wan(self, ifname: str) -> bool:
        return any(fnmatch.fnmatchcase(ifname, pattern) for pattern in self.backup_wans)

    def link_rate_for(self, ifname: str) -> LinkRateMbps | None:
        """The rate given for ``ifname``: its exact name first, else the first matching glob."""
        if ifname in self.link_rates:
            return self.link_rates[ifname]
        for pattern, rate in self.link_rates.items():
            if fnmatch.fnmatchcase(ifname, pattern):
                return rate
        return None


# --------------------------------------------------------------------------- sources


class Options(dict[str, Any]):
    """Merged settings keyed by flag name (``"connect-addr"``), remembering where each came
    from, so an error names ``--mux`` for a flag and ``/etc/ratbond.toml: mux`` for a key."""

    def __init__(self, values: Mapping[str, Any] | None = None,
                 labels: Mapping[str, str] | None = None, file: str | None = None) -> None:
        super().__init__(values or {})
        self.labels: dict[str, str] = dict(labels or {})
        self.file = file  # the config file the labelled values came from

    def overlay(self, flags: Mapping[str, Any]) -> Options:
        """These options with ``flags`` on top (a flag's value and name replace the file's)."""
        merged = Options(self, self.labels, self.file)
        for key, value in flags.items():
            merged[key] = value
            merged.labels.pop(key, None)
            rival = _RIVALS.get(key)
            if rival is not None and rival not in flags:
                merged.pop(rival, None)  # --secret on the command line beats the file's
                merged.labels.pop(rival, None)  # secret-file, and the other way round
        return merged


#: Settings of which only one may be given; a flag for one overrides the file's other.
_RIVALS = {"secret": "secret-file", "secret-file": "secret"}


#: Turns a setting's key into what the user wrote (the flag, or the file and key).
Namer = Callable[[str], str]


def _namer(options: Mapping[str, Any]) -> Namer:
    labels = options.labels if isinstance(options, Options) else {}
    return lambda key: labels.get(key, f"--{key}")


#: Flags that choose the balance mode, as a config file may spell them.
_BALANCE_FLAGS = {f"balance-{mode}": mode for mode in BALANCES}


def load_toml(path: str) -> Options:
    """Read a TOML config file.  Keys are the flag names, with ``-`` or ``_``; the balance
    flags (``balance-roundrobin = true``) are accepted as ``balance = "roundrobin"``."""
    try:
        data = read_toml(path, "--config")
    except TomlFileError as exc:
        raise ConfigError(str(exc)) from None
    options = Options(file=path)
    written: dict[str, str] = {}  # canonical key -> the key as written in the file
    for raw, given in data.items():
        key, value = raw.replace("_", "-"), given
        name = f"{path}: {raw}"
        if key == "config":
            raise ConfigError(f"{name}: a config file cannot name another config file")
        if key in _BALANCE_FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{name}: {_show(value)} is not true or false")
            if not value:
                raise ConfigError(f"{name}: false chooses nothing; choose the mode with "
                                  f"balance = \"{DEFAULT_BALANCE}\" (one of "
                                  f"{', '.join(BALANCES)})")
            key, value = "balance", _BALANCE_FLAGS[key]
        if key in written:
            raise ConfigError(f"{name}: {written[key]!r} in the same file sets the same "
                              "setting; keep one")
        written[key] = raw
        options[key] = value
        options.labels[key] = name
    return options


# --------------------------------------------------------------------------- value parsers


def _show(value: object) -> str:
    """A value as the user wrote it: TOML's ``true``/``false``, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}: {_show(value)} is not a string (write it in quotes)")
    return value


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    hint = " (write true or false without quotes)" if isinstance(value, str) else ""
    raise ConfigError(f"{name}: {_show(value)} is not true or false{hint}")


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
                       r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_host_port(flag: str, text: object, *, default_host: str | None = None,
                    example_port: int = DEFAULT_PORT,
                    example_host: str | None = None) -> HostPort:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default host) ``:PORT``.

    ``example_port`` and ``example_host`` only shape the suggestions in error messages.
    """
    value = _string(flag, text).strip()
    example_host = example_host or default_host or "vps.example.net"
    if not value:
        raise ConfigError(f"{flag}: empty; expected HOST:PORT, e.g. "
                          f"{example_host}:{example_port}")
    if value.startswith("["):
        host, port_text = _split_bracketed(flag, text, value, example_port)
    else:
        host, port_text = _split_plain(flag, text, value, example_host, example_port)
    if not host:
        if default_host is None:
            raise ConfigError(f"{flag}: {text!r} has no host; expected HOST:PORT, e.g. "
                              f"{example_host}:{port_text or example_port}")
        host = default_host
    if not port_text:
        raise ConfigError(f"{flag}: {text!r} has no port; expected HOST:PORT, e.g. "
                          f"{HostPort(host, example_port)}")
    _check_host(flag, text, host)
    if not port_text.isdigit():
        raise ConfigError(f"{flag}: port {port_text!r} in {text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} in {text!r} is outside 1..65535")
    return HostPort(host, port)


def _split_bracketed(flag: str, text: object, value: str,
                     example_port: int) -> tuple[str, str]:
    """``[V6]:PORT`` -> (host, port text)."""
    end = value.find("]")
    if end < 0:
        raise ConfigError(f"{flag}: {text!r} is not [IPV6]:PORT (no closing ']')")
    host = value[1:end]
    if not value[end + 1:]:
        raise ConfigError(f"{flag}: {text!r} has no port; expected [IPV6]:PORT, e.g. "
                          f"[{host}]:{example_port}")
    if value[end + 1] != ":":
        raise ConfigError(f"{flag}: {text!r} is not [IPV6]:PORT")
    if not _is_ipv6(host):
        raise ConfigError(f"{flag}: {host!r} in {text!r} is not an IPv6 address (only "
                          "IPv6 addresses go in brackets)")
    return host, value[end + 2:]


def _split_plain(flag: str, text: object, value: str, example_host: str,
                 example_port: int) -> tuple[str, str]:
    """``HOST:PORT`` -> (host, port text); an unbracketed IPv6 address says how to write it."""
    if value.count(":") > 1:
        head = value.rpartition(":")[0]
        bracketed = (f"[{value}]:{example_port}" if _is_ipv6(value)
                     else f"[{head}]:{value.rpartition(':')[2]}" if _is_ipv6(head)
                     else f"[2001:db8::1]:{example_port}")
        raise ConfigError(f"{flag}: {text!r}: an IPv6 address goes in brackets, followed by "
                          f"the port: {bracketed}")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        if value.isdigit():
            raise ConfigError(f"{flag}: {text!r} has no host; expected HOST:PORT, e.g. "
                              f"{example_host}:{value}")
        raise ConfigError(f"{flag}: {text!r} has no port; expected HOST:PORT, e.g. "
                          f"{value or example_host}:{example_port}")
    return host, port_text


def _check_host(flag: str, text: object, host: str) -> None:
    if any(c.isspace() for c in host):
        raise ConfigError(f"{flag}: host {host!r} in {text!r} contains white space")
    if ":" not in host and not _HOSTNAME.fullmatch(host):
        raise ConfigError(f"{flag}: host {host!r} in {text!r} is not a host name or an IP "
                          "address")


def _tunnel_network(flag: str, value: object) -> ipaddress.IPv4Network:
    text = _string(flag, value)
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {text!r} is not an IPv4 network like 10.10.10.0/30 "
                          f"({exc})") from None
    if net.prefixlen > 30:
        raise ConfigError(f"{flag}: {text!r} is too small; a /30 or a larger subnet holds the "
                          "client (first host) and the server (second host)")
    return net


def _tunnel_network6(flag: str, value: object) -> ipaddress.IPv6Network | None:
    text = _string(flag, value)
    if text.lower() in ("", "none", "disable", "off"):
        return None
    try:
        net = ipaddress.IPv6Network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {text!r} is not an IPv6 network like fd00::/64 "
                          f"({exc})") from None
    if net.prefixlen > 126:
        raise ConfigError(f"{flag}: {text!r} is too small; use a /126 or larger")
    return net


def _int_in(flag: str, value: object, low: int, high: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 10)
        except ValueError:
            number = None
    if number is None:
        raise ConfigError(f"{flag}: {_show(value)} is not a whole number ({low}..{high})")
    if not low <= number <= high:
        raise ConfigError(f"{flag}: {number} is outside the allowed range {low}..{high}")
    return number


def parse_duration(flag: str, value: object, low: float, high: float) -> float:
    """Seconds from ``1.5``, ``2s`` or ``800ms`` (a TOML number is seconds)."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text, scale = value.strip().lower(), 1.0
        if text.endswith("ms"):
            text, scale = text[:-2], 0.001
        elif text.endswith("s"):
            text = text[:-1]
        try:
            seconds = float(text) * scale
        except ValueError:
            seconds = None
    if seconds is None:
        raise ConfigError(f"{flag}: {_show(value)} is not a duration (e.g. 10, 2.5s, 800ms)")
    if not (math.isfinite(seconds) and low <= seconds <= high):
        raise ConfigError(f"{flag}: {_show(value)} is outside the allowed range "
                          f"{low:g}..{high:g} s")
    return seconds


def _choice(flag: str, value: object, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{flag}: {_show(value)} is not one of {', '.join(allowed)}")
    return value


def _ifname(flag: str, value: object) -> str:
    name = value if isinstance(value, str) else ""
    if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
        raise ConfigError(f"{flag}: {_show(value)} is not an interface name or glob (1-15 "
                          "characters, no '/' or spaces)")
    return name


def _ifname_patterns(flag: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{flag}: expected interface names, got {_show(values)}")
    return tuple(_ifname(flag, item) for item in values)


def _mbps(flag: str, value: object, shown: str) -> float:
    rate: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str):
        try:
            rate = float(value.strip())
        except ValueError:
            rate = None
    if rate is None or not (math.isfinite(rate) and MIN_LINK_MBPS <= rate <= MAX_LINK_MBPS):
        raise ConfigError(f"{flag}: {shown}: a rate must be a number of Mbit/s in "
                          f"{MIN_LINK_MBPS:g}..{MAX_LINK_MBPS:g}")
    return rate


def _link_rate(flag: str, value: object, shown: str) -> LinkRateMbps:
    """``30/10`` (down/up), ``30`` (both ways), or in TOML ``30`` / ``[30, 10]``."""
    if isinstance(value, str):
        down, sep, up = value.partition("/")
        parts: list[object] = [down, up] if sep else [down]
    elif isinstance(value, list):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) not in (1, 2):
        raise ConfigError(f"{flag}: {shown}: expected DOWN/UP or DOWN in Mbit/s")
    down_mbps = _mbps(flag, parts[0], shown)
    up_mbps = _mbps(flag, parts[-1], shown)
    return LinkRateMbps(down_mbps, up_mbps)


def _link_rates(flag: str, value: object) -> Mapping[str, LinkRateMbps]:
    """``["wan1=30/10", "lte0=20"]`` (flags, TOML list) or a TOML table ``{wan1 = "30/10"}``."""
    entries: list[tuple[object, object, str]] = []
    if isinstance(value, dict):
        entries = [(k, v, f"{k} = {_show(v)}") for k, v in value.items()]
    else:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{flag}: expected IFNAME=DOWN/UP, got {_show(value)}")
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise ConfigError(f"{flag}: {_show(item)} is not IFNAME=DOWN/UP in Mbit/s "
                                  "(e.g. wan1=30/10, or wan1=30 for 30 both ways)")
            given_name, _, given_rate = item.partition("=")
            entries.append((given_name.strip(), given_rate.strip(), repr(item)))
    rates: dict[str, LinkRateMbps] = {}
    for ifname, rate, shown in entries:
        name = _ifname(flag, ifname)
        if name in rates:
            raise ConfigError(f"{flag}: {name} is given twice")
        rates[name] = _link_rate(flag, rate, shown)
    return types.MappingProxyType(rates)


def _token_file(flag: str, value: object) -> tuple[Path, str | None]:
    """The path, checked now so a typo stops the start, and a permission warning if any."""
    text = _string(flag, value)
    try:
        with open(text, "rb") as handle:
            data = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {text!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise ConfigError(f"{flag}: {text!r} is larger than {MAX_TOKEN_BYTES} bytes; is it "
                          "the right file?")
    if not data.strip():
        raise ConfigError(f"{flag}: {text!r} is empty")
    return Path(text), permission_warning(text, flag)


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (surrounding white space removed)."""
    return path.read_text(encoding="utf-8", errors="replace").strip()


# --------------------------------------------------------------------------- settings


_COMMON_KEYS = {
    "tunnel-id", "tunnel-ip", "tunnel-ip6", "aes", "secret", "secret-file", "cipher",
    "balance", "duplicate", "http-listen-addr", "http-token-file", "debug", "trace",
    "nosyslog", "hello-interval", "dead-after", "kcp-engine", "kcp-window",
    "tune-sysctls",
} | MQTT_KEYS
_SERVER_ONLY = {"listen-addr", "nat", "nat-out", "route", "clients"}
_CLIENT_ONLY = {"connect-addr", "tun-name", "mux", "wan", "exclude-wan", "backup-wan",
                "link-rate", "rescan-interval", "manage-policy-routing", "policy-table-base",
                "policy-pref"}
_SERVER_KEYS = _COMMON_KEYS | _SERVER_ONLY
_CLIENT_KEYS = _COMMON_KEYS | _CLIENT_ONLY
#: Every key a config file may hold, for the documentation and the tests.
ALL_KEYS = frozenset(_SERVER_KEYS | _CLIENT_KEYS)


def _check_keys(options: Mapping[str, Any], allowed: set[str], role: str) -> None:
    name = _namer(options)
    for key in options:
        if key == "config" or key in allowed:
            continue
        if key == "tun-name":
            raise ConfigError(f"{name(key)}: not a server setting (the server's TUN is always "
                              "tun<tunnel-id>)")
        if key in ALL_KEYS:
            other = "client" if role == "server" else "server"
            raise ConfigError(f"{name(key)}: not a {role} setting (it is a {other} setting)")
        close = difflib.get_close_matches(key, sorted(allowed | set(_BALANCE_FLAGS)), n=1,
                                          cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{name(key)}: unknown {role} setting{hint}")


def _common(options: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """The settings both ends share, checked; ``warnings`` collects start-up warnings."""
    name = _namer(options)
    out: dict[str, Any] = {}
    warnings: list[str] = []
    if "tunnel-id" in options:
        out["tunnel_id"] = _int_in(name("tunnel-id"), options["tunnel-id"], 0, 99999)
    if "tunnel-ip" in options:
        out["tunnel_ip"] = _tunnel_network(name("tunnel-ip"), options["tunnel-ip"])
    if "tunnel-ip6" in options:
        out["tunnel_ip6"] = _tunnel_network6(name("tunnel-ip6"), options["tunnel-ip6"])
    out.update(_channel(options, env, name, warnings))
    for key, allowed in (("cipher", CIPHERS), ("balance", BALANCES),
                         ("duplicate", DUPLICATES)):
        if key in options:
            out[key] = _choice(name(key), options[key], allowed)
    out.update(_status_page(options, name, warnings))
    if _bool(name("trace"), options.get("trace", False)):
        out["log_level"] = "trace"
    elif _bool(name("debug"), options.get("debug", False)):
        out["log_level"] = "debug"
    out["syslog"] = not _bool(name("nosyslog"), options.get("nosyslog", False))
    out.update(_liveness(options, name))
    if "kcp-engine" in options:
        out["kcp_engine"] = _choice(name("kcp-engine"), options["kcp-engine"],
                                    ("auto", "python", "c"))
    if "kcp-window" in options:
        out["kcp_window"] = _int_in(name("kcp-window"), options["kcp-window"], 32, 65535)
    out["tune_sysctls"] = _bool(name("tune-sysctls"), options.get("tune-sysctls", False))
    out["mqtt"], mqtt_warnings = mqtt_settings(options, name)
    warnings.extend(mqtt_warnings)
    out["warnings"] = tuple(w for w in warnings if w)
    return out


def _channel(options: Mapping[str, Any], env: Mapping[str, str], name: Namer,
             warnings: list[str]) -> dict[str, Any]:
    """``--aes`` and the secret (from the flag, a file or the environment)."""
    aes = _bool(name("aes"), options.get("aes", False))
    secret_text = options.get("secret")
    secret_file = options.get("secret-file")
    if secret_text is not None:
        _string(name("secret"), secret_text)
    if secret_file is not None:
        _string(name("secret-file"), secret_file)
    try:
        secret = load_secret(secret_text, secret_file, env)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
    if aes and secret is None:
        raise ConfigError(f"{name('aes')} needs a secret: give --secret, --secret-file or "
                          "RATBOND_SECRET (the Go original silently used a public default "
                          "secret)")
    if secret_file is not None and secret_text is None:
        warnings.append(permission_warning(secret_file) or "")
    if (isinstance(options, Options) and options.file is not None
            and secret_text is not None and "secret" in options.labels):
        warnings.append(permission_warning(options.file, "--config") or "")
    return {"aes": aes, "secret": secret}


def _status_page(options: Mapping[str, Any], name: Namer,
                 warnings: list[str]) -> dict[str, Any]:
    """``--http-listen-addr`` (or ``disable``) and ``--http-token-file``."""
    out: dict[str, Any] = {}
    http = options.get("http-listen-addr", DEFAULT_HTTP_LISTEN)
    http_text = _string(name("http-listen-addr"), http)
    out["http_listen"] = (None if http_text.lower() in ("disable", "disabled", "off", "")
                          else parse_host_port(name("http-listen-addr"), http_text,
                                               default_host="0.0.0.0", example_port=8091,
                                               example_host="127.0.0.1"))
    if options.get("http-token-file") is not None:
        out["http_token_file"], warning = _token_file(name("http-token-file"),
                                                      options["http-token-file"])
        warnings.append(warning or "")
    return out


def _liveness(options: Mapping[str, Any], name: Namer) -> dict[str, Any]:
    """``--hello-interval`` and ``--dead-after``, which must leave room for two HELLOs."""
    out: dict[str, Any] = {}
    if "hello-interval" in options:
        out["hello_interval"] = parse_duration(name("hello-interval"),
                                               options["hello-interval"], 0.1, 60)
    if "dead-after" in options:
        out["dead_after"] = parse_duration(name("dead-after"), options["dead-after"], 0.5, 600)
    hello = out.get("hello_interval", CommonSettings.hello_interval)
    dead = out.get("dead_after", CommonSettings.dead_after)
    if dead < 2 * hello:
        raise ConfigError(f"{name('dead-after')}: {dead:g} s must be at least twice "
                          f"{name('hello-interval')} ({hello:g} s), or live paths would be "
                          "declared dead")
    return out


def _lan_routes(flag: str, values: object, settings: Mapping[str, Any]
                ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--route CIDR``: client-side LANs the server routes into the tunnel."""
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{flag}: expected networks like 192.168.99.0/24, got {_show(values)}")
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in values:
        text = _string(flag, value)
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {text!r} is not a network like 192.168.99.0/24 "
                              f"({exc})") from None
        if net.prefixlen == 0:
            raise ConfigError(f"{flag}: {text!r} is everything; name the client's LAN")
        if net.version == 6 and settings.get("tunnel_ip6", _DEFAULT_NET6) is None:
            raise ConfigError(f"{flag}: {text!r} is IPv6 but --tunnel-ip6 is none")
        out.append(net)
    return tuple(out)


def _without(options: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``options`` less one key, keeping where the others came from."""
    rest = {k: v for k, v in options.items() if k != key}
    if isinstance(options, Options):
        return Options(rest, options.labels, options.file)
    return rest


def _clients_file(options: Mapping[str, Any], name: Namer) -> ClientsFile | None:
    """``--clients FILE``: read and checked now; refuses the single-client secret flags."""
    path = options.get("clients")
    if path is None:
        return None
    for rival in ("secret", "secret-file"):
        if options.get(rival) is not None:
            raise ConfigError(f"{name('clients')} and {name(rival)}: give one; with a "
                              "clients file every client has its own secret there")
    for per_client in ("tunnel-id", "tunnel-ip", "tunnel-ip6", "route"):
        if options.get(per_client) not in (None, [], ()):
            raise ConfigError(f"{name(per_client)}: not used with {name('clients')}; each "
                              "client's entry there has its own tunnel-id, tunnel-ip, "
                              "tunnel-ip6 and routes")
    try:
        return load_clients(_string(name("clients"), path))
    except ClientsFileError as exc:
        raise ConfigError(str(exc)) from None


def server_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> ServerSettings:
    """Build server settings from merged file+flag options (keys are flag names)."""
    _check_keys(options, _SERVER_KEYS, "server")
    name = _namer(options)
    clients = _clients_file(options, name)
    if clients is None:
        kwargs = _common(options, env)
    else:  # the secrets are the clients file's; --aes applies to all of them
        aes = _bool(name("aes"), options.get("aes", False))
        kwargs = _common(_without(options, "aes"), {k: v for k, v in env.items()
                                                    if k != ENV_VAR})
        kwargs.update(clients=clients, aes=aes,
                      warnings=kwargs["warnings"] + clients.warnings)
    if "listen-addr" in options:
        kwargs["listen"] = parse_host_port(name("listen-addr"), options["listen-addr"],
                                           default_host="0.0.0.0")
    kwargs["nat"] = _bool(name("nat"), options.get("nat", False))
    if options.get("nat-out") is not None:
        kwargs["nat_out"] = _ifname(name("nat-out"), options["nat-out"])
    if options.get("route"):
        kwargs["routes"] = _lan_routes(name("route"), options["route"], kwargs)
    return ServerSettings(**kwargs)


def client_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> ClientSettings:
    """Build client settings from merged file+flag options (keys are flag names)."""
    _check_keys(options, _CLIENT_KEYS, "client")
    name = _namer(options)
    if "connect-addr" not in options:
        raise ConfigError("--connect-addr: required (the server's HOST:PORT, e.g. "
                          f"--connect-addr=vps.example.net:{DEFAULT_PORT})")
    kwargs = _common(options, env)
    kwargs["connect"] = parse_host_port(name("connect-addr"), options["connect-addr"])
    if options.get("tun-name") is not None:
        tun = _string(name("tun-name"), options["tun-name"])
        if not tun or len(tun) > 15 or "/" in tun or any(c.isspace() for c in tun):
            raise ConfigError(f"{name('tun-name')}: {tun!r} is not a valid interface name "
                              "(1-15 characters, no '/' or spaces)")
        kwargs["tun_name"] = tun
    if "mux" in options:
        kwargs["mux"] = _int_in(name("mux"), options["mux"], 1, MAX_MUX)
    if options.get("wan"):
        kwargs["wans"] = _ifname_patterns(name("wan"), options["wan"])
    if options.get("exclude-wan"):
        kwargs["exclude_wans"] = _ifname_patterns(name("exclude-wan"), options["exclude-wan"])
    if options.get("backup-wan"):
        backups = _ifname_patterns(name("backup-wan"), options["backup-wan"])
        both = sorted(set(backups) & set(kwargs.get("exclude_wans", ())))
        if both:
            raise ConfigError(f"{name('backup-wan')}: {both[0]!r} is also excluded by "
                              f"{name('exclude-wan')}; a WAN cannot be both")
        kwargs["backup_wans"] = backups
    if options.get("link-rate"):
        kwargs["link_rates"] = _link_rates(name("link-rate"), options["link-rate"])
    if "rescan-interval" in options:
        kwargs["rescan_interval"] = parse_duration(name("rescan-interval"),
                                                   options["rescan-interval"], 1, 3600)
    kwargs.update(_policy_routing(options))
    return ClientSettings(**kwargs)


def _policy_routing(options: Mapping[str, Any]) -> dict[str, Any]:
    """``--manage-policy-routing`` and the range it uses (the same as ``policy-routing``'s)."""
    name = _namer(options)
    out: dict[str, Any] = {}
    out["manage_policy_routing"] = _bool(name("manage-policy-routing"),
                                         options.get("manage-policy-routing", False))
    if "policy-table-base" in options:
        base = _int_in(name("policy-table-base"), options["policy-table-base"], 1,
                       2**31 - _POLICY_TABLES)
        if base <= 255 and base + _POLICY_TABLES > 253:
            raise ConfigError(f"{name('policy-table-base')}: {base} makes tables {base}.."
                              f"{base + _POLICY_TABLES - 1}, which cross the kernel's 253-255 "
                              f"(default, main, local); use at most {253 - _POLICY_TABLES} or "
                              "at least 256")
        out["policy_table_base"] = base
    if "policy-pref" in options:
        out["policy_pref"] = _int_in(name("policy-pref"), options["policy-pref"], 1, 32765)
    return out

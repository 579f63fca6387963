"""Validated settings for ``ratbond server`` and ``ratbond client``.

Settings come from an optional TOML file and from flags (flags win).  Every value is checked
here, once, at start: a bad one raises :class:`ConfigError` naming the flag, the value and what
is allowed, so the runtime never meets an invalid setting.  Flag names are those of the Go
original, so users migrating keep their command lines.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ratbond.crypto import Secret, SecretError, load_secret

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

Balance = Literal["consistent", "roundrobin"]
KcpEngineName = Literal["auto", "python", "c"]
Cipher = Literal["chacha20-poly1305", "aes-256-gcm"]

DEFAULT_PORT = 12345
DEFAULT_TUNNEL_ID = 660
DEFAULT_TUNNEL_IP = "10.10.10.0/30"
DEFAULT_TUNNEL_IP6 = "fd00:7262:6f6e:6400::/64"
_DEFAULT_NET = ipaddress.IPv4Network(DEFAULT_TUNNEL_IP)
_DEFAULT_NET6 = ipaddress.IPv6Network(DEFAULT_TUNNEL_IP6)
DEFAULT_HTTP_LISTEN = "127.0.0.1:8091"
MAX_MUX = 16

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


@dataclass(frozen=True)
class CommonSettings:
    """Settings both ends share."""

    tunnel_id: int = DEFAULT_TUNNEL_ID
    tunnel_ip: ipaddress.IPv4Network = _DEFAULT_NET
    tunnel_ip6: ipaddress.IPv6Network | None = _DEFAULT_NET6
    aes: bool = False
    secret: Secret | None = field(default=None, repr=False)
    cipher: Cipher = "chacha20-poly1305"
    balance: Balance = "consistent"
    http_listen: HostPort | None = None
    log_level: Literal["info", "debug", "trace"] = "info"
    syslog: bool = True
    # Faster than the original's 2 s / 10 s: bench/failover.py measured a blackholed path
    # leaving in 2.0 s (worst flow stall ~3 s instead of >16 s) with no false PathDown on a
    # saturated 120 ms-RTT, 1 %-loss link; 1 s already flapped there, so 2 s keeps a 2x margin.
    hello_interval: float = 0.5
    dead_after: float = 2.0
    kcp_engine: KcpEngineName = "auto"
    kcp_window: int = 1024

    @property
    def server_tunnel_address(self) -> ipaddress.IPv4Interface:
        """First usable host of ``--tunnel-ip`` (the original's rule)."""
        return ipaddress.IPv4Interface(f"{self.tunnel_ip.network_address + 1}/"
                                       f"{self.tunnel_ip.prefixlen}")

    @property
    def client_tunnel_address(self) -> ipaddress.IPv4Interface:
        """Second usable host of ``--tunnel-ip``."""
        return ipaddress.IPv4Interface(f"{self.tunnel_ip.network_address + 2}/"
                                       f"{self.tunnel_ip.prefixlen}")

    @property
    def server_tunnel_address6(self) -> ipaddress.IPv6Interface | None:
        if self.tunnel_ip6 is None:
            return None
        return ipaddress.IPv6Interface(f"{self.tunnel_ip6.network_address + 1}/"
                                       f"{self.tunnel_ip6.prefixlen}")

    @property
    def client_tunnel_address6(self) -> ipaddress.IPv6Interface | None:
        if self.tunnel_ip6 is None:
            return None
        return ipaddress.IPv6Interface(f"{self.tunnel_ip6.network_address + 2}/"
                                       f"{self.tunnel_ip6.prefixlen}")

    @property
    def server_tun_name(self) -> str:
        """The server's TUN is always ``tun<tunnel-id>``, as in the original."""
        return f"tun{self.tunnel_id}"


@dataclass(frozen=True)
class ServerSettings(CommonSettings):
    listen: HostPort = HostPort("0.0.0.0", DEFAULT_PORT)


@dataclass(frozen=True)
class ClientSettings(CommonSettings):
    connect: HostPort = HostPort("127.0.0.1", DEFAULT_PORT)
    tun_name: str | None = None
    mux: int = 1
    wans: tuple[str, ...] = ()
    exclude_wans: tuple[str, ...] = ()
    rescan_interval: float = 15.0

    @property
    def client_tun_name(self) -> str:
        return self.tun_name or f"tun{self.tunnel_id}"


# --------------------------------------------------------------------------- parsing


def parse_host_port(flag: str, text: str, *, default_host: str | None = None) -> HostPort:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default host) ``:PORT``."""
    value = str(text).strip()
    host: str
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1:end + 2] != ":":
            raise ConfigError(f"{flag}: {text!r} is not [IPV6]:PORT")
        host, port_text = value[1:end], value[end + 2:]
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ConfigError(f"{flag}: {text!r} has no port; expected HOST:PORT")
    if not host:
        if default_host is None:
            raise ConfigError(f"{flag}: {text!r} has no host; expected HOST:PORT")
        host = default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{flag}: port {port_text!r} in {text!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{flag}: port {port} in {text!r} is outside 1..65535")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{flag}: host {host!r} in {text!r} contains white space")
    return HostPort(host, port)


def _tunnel_network(flag: str, text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(text), strict=False)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {text!r} is not an IPv4 network like 10.10.10.0/30 "
                          f"({exc})") from None
    if net.prefixlen > 30:
        raise ConfigError(f"{flag}: {text!r} is too small; a /30 or a larger subnet holds the "
                          "server (first host) and the client (second host)")
    return net


def _tunnel_network6(flag: str, text: str) -> ipaddress.IPv6Network | None:
    if str(text).lower() in ("", "none", "disable", "off"):
        return None
    try:
        net = ipaddress.IPv6Network(str(text), strict=False)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {text!r} is not an IPv6 network like fd00::/64 "
                          f"({exc})") from None
    if net.prefixlen > 126:
        raise ConfigError(f"{flag}: {text!r} is too small; use a /126 or larger")
    return net


def _int_in(flag: str, value: object, low: int, high: int) -> int:
    try:
        number = int(str(value), 10)
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not a whole number ({low}..{high})") from None
    if not low <= number <= high:
        raise ConfigError(f"{flag}: {number} is outside the allowed range {low}..{high}")
    return number


def _seconds(flag: str, value: object, low: float, high: float) -> float:
    text = str(value).strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(f"{flag}: {value!r} is not a duration (e.g. 10, 2.5s, 800ms)") from None
    if not low <= seconds <= high:
        raise ConfigError(f"{flag}: {value!r} is outside the allowed range {low:g}..{high:g} s")
    return seconds


def _choice(flag: str, value: object, allowed: tuple[str, ...]) -> str:
    text = str(value)
    if text not in allowed:
        raise ConfigError(f"{flag}: {text!r} is not one of {', '.join(allowed)}")
    return text


def _ifname_patterns(flag: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{flag}: expected interface names, got {values!r}")
    names: list[str] = []
    for item in values:
        name = str(item)
        if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            raise ConfigError(f"{flag}: {name!r} is not an interface name or glob (1-15 "
                              "characters, no '/' or spaces)")
        names.append(name)
    return tuple(names)


def load_toml(path: str) -> dict[str, Any]:
    """Read a TOML config file; keys are the flag names with ``-`` or ``_``."""
    try:
        with Path(path).open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path!r} is not valid TOML: {exc}") from None
    return {key.replace("_", "-"): value for key, value in data.items()}


_COMMON_KEYS = {
    "config", "tunnel-id", "tunnel-ip", "tunnel-ip6", "aes", "secret", "secret-file", "cipher",
    "balance", "http-listen-addr", "debug", "trace", "nosyslog", "hello-interval", "dead-after",
    "kcp-engine", "kcp-window",
}
_SERVER_KEYS = _COMMON_KEYS | {"listen-addr"}
_CLIENT_KEYS = _COMMON_KEYS | {"connect-addr", "tun-name", "mux", "wan", "exclude-wan",
                               "rescan-interval"}


def _common(options: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "tunnel-id" in options:
        out["tunnel_id"] = _int_in("--tunnel-id", options["tunnel-id"], 0, 99999)
    if "tunnel-ip" in options:
        out["tunnel_ip"] = _tunnel_network("--tunnel-ip", options["tunnel-ip"])
    if "tunnel-ip6" in options:
        out["tunnel_ip6"] = _tunnel_network6("--tunnel-ip6", options["tunnel-ip6"])
    aes = bool(options.get("aes", False))
    try:
        secret = load_secret(_optional_str(options.get("secret")),
                             _optional_str(options.get("secret-file")), env)
    except SecretError as exc:
        raise ConfigError(str(exc)) from None
    if aes and secret is None:
        raise ConfigError("--aes needs a secret: give --secret, --secret-file or RATBOND_SECRET "
                          "(the Go original silently used a public default secret)")
    out["aes"] = aes
    out["secret"] = secret
    if "cipher" in options:
        out["cipher"] = _choice("--cipher", options["cipher"],
                                ("chacha20-poly1305", "aes-256-gcm"))
    if "balance" in options:
        out["balance"] = _choice("--balance", options["balance"], ("consistent", "roundrobin"))
    http = options.get("http-listen-addr", DEFAULT_HTTP_LISTEN)
    out["http_listen"] = (None if str(http).lower() in ("disable", "disabled", "off", "")
                          else parse_host_port("--http-listen-addr", str(http),
                                               default_host="0.0.0.0"))
    if options.get("trace"):
        out["log_level"] = "trace"
    elif options.get("debug"):
        out["log_level"] = "debug"
    out["syslog"] = not bool(options.get("nosyslog", False))
    if "hello-interval" in options:
        out["hello_interval"] = _seconds("--hello-interval", options["hello-interval"], 0.1, 60)
    if "dead-after" in options:
        out["dead_after"] = _seconds("--dead-after", options["dead-after"], 0.5, 600)
    hello = out.get("hello_interval", CommonSettings.hello_interval)
    dead = out.get("dead_after", CommonSettings.dead_after)
    if dead < 2 * hello:
        raise ConfigError(f"--dead-after: {dead:g} s must be at least twice --hello-interval "
                          f"({hello:g} s), or live paths would be declared dead")
    if "kcp-engine" in options:
        out["kcp_engine"] = _choice("--kcp-engine", options["kcp-engine"], ("auto", "python", "c"))
    if "kcp-window" in options:
        out["kcp_window"] = _int_in("--kcp-window", options["kcp-window"], 32, 65535)
    return out


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _check_keys(options: Mapping[str, Any], allowed: set[str], role: str) -> None:
    for key in options:
        if key not in allowed:
            hint = " (the server's TUN is always tun<tunnel-id>)" if key == "tun-name" else ""
            raise ConfigError(f"--{key}: not a {role} setting{hint}")


def server_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> ServerSettings:
    """Build server settings from merged file+flag options (keys are flag names)."""
    _check_keys(options, _SERVER_KEYS, "server")
    kwargs = _common(options, env)
    if "listen-addr" in options:
        kwargs["listen"] = parse_host_port("--listen-addr", options["listen-addr"],
                                           default_host="0.0.0.0")
    return ServerSettings(**kwargs)


def client_settings(options: Mapping[str, Any], env: Mapping[str, str]) -> ClientSettings:
    """Build client settings from merged file+flag options (keys are flag names)."""
    _check_keys(options, _CLIENT_KEYS, "client")
    if "connect-addr" not in options:
        raise ConfigError("--connect-addr: required (the server's HOST:PORT)")
    kwargs = _common(options, env)
    kwargs["connect"] = parse_host_port("--connect-addr", options["connect-addr"])
    if options.get("tun-name") is not None:
        name = str(options["tun-name"])
        if not name or len(name) > 15 or "/" in name or any(c.isspace() for c in name):
            raise ConfigError(f"--tun-name: {name!r} is not a valid interface name "
                              "(1-15 characters, no '/' or spaces)")
        kwargs["tun_name"] = name
    if "mux" in options:
        kwargs["mux"] = _int_in("--mux", options["mux"], 1, MAX_MUX)
    if options.get("wan"):
        kwargs["wans"] = _ifname_patterns("--wan", options["wan"])
    if options.get("exclude-wan"):
        kwargs["exclude_wans"] = _ifname_patterns("--exclude-wan", options["exclude-wan"])
    if "rescan-interval" in options:
        kwargs["rescan_interval"] = _seconds("--rescan-interval", options["rescan-interval"],
                                             1, 3600)
    return ClientSettings(**kwargs)

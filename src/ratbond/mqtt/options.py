"""The ``--mqtt-*`` flags (the Go original's names) and their validated settings."""

from __future__ import annotations

import argparse
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Keys a config file (or a signed settings document) may use for MQTT, on both ends.
MQTT_KEYS = frozenset({"mqtt-broker-addr", "mqtt-username", "mqtt-password",
                       "mqtt-password-file", "mqtt-ca", "mqtt-name"})
DEFAULT_MQTT_PORT = 1883
MAX_PASSWORD_BYTES = 4096
#: A name is one topic level: no wildcards, separators or control characters.
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class MqttSettings:
    """Where and as whom to publish; ``name`` is this end's level in the topic tree."""

    host: str
    port: int
    name: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def default_name() -> str:
    """This machine's host name, cut to what a topic level may hold."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0])[:64]
    return cleaned or "ratbond"


def check_name(flag: str, value: object) -> str:
    from ratbond.config import ConfigError

    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"{flag}: {value!r} is not a name for the topic tree (1-64 "
                          "letters, digits, '.', '_' or '-')")
    return value


def _read_password(flag: str, path: str) -> str:
    from ratbond.config import ConfigError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path!r}: {exc.strerror or exc}") from None
    if len(data) > MAX_PASSWORD_BYTES:
        raise ConfigError(f"{flag}: {path!r} is larger than {MAX_PASSWORD_BYTES} bytes; is it "
                          "the right file?")
    text = data.decode("utf-8", errors="replace").rstrip("\r\n")
    if not text:
        raise ConfigError(f"{flag}: {path!r} is empty")
    return text


def mqtt_settings(options: Mapping[str, Any],
                  name: Callable[[str], str]) -> tuple[MqttSettings | None, list[str]]:
    """The MQTT settings in ``options`` (None without ``mqtt-broker-addr``) and warnings.

    ``name(key)`` gives the label an error uses (``--mqtt-ca`` or ``FILE: mqtt-ca``).
    """
    from ratbond.config import ConfigError, parse_host_port
    from ratbond.crypto.secret import permission_warning

    given = [key for key in MQTT_KEYS if options.get(key) is not None]
    if "mqtt-broker-addr" not in given:
        if given:
            key = sorted(given)[0]
            raise ConfigError(f"{name(key)}: needs --mqtt-broker-addr HOST:PORT")
        return None, []
    from ratbond.mqtt.broker import INSTALL_HINT, mqtt_available

    if not mqtt_available():
        raise ConfigError(INSTALL_HINT)
    addr = parse_host_port(name("mqtt-broker-addr"), options["mqtt-broker-addr"],
                           example_port=DEFAULT_MQTT_PORT, example_host="broker.example.net")
    warnings: list[str] = []
    username = options.get("mqtt-username")
    if username is not None and (not isinstance(username, str) or not username):
        raise ConfigError(f"{name('mqtt-username')}: {username!r} is not a user name")
    password = options.get("mqtt-password")
    password_file = options.get("mqtt-password-file")
    if password is not None and password_file is not None:
        raise ConfigError(f"{name('mqtt-password')}: give it or {name('mqtt-password-file')}, "
                          "not both")
    if password is not None and not isinstance(password, str):
        raise ConfigError(f"{name('mqtt-password')}: not a string (write it in quotes)")
    if password_file is not None:
        if not isinstance(password_file, str):
            raise ConfigError(f"{name('mqtt-password-file')}: not a file name")
        password = _read_password(name("mqtt-password-file"), password_file)
        warnings.append(permission_warning(password_file, name("mqtt-password-file")) or "")
    if password is not None and username is None:
        raise ConfigError(f"{name('mqtt-password')}: needs {name('mqtt-username')}")
    ca_file: Path | None = None
    ca = options.get("mqtt-ca")
    if ca is not None:
        if not isinstance(ca, str) or not Path(ca).is_file():
            raise ConfigError(f"{name('mqtt-ca')}: {ca!r} is not a readable CA certificate "
                              "file (PEM)")
        ca_file = Path(ca)
    mqtt_name = options.get("mqtt-name")
    chosen = default_name() if mqtt_name is None else check_name(name("mqtt-name"), mqtt_name)
    settings = MqttSettings(host=addr.host, port=addr.port, name=chosen, username=username,
                            password=password, ca_file=ca_file)
    return settings, [w for w in warnings if w]


def add_mqtt_flags(p: argparse.ArgumentParser, *, with_name: bool = True) -> None:
    """The ``--mqtt-*`` flags; absent ones stay absent so a config file's value survives."""
    s = argparse.SUPPRESS
    group = p.add_argument_group("fleet on MQTT (docs/fleet.md)")
    group.add_argument("--mqtt-broker-addr", metavar="HOST:PORT", default=s,
                       help="publish status and events to this MQTT broker (needs the 'mqtt' "
                            "extra: pip install 'ratbond[mqtt]')")
    group.add_argument("--mqtt-username", metavar="USER", default=s, help="MQTT user name")
    group.add_argument("--mqtt-password", metavar="PASSWORD", default=s,
                       help="MQTT password (prefer --mqtt-password-file: the command line is "
                            "visible)")
    group.add_argument("--mqtt-password-file", metavar="FILE", default=s,
                       help="read the MQTT password from FILE")
    group.add_argument("--mqtt-ca", metavar="FILE", default=s,
                       help="connect with TLS, trusting the CA certificate(s) in FILE")
    if with_name:
        group.add_argument("--mqtt-name", metavar="NAME", default=s,
                           help="this end's name in the topic tree (default: the host name)")

"""``ratbond connectaggregator`` and ``ratbond fleet [genkey]``: argument parsing only."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from ratbond.config import ConfigError, parse_duration
from ratbond.mqtt.options import MqttSettings, add_mqtt_flags, check_name, mqtt_settings

DEFAULT_STATE_DIR = "/run/ratbond-aggregator"
#: The fleet page's default: loopback, next to the status pages' 8091/8092.
DEFAULT_FLEET_HTTP = "127.0.0.1:8093"


def _mqtt(args: argparse.Namespace, name: str | None = None) -> MqttSettings:
    options: dict[str, Any] = {key.replace("_", "-"): value for key, value in vars(args).items()
                               if key.startswith("mqtt_")}
    if name is not None:
        options["mqtt-name"] = name
    if "mqtt-broker-addr" not in options:
        raise ConfigError("--mqtt-broker-addr: required (the broker's HOST:PORT, e.g. "
                          "broker.example.net:1883)")
    settings, warnings = mqtt_settings(options, lambda key: f"--{key}")
    for warning in warnings:
        print(f"ratbond: warning: {warning}", file=sys.stderr)
    assert settings is not None
    return settings


def _logging(args: argparse.Namespace, ident: str) -> None:
    from ratbond.logs import setup_logging

    setup_logging("debug" if args.debug else "info", syslog=not args.nosyslog, ident=ident)


def _run_aggregator(args: argparse.Namespace) -> int:
    from ratbond.mqtt.aggregator import Aggregator, router_id
    from ratbond.mqtt.signing import KeyFileError, SettingsVerifier, load_public_key

    rid = check_name("--router-id", args.router_id) if args.router_id else router_id()
    mqtt = _mqtt(args, rid)
    try:
        key = load_public_key(Path(args.fleet_key))
    except KeyFileError as exc:
        raise ConfigError(f"--fleet-key: {exc}") from None
    state_dir = Path(args.state_dir)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--state-dir: cannot create {state_dir}: {exc.strerror}") from None
    interval = parse_duration("--stats-interval", args.stats_interval, 1, 3600)
    child_args = [flag for flag, on in (("--debug", args.debug), ("--nosyslog", args.nosyslog))
                  if on]
    _logging(args, "ratbond-aggregator")
    aggregator = Aggregator(mqtt, SettingsVerifier(key, rid), state_dir, child_args,
                            hello_interval=interval)
    aggregator.stop_on_signals()
    return aggregator.run()


def _run_fleet(args: argparse.Namespace) -> int:
    import signal

    from ratbond.mqtt.fleet import run_fleet
    from ratbond.mqtt.signing import KeyFileError, load_private_key

    mqtt = _mqtt(args)
    if args.settings_dir is None or args.key is None:
        raise ConfigError("--settings-dir and --key: required (a directory of "
                          "<router-id>.toml files and the fleet's private key)")
    settings_dir = Path(args.settings_dir)
    if not settings_dir.is_dir():
        raise ConfigError(f"--settings-dir: {settings_dir} is not a directory")
    try:
        key = load_private_key(Path(args.key))
    except KeyFileError as exc:
        raise ConfigError(f"--key: {exc}") from None
    validity = parse_duration("--validity", args.validity, 60, 366 * 86400)
    http, token = _fleet_http(args)
    _logging(args, "ratbond-fleet")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _s, _f: stopping.set())
    return run_fleet(mqtt, key, settings_dir, watch=args.watch, validity=validity,
                     stopping=stopping, http=http, http_token=token)


def _fleet_http(args: argparse.Namespace) -> tuple[tuple[str, int] | None, str | None]:
    """``--http-listen-addr`` (or ``disable``) and ``--http-token-file``, as the status
    page's: the token file is read now, so a typo stops the start."""
    from ratbond.config import parse_host_port
    from ratbond.crypto.secret import permission_warning
    from ratbond.status.server import TokenError, load_token

    text = str(args.http_listen_addr).strip()
    if text.lower() in ("disable", "disabled", "off", ""):
        if args.http_token_file is not None:
            raise ConfigError("--http-token-file: given, but --http-listen-addr is "
                              f"{args.http_listen_addr!r} (the page is off)")
        return None, None
    address = parse_host_port("--http-listen-addr", text, default_host="127.0.0.1",
                              example_port=8093, example_host="127.0.0.1")
    token = None
    if args.http_token_file is not None:
        try:
            token = load_token(Path(args.http_token_file))
        except TokenError as exc:
            raise ConfigError(f"--http-token-file: {exc}") from None
        warning = permission_warning(args.http_token_file, "--http-token-file")
        if warning:
            print(f"ratbond: warning: {warning}", file=sys.stderr)
    return (address.host, address.port), token


def _run_fleet_genkey(args: argparse.Namespace) -> int:
    from ratbond.mqtt.signing import KeyFileError, write_keypair

    try:
        public = write_keypair(Path(args.output))
    except (KeyFileError, OSError) as exc:
        print(f"ratbond fleet genkey: {exc}", file=sys.stderr)
        return 1
    print(f"ratbond fleet genkey: wrote the private key to {args.output} (mode 0600, keep it "
          f"on the fleet controller) and the public key to {public} (give it to every router "
          "as --fleet-key)", file=sys.stderr)
    return 0


def _add_log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="debug logging")
    p.add_argument("--nosyslog", action="store_true", help="log to stderr instead of syslog")


def add_fleet_parsers(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "connectaggregator", help="run the client with settings the fleet signs (MQTT)",
        usage="%(prog)s --mqtt-broker-addr=HOST:PORT --fleet-key=PUB [options]",
        description="Enrol this router with the fleet over MQTT, run 'ratbond client' with "
                    "the settings signed by the fleet key, restart it when they change "
                    "(docs/fleet.md).")
    add_mqtt_flags(p, with_name=False)
    p.add_argument("--fleet-key", metavar="PUB", required=True,
                   help="the fleet's public key (the .pub of 'ratbond fleet genkey'); "
                        "settings not signed by it are refused")
    p.add_argument("--router-id", metavar="ID", default=None,
                   help="this router's id (default: /etc/machine-id hashed, else the first "
                        "MAC address hashed)")
    p.add_argument("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR,
                   help=f"where the client's config file is written (default "
                        f"{DEFAULT_STATE_DIR}, mode 0700)")
    p.add_argument("--stats-interval", metavar="DURATION", default="15",
                   help="hello/stats period (default 15 s, as the Go original)")
    _add_log_flags(p)
    p.set_defaults(handler=_run_aggregator)

    f: argparse.ArgumentParser = sub.add_parser(
        "fleet", help="serve signed settings to routers and show the fleet (MQTT)",
        usage="%(prog)s --mqtt-broker-addr=HOST:PORT --settings-dir=DIR --key=PRIV [--watch]"
              "\n       %(prog)s genkey --output=PRIV",
        description="Publish DIR/<router-id>.toml, signed, to each router; --watch shows "
                    "every router and server seen on the status topics (docs/fleet.md).")
    add_mqtt_flags(f)
    f.add_argument("--settings-dir", metavar="DIR", default=None,
                   help="one <router-id>.toml per router (the client's config-file keys)")
    f.add_argument("--key", metavar="PRIV", default=None, help="the fleet's private key")
    f.add_argument("--watch", action="store_true", help="draw the fleet table every 2 s")
    f.add_argument("--http-listen-addr", metavar="HOST:PORT", default=DEFAULT_FLEET_HTTP,
                   help=f"the fleet page, /fleet.json, /fleet.txt and /metrics (default "
                        f"{DEFAULT_FLEET_HTTP}; 'disable' turns it off)")
    f.add_argument("--http-token-file", metavar="FILE", default=None,
                   help="require the bearer token in FILE on every endpoint (as the status "
                        "page's flag)")
    f.add_argument("--validity", metavar="DURATION", default=str(30 * 86400),
                   help="how long a signed document stays valid (default 30 days; re-signed "
                        "at half of it)")
    _add_log_flags(f)
    f.set_defaults(handler=_run_fleet)
    fsub = f.add_subparsers(dest="fleet_command", metavar="COMMAND")
    g = fsub.add_parser("genkey", help="make the fleet's Ed25519 key pair",
                        description="Write a new fleet key: PRIV (mode 0600) and PRIV.pub; "
                                    "never overwrites.")
    g.add_argument("--output", "-o", metavar="PRIV", required=True,
                   help="the private key file; the public key goes to PRIV.pub")
    g.set_defaults(handler=_run_fleet_genkey)

"""Settings: upstream-compatible flags, TOML files, and clear errors for bad values."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from ratbond.cli import _options, build_parser, main
from ratbond.config import (
    KCP_MTU,
    TUN_MTU,
    ConfigError,
    HostPort,
    client_settings,
    parse_host_port,
    server_settings,
)


def parse(argv: list[str]) -> dict[str, object]:
    return _options(build_parser().parse_args(argv))


def test_original_server_command_line_is_accepted() -> None:
    opts = parse(["server", "--listen-addr=0.0.0.0:12345", "--tunnel-id=660", "--aes",
                  "--secret=s3cret", "--tunnel-ip=10.10.10.0/30", "--balance-roundrobin",
                  "--http-listen-addr=0.0.0.0:8091", "--debug", "--nosyslog"])
    s = server_settings(opts, {})
    assert s.listen == HostPort("0.0.0.0", 12345)
    assert s.tunnel_id == 660 and s.server_tun_name == "tun660"
    assert s.aes and s.secret is not None and s.secret.reveal() == b"s3cret"
    assert s.balance == "roundrobin"
    assert s.http_listen == HostPort("0.0.0.0", 8091)
    assert s.log_level == "debug" and not s.syslog
    assert s.server_tunnel_address == ipaddress.IPv4Interface("10.10.10.2/30")


def test_original_client_command_line_is_accepted() -> None:
    opts = parse(["client", "--connect-addr=1.1.1.1:12345", "--tunnel-id=660", "--mux=3",
                  "--tun-name=bond0", "--balance-consistent", "--http-listen-addr=disable",
                  "--trace"])
    c = client_settings(opts, {})
    assert c.connect == HostPort("1.1.1.1", 12345)
    assert c.mux == 3 and c.client_tun_name == "bond0"
    assert c.balance == "consistent"
    assert c.http_listen is None
    assert c.log_level == "trace"
    assert c.client_tunnel_address == ipaddress.IPv4Interface("10.10.10.1/30")


def test_client_takes_the_first_host_and_the_server_the_second_like_the_original() -> None:
    c = client_settings({"connect-addr": "h:1", "tunnel-ip": "172.16.0.0/24"}, {})
    assert str(c.client_tunnel_address) == "172.16.0.1/24"
    assert str(c.server_tunnel_address) == "172.16.0.2/24"
    assert str(c.client_tunnel_address6) == "fd00:7262:6f6e:6400::1/64"
    assert str(c.server_tunnel_address6) == "fd00:7262:6f6e:6400::2/64"


def test_defaults_are_safe() -> None:
    s = server_settings({}, {})
    assert s.http_listen == HostPort("127.0.0.1", 8091)  # status is not public by default
    assert s.secret is None and not s.aes
    assert s.dead_after == 2.0 and s.hello_interval == 0.5


def test_mtu_budget_fits_a_1500_byte_wan_without_fragmentation() -> None:
    # outer IPv6 40 + UDP 8 + header 16 + tag 16 + KCP 24 + DATA 5 + inner packet
    assert 40 + 8 + 16 + 16 + KCP_MTU == 1500
    assert 40 + 8 + 16 + 16 + 24 + 5 + TUN_MTU == 1500
    assert TUN_MTU >= 1280  # IPv6 inside the tunnel needs at least 1280


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"aes": True}, "--aes needs a secret"),
        ({"tunnel-ip": "10.10.10.0/31"}, "--tunnel-ip: '10.10.10.0/31' is too small"),
        ({"tunnel-ip": "banana"}, "--tunnel-ip: 'banana' is not an IPv4 network"),
        ({"tunnel-id": "-1"}, "--tunnel-id: -1 is outside the allowed range 0..99999"),
        ({"tunnel-id": "x"}, "--tunnel-id: 'x' is not a whole number"),
        ({"listen-addr": "0.0.0.0"}, "--listen-addr: '0.0.0.0' has no port"),
        ({"listen-addr": "0.0.0.0:70000"}, "port 70000 in '0.0.0.0:70000' is outside 1..65535"),
        ({"listen-addr": "0.0.0.0:http"}, "port 'http' in '0.0.0.0:http' is not a number"),
        ({"http-listen-addr": "localhost"}, "--http-listen-addr: 'localhost' has no port"),
        ({"balance": "random"},
         "--balance: 'random' is not one of adaptive, consistent, roundrobin, redundant"),
        ({"dead-after": "1", "hello-interval": "2"}, "--dead-after: 1 s must be at least twice"),
        ({"dead-after": "0.8"}, "--dead-after: 0.8 s must be at least twice --hello-interval"),
        ({"dead-after": "soon"}, "--dead-after: 'soon' is not a duration"),
        ({"kcp-window": "8"}, "--kcp-window: 8 is outside the allowed range 32..65535"),
        ({"tun-name": "x"}, "--tun-name: not a server setting"),
        ({"secret": "a", "secret-file": "/x"}, "give either --secret or --secret-file"),
    ],
)
def test_bad_server_values_name_flag_value_and_what_is_allowed(
        options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        server_settings(options, {})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({}, "--connect-addr: required"),
        ({"connect-addr": "h:1", "mux": "0"}, "--mux: 0 is outside the allowed range 1..16"),
        ({"connect-addr": "h:1", "tun-name": "a" * 16}, "is not a valid interface name"),
        ({"connect-addr": "h:1", "wan": ["eth 0"]}, "--wan: 'eth 0' is not an interface name"),
        ({"connect-addr": "[::1:1"}, "is not [IPV6]:PORT"),
    ],
)
def test_bad_client_values(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        client_settings(options, {})
    assert fragment in str(info.value)


def test_ipv6_host_port() -> None:
    assert parse_host_port("--x", "[2001:db8::1]:443") == HostPort("2001:db8::1", 443)
    assert str(HostPort("2001:db8::1", 443)) == "[2001:db8::1]:443"
    assert parse_host_port("--x", ":8091", default_host="0.0.0.0") == HostPort("0.0.0.0", 8091)


def test_secret_from_file_and_environment(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    s = server_settings({"secret-file": str(secret_file), "aes": True}, {})
    assert s.secret is not None and s.secret.reveal() == b"from-file"
    s = server_settings({"aes": True}, {"RATBOND_SECRET": "from-env"})
    assert s.secret is not None and s.secret.reveal() == b"from-env"
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        server_settings({"secret-file": str(empty)}, {})
    with pytest.raises(ConfigError, match="cannot read --secret-file"):
        server_settings({"secret-file": str(tmp_path / "missing")}, {})


def test_secret_never_in_repr_or_errors() -> None:
    s = server_settings({"secret": "hunter2-very-secret"}, {})
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.secret)
    with pytest.raises(ConfigError) as info:
        server_settings({"secret": "hunter2-very-secret", "tunnel-id": "x"}, {})
    assert "hunter2" not in str(info.value)


def test_toml_file_is_overridden_by_flags(tmp_path: Path) -> None:
    config = tmp_path / "ratbond.toml"
    config.write_text('connect_addr = "192.0.2.1:999"\nmux = 2\nwan = ["wan*"]\n'
                      'tunnel-id = 7\n')
    opts = parse(["client", f"--config={config}", "--mux=4"])
    c = client_settings(opts, {})
    assert c.connect == HostPort("192.0.2.1", 999)
    assert c.mux == 4  # the flag wins
    assert c.wans == ("wan*",)
    assert c.tunnel_id == 7


def test_bad_toml_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("mux = = 3\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        parse(["client", f"--config={config}"])


def test_main_reports_config_errors_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "--aes"]) == 2
    err = capsys.readouterr().err
    assert "ratbond server: --aes needs a secret" in err


def test_unknown_flag_is_rejected_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["client", "--conect-addr=1.2.3.4:5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ratbond client ")  # the subcommand's usage, not the top's
    assert "unknown flag --conect-addr (did you mean --connect-addr?)" in err

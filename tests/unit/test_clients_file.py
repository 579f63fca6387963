"""The clients file: what a valid one gives, and one test per way of getting it wrong."""

from __future__ import annotations

import ipaddress
import os
import struct
from pathlib import Path

import pytest

from ratbond.clients import AllowedIps, ClientsFileError, load_clients

GOOD = """
[[client]]
name = "site-a"
secret-file = "{dir}/a.key"
tunnel-id = 661
tunnel-ip = "10.10.11.0/30"
tunnel-ip6 = "fd00:7262:6f6e:6401::/64"
routes = ["192.168.1.0/24"]

[[client]]
name = "site-b"
secret = "b-secret"
tunnel_id = 662
tunnel_ip = "10.10.12.0/30"
"""


def write(tmp_path: Path, text: str, *, key: bytes = b"a-secret\n") -> str:
    keyfile = tmp_path / "a.key"
    keyfile.write_bytes(key)
    os.chmod(keyfile, 0o600)
    path = tmp_path / "clients.toml"
    path.write_text(text.format(dir=tmp_path))
    return str(path)


def two_clients(tmp_path: Path, extra_b: str = "") -> str:
    return write(tmp_path, GOOD + extra_b)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ClientsFileError) as info:
        load_clients(write(tmp_path, text))
    return str(info.value)


def test_a_valid_file_gives_every_entry_with_its_defaults(tmp_path: Path) -> None:
    loaded = load_clients(two_clients(tmp_path))
    a, b = loaded.clients
    assert (a.name, a.tunnel_id, a.tun_name) == ("site-a", 661, "tun661")
    assert a.secret.reveal() == b"a-secret"  # the file's trailing newline is not the secret
    # the order of --tunnel-ip: client first host, server second
    assert str(a.client_address) == "10.10.11.1/30" and str(a.server_address) == "10.10.11.2/30"
    assert str(a.server_address6) == "fd00:7262:6f6e:6401::2/64"
    assert a.routes == (ipaddress.ip_network("192.168.1.0/24"),)
    # allowed-ips default: the tunnel subnets and the routes
    assert [str(n) for n in a.allowed_ips.networks] == [
        "10.10.11.0/30", "fd00:7262:6f6e:6401::/64", "192.168.1.0/24"]
    assert b.tunnel_ip6 is None and b.server_address6 is None
    assert b.secret.reveal() == b"b-secret"
    assert loaded.warnings == ()
    assert set(loaded.by_name()) == {"site-a", "site-b"}


def test_a_readable_secret_file_is_a_warning_naming_the_client(tmp_path: Path) -> None:
    path = two_clients(tmp_path)
    os.chmod(tmp_path / "a.key", 0o644)
    (warning,) = load_clients(path).warnings
    assert "client 'site-a'" in warning and "chmod 600" in warning


def v4(source: str) -> bytes:
    return bytes([0x45, 0, 0, 20]) + bytes(8) + ipaddress.IPv4Address(source).packed + bytes(4)


def v6(source: str) -> bytes:
    return (bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", 0, 17, 64)
            + ipaddress.IPv6Address(source).packed + bytes(16))


def test_allowed_ips_match_sources_of_both_families_only() -> None:
    allowed = AllowedIps([ipaddress.ip_network("10.10.11.0/30"),
                          ipaddress.ip_network("192.168.1.0/24"),
                          ipaddress.ip_network("fd00:1::/64")])
    assert allowed.permits(v4("10.10.11.2")) and allowed.permits(v4("192.168.1.77"))
    assert not allowed.permits(v4("10.10.11.4")) and not allowed.permits(v4("10.10.12.2"))
    assert allowed.permits(v6("fd00:1::2")) and not allowed.permits(v6("fd00:2::2"))
    assert allowed.permits(v6("fe80::1"))  # link-local: only ever valid on its own TUN
    assert not allowed.permits(v6("fec0::1"))  # just outside fe80::/10
    assert not allowed.permits(b"\x45" + bytes(10))  # too short to have a source
    assert not allowed.permits(bytes([0x60]) + bytes(30))  # IPv6 header cut short
    assert not allowed.permits(bytes([0x10]) + bytes(40))  # neither IPv4 nor IPv6
    assert not AllowedIps(()).permits(v4("10.10.11.2"))


def test_explicit_allowed_ips_replace_the_default(tmp_path: Path) -> None:
    text = GOOD.replace('routes = ["192.168.1.0/24"]',
                        'routes = ["192.168.1.0/24"]\nallowed-ips = ["10.10.11.2/32"]')
    a = load_clients(write(tmp_path, text)).clients[0]
    assert a.allowed_ips.permits(v4("10.10.11.2"))
    assert not a.allowed_ips.permits(v4("192.168.1.5"))


@pytest.mark.parametrize(("change", "expected"), [
    (('name = "site-b"', 'name = "site-a"'),
     "client 'site-a': name: 'site-a' is used by another client"),
    (("tunnel_id = 662", "tunnel_id = 661"),
     "client 'site-b': tunnel-id: 661 is also client 'site-a''s"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.11.0/29"'),
     "client 'site-b': tunnel-ip: '10.10.11.0/29' overlaps client 'site-a'"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/30"\nroutes = ["192.168.1.128/25"]'),
     "overlaps client 'site-a''s routes '192.168.1.0/24'"),
    (('secret = "b-secret"', 'secret = "a-secret"'),
     "client 'site-b': secret: the same as client 'site-a''s"),
    (("tunnel_id = 662", "tunnel_id = 100000"),
     "client 'site-b': tunnel-id: 100000 is not a whole number in 0..99999"),
    (("tunnel_id = 662", 'tunnel_id = "x"'), "tunnel-id: 'x' is not a whole number"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/31"'),
     "client 'site-b': tunnel-ip: '10.10.12.0/31' is too small; a /30"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "fd00::/64"'),
     "tunnel-ip: 'fd00::/64' is not an IPv4 network"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.300.0/30"'),
     "tunnel-ip: '10.10.300.0/30' is not a network like"),
    (('tunnel_ip = "10.10.12.0/30"', "tunnel_ip = 5"),
     "tunnel-ip: 5 is not a network in quotes"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/30"\ntunnel-ip6 = "fd00:9::/127"'),
     "tunnel-ip6: 'fd00:9::/127' is too small"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/30"\nroutes = ["fd00:9::/64"]'),
     "routes: 'fd00:9::/64' is IPv6 but the client has no tunnel-ip6"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/30"\nroutes = ["0.0.0.0/0"]'),
     "routes: '0.0.0.0/0' is everything"),
    (('tunnel_ip = "10.10.12.0/30"', 'tunnel_ip = "10.10.12.0/30"\nroutes = 7'),
     "routes: 7 is not a list of networks"),
    (('name = "site-b"', 'name = "site b"'), "name: 'site b' is not a client name"),
    (('name = "site-b"', 'nmae = "site-b"'), "client #2: nmae: unknown key; did you mean name?"),
    (('name = "site-b"', ""), "client #2: name: required"),
    (("tunnel_id = 662", ""), "client 'site-b': tunnel-id: required"),
    (('secret = "b-secret"', ""), "client 'site-b': secret-file: required (or secret)"),
    (('secret = "b-secret"', 'secret = "b"\nsecret-file = "/x"'),
     "client 'site-b': secret and secret-file: give one, not both"),
    (('secret = "b-secret"', 'secret-file = "/nonexistent/b.key"'),
     "client 'site-b': cannot read --secret-file '/nonexistent/b.key'"),
    (('secret = "b-secret"', "secret = 5"), "client 'site-b': secret: 5 is not a string"),
    (("tunnel_id = 662", "tunnel_id = 662\ntunnel-id = 663"),
     "client 'site-b': tunnel-id: the same key is written twice"),
])
def test_every_bad_entry_names_the_client_the_key_and_the_value(
        tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    message = error_of(tmp_path, GOOD.replace(*change))
    assert expected in message
    assert str(tmp_path / "clients.toml") in message


@pytest.mark.parametrize(("text", "expected"), [
    ("", "no [[client]] table"),
    ("listen-addr = '0.0.0.0:1'\n", "listen-addr: unknown key; the file holds [[client]]"),
    ("client = 3\n", "write each client as a [[client]] table"),
    ("[[client\n", "is not valid TOML"),
])
def test_a_file_without_client_tables_says_what_it_needs(tmp_path: Path, text: str,
                                                         expected: str) -> None:
    assert expected in error_of(tmp_path, text)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClientsFileError, match=r"--clients: cannot read .*nope.toml"):
        load_clients(str(tmp_path / "nope.toml"))


def test_secrets_never_show_in_the_entry(tmp_path: Path) -> None:
    a = load_clients(two_clients(tmp_path)).clients[0]
    assert "a-secret" not in repr(a)


def test_server_settings_take_the_clients_file_and_apply_aes_to_all(tmp_path: Path) -> None:
    from ratbond.config import server_settings

    settings = server_settings({"clients": two_clients(tmp_path), "aes": True},
                               {"RATBOND_SECRET": "ignored with a clients file"})
    assert settings.clients is not None and settings.aes and settings.secret is None
    assert [c.name for c in settings.clients.clients] == ["site-a", "site-b"]


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("secret", "s", "--clients and --secret: give one"),
    ("secret-file", "/etc/x.key", "--clients and --secret-file: give one"),
    ("tunnel-id", 0, "--tunnel-id: not used with --clients"),
    ("tunnel-ip", "10.1.0.0/30", "--tunnel-ip: not used with --clients"),
    ("route", ["192.168.5.0/24"], "--route: not used with --clients"),
])
def test_single_client_flags_with_a_clients_file_are_refused(
        tmp_path: Path, flag: str, value: object, expected: str) -> None:
    from ratbond.config import ConfigError, server_settings

    with pytest.raises(ConfigError, match=expected):
        server_settings({"clients": two_clients(tmp_path), flag: value}, {})


def test_a_bad_clients_file_stops_the_start_with_its_message(tmp_path: Path) -> None:
    from ratbond.config import ConfigError, server_settings

    path = write(tmp_path, GOOD.replace("tunnel_id = 662", "tunnel_id = 661"))
    with pytest.raises(ConfigError, match="tunnel-id: 661 is also client 'site-a''s"):
        server_settings({"clients": path}, {})


def test_a_reload_plan_keeps_unchanged_clients_and_redoes_changed_ones(tmp_path: Path) -> None:
    from ratbond.runtime.clients import plan_reload

    running = load_clients(two_clients(tmp_path)).by_name()
    text = (GOOD.replace('secret = "b-secret"', 'secret = "b-secret-2"')  # site-b changed
            + '\n[[client]]\nname = "site-c"\nsecret = "c"\ntunnel-id = 663\n'
              'tunnel-ip = "10.10.13.0/30"\n')
    plan = plan_reload(running, load_clients(write(tmp_path, text)))
    assert plan.unchanged == ("site-a",)
    assert [e.name for e in plan.changed] == ["site-b"]
    assert [e.name for e in plan.added] == ["site-c"]
    assert plan.dropped == ("site-b",)
    assert [e.name for e in plan.opened] == ["site-b", "site-c"]
    only_a = GOOD.split("[[client]]")[1]
    plan = plan_reload(running, load_clients(write(tmp_path, "[[client]]" + only_a)))
    assert plan.removed == ("site-b",) and plan.unchanged == ("site-a",)

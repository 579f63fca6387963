"""The TOML config file: every key checked like its flag, unknown keys named with a hint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ratbond.cli import _options, build_parser, main
from ratbond.config import (
    ALL_KEYS,
    ClientSettings,
    ConfigError,
    HostPort,
    LinkRateMbps,
    ServerSettings,
    client_settings,
    server_settings,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ratbond.toml"
    path.write_text(text)
    return str(path)


def from_file(tmp_path: Path, text: str, *flags: str) -> ClientSettings:
    path = write(tmp_path, 'connect-addr = "h:1"\n' + text)
    return client_settings(_options(build_parser().parse_args(
        ["client", f"--config={path}", *flags])), {})


def server_from_file(tmp_path: Path, text: str) -> ServerSettings:
    path = write(tmp_path, text)
    return server_settings(_options(build_parser().parse_args(
        ["server", f"--config={path}"])), {})


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        from_file(tmp_path, text)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('aes = "no"\n', "aes: 'no' is not true or false (write true or false without quotes)"),
        ("aes = 1\n", "aes: 1 is not true or false"),
        ('debug = "yes"\n', "debug: 'yes' is not true or false"),
        ("nosyslog = 0\n", "nosyslog: 0 is not true or false"),
        ("mux = 2.5\n", "mux: 2.5 is not a whole number (1..16)"),
        ("mux = true\n", "mux: true is not a whole number (1..16)"),
        ("mux = 0\n", "mux: 0 is outside the allowed range 1..16"),
        ('mux = "many"\n', "mux: 'many' is not a whole number (1..16)"),
        ("tunnel_id = 100000\n", "tunnel_id: 100000 is outside the allowed range 0..99999"),
        ("kcp-window = [1024]\n", "kcp-window: [1024] is not a whole number (32..65535)"),
        ("dead-after = true\n", "dead-after: true is not a duration (e.g. 10, 2.5s, 800ms)"),
        ("hello-interval = 0\n", "hello-interval: 0 is outside the allowed range 0.1..60 s"),
        ("rescan_interval = \"1h\"\n", "rescan_interval: '1h' is not a duration"),
        ("tunnel-ip = 10\n", "tunnel-ip: 10 is not a string (write it in quotes)"),
        ("secret = 1234\n", "secret: 1234 is not a string (write it in quotes)"),
        ('cipher = "aes"\n', "cipher: 'aes' is not one of chacha20-poly1305, aes-256-gcm"),
        ("cipher = 1\n", "cipher: 1 is not one of chacha20-poly1305, aes-256-gcm"),
        ('balance = "fastest"\n', "balance: 'fastest' is not one of adaptive, consistent, "
         "roundrobin, redundant"),
        ('duplicate = "all"\n', "duplicate: 'all' is not one of none, small, ef"),
        ("wan = [1]\n", "wan: 1 is not an interface name or glob"),
        ("wan = 3\n", "wan: expected interface names, got 3"),
        ('http-listen-addr = "8091"\n', "http-listen-addr: '8091' has no host; expected "
         "HOST:PORT, e.g. 127.0.0.1:8091"),
        ('link-rate = ["wan1"]\n', "link-rate: 'wan1' is not IFNAME=DOWN/UP in Mbit/s"),
        ('link-rate = { wan1 = "x" }\n', "link-rate: wan1 = 'x': a rate must be a number of "
         "Mbit/s in 0.01..100000"),
        ("link-rate = { wan1 = [1, 2, 3] }\n", "link-rate: wan1 = [1, 2, 3]: expected DOWN/UP "
         "or DOWN in Mbit/s"),
        ("dead-after = 0.8\n", "dead-after: 0.8 s must be at least twice --hello-interval "
         "(0.5 s)"),
    ],
)
def test_bad_values_name_file_key_value_and_what_is_allowed(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ratbond.toml"
    assert error_of(tmp_path, text).startswith(f"{path}: {message}")


def test_aes_no_does_not_turn_encryption_on(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'aes = "no"\nsecret = "s"\n')
    assert main(["server", f"--config={path}"]) == 2
    assert capsys.readouterr().err == (f"ratbond server: {path}: aes: 'no' is not true or "
                                       "false (write true or false without quotes)\n")
    assert server_from_file(tmp_path, 'aes = false\nsecret = "s"\n').aes is False
    assert server_from_file(tmp_path, 'aes = true\nsecret = "s"\n').aes is True


def test_every_flag_value_type_is_accepted(tmp_path: Path) -> None:
    c = from_file(tmp_path, """
tunnel_id = 7
tunnel-ip = "172.16.0.0/24"
tunnel-ip6 = "none"
secret = "s3cret"
aes = true
cipher = "aes-256-gcm"
balance = "adaptive"
duplicate = "small"
http-listen-addr = "disable"
debug = true
nosyslog = true
hello-interval = "800ms"
dead_after = 4
kcp-engine = "python"
kcp-window = "512"
tun-name = "bond0"
mux = 2
wan = "wan*"
exclude-wan = ["wan9"]
backup-wan = ["lte*"]
rescan-interval = 30.5

[link-rate]
wan1 = "30/10"
wan2 = 20
lte0 = [5, 1.5]
""")
    assert c.tunnel_id == 7 and str(c.tunnel_ip) == "172.16.0.0/24" and c.tunnel_ip6 is None
    assert c.aes and c.secret is not None and c.cipher == "aes-256-gcm"
    assert (c.balance, c.duplicate) == ("adaptive", "small")
    assert c.http_listen is None and c.log_level == "debug" and not c.syslog
    assert (c.hello_interval, c.dead_after, c.rescan_interval) == (0.8, 4.0, 30.5)
    assert (c.kcp_engine, c.kcp_window) == ("python", 512)
    assert (c.client_tun_name, c.mux) == ("bond0", 2)
    assert (c.wans, c.exclude_wans, c.backup_wans) == (("wan*",), ("wan9",), ("lte*",))
    assert dict(c.link_rates) == {"wan1": LinkRateMbps(30, 10), "wan2": LinkRateMbps(20, 20),
                                  "lte0": LinkRateMbps(5, 1.5)}
    assert c.connect == HostPort("h", 1)


def test_link_rate_as_a_list_of_flag_values(tmp_path: Path) -> None:
    c = from_file(tmp_path, 'link_rate = ["wan1=30/10", "wan2=8"]\n')
    assert c.link_rate_for("wan2") == LinkRateMbps(8, 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("conect_addr = 'x:1'\n", "conect_addr: unknown client setting; did you mean "
         "connect-addr?"),
        ("wans = ['wan1']\n", "wans: unknown client setting; did you mean wan?"),
        ("listen = '0.0.0.0:1'\n", "listen: unknown client setting"),
        ("listen-addr = '0.0.0.0:1'\n", "listen-addr: not a client setting (it is a server "
         "setting)"),
        ("balance_round_robin = true\n", "balance_round_robin: unknown client setting; did "
         "you mean balance-roundrobin?"),
        ("frobnicate = 1\n", "frobnicate: unknown client setting"),
        ("config = 'other.toml'\n", "config: a config file cannot name another config file"),
    ],
)
def test_unknown_keys_are_named_with_the_nearest_valid_one(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "ratbond.toml"
    assert error_of(tmp_path, text) == f"{path}: {message}"


def test_server_file_with_client_keys(tmp_path: Path) -> None:
    path = tmp_path / "ratbond.toml"
    with pytest.raises(ConfigError) as info:
        server_from_file(tmp_path, "mux = 2\n")
    assert str(info.value) == f"{path}: mux: not a server setting (it is a client setting)"
    with pytest.raises(ConfigError) as info:
        server_from_file(tmp_path, "tun_name = 'x'\n")
    assert str(info.value) == (f"{path}: tun_name: not a server setting (the server's TUN is "
                               "always tun<tunnel-id>)")


def test_balance_flag_names_are_accepted_as_the_mode(tmp_path: Path) -> None:
    assert from_file(tmp_path, "balance_roundrobin = true\n").balance == "roundrobin"
    assert from_file(tmp_path, "balance-adaptive = true\n").balance == "adaptive"
    assert from_file(tmp_path, "balance-redundant = true\n").balance == "redundant"
    path = tmp_path / "ratbond.toml"
    assert error_of(tmp_path, "balance-roundrobin = false\n") == (
        f"{path}: balance-roundrobin: false chooses nothing; choose the mode with balance = "
        "\"adaptive\" (one of adaptive, consistent, roundrobin, redundant)")
    assert error_of(tmp_path, 'balance-roundrobin = "yes"\n') == (
        f"{path}: balance-roundrobin: 'yes' is not true or false")
    assert error_of(tmp_path, 'balance = "adaptive"\nbalance_roundrobin = true\n') == (
        f"{path}: balance_roundrobin: 'balance' in the same file sets the same setting; "
        "keep one")


def test_same_key_spelled_twice(tmp_path: Path) -> None:
    path = tmp_path / "ratbond.toml"
    assert error_of(tmp_path, "tunnel_id = 1\ntunnel-id = 2\n") == (
        f"{path}: tunnel-id: 'tunnel_id' in the same file sets the same setting; keep one")


def test_flag_overrides_and_takes_over_the_name(tmp_path: Path) -> None:
    # A bad value in the file is replaced by the flag, so it is not an error any more ...
    assert from_file(tmp_path, "mux = 99\n", "--mux=3").mux == 3
    # ... and a bad flag value is reported under the flag's name, not the file's.
    with pytest.raises(ConfigError) as info:
        from_file(tmp_path, "mux = 2\n", "--mux=99")
    assert str(info.value) == "--mux: 99 is outside the allowed range 1..16"


def test_readme_documents_every_key() -> None:
    text = README.read_text()
    section = text.split("## Configuration file", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^#?\s*([a-z][a-z0-9-]*)\s*=", section, re.MULTILINE))
    assert documented >= ALL_KEYS, sorted(ALL_KEYS - documented)
    assert documented - ALL_KEYS <= {"balance-roundrobin", "wan1", "wan2", "lte0"}


def _readme_example(tmp_path: Path, *parts: str) -> str:
    """The README's annotated file cut to ``parts``, with its two files made real."""
    section = README.read_text().split("## Configuration file", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    blocks = {block.split("\n", 1)[0]: block for block in example.split("\n\n")}
    text = "\n".join(blocks[f"# {part}"] for part in parts)
    key, token = tmp_path / "key", tmp_path / "token"
    key.write_text("k")
    token.write_text("t")
    key.chmod(0o600)
    token.chmod(0o600)
    text = text.replace("/etc/ratbond.key", str(key)).replace("/etc/ratbond.token", str(token))
    return write(tmp_path, text)


def test_readme_example_parses_and_states_the_real_defaults(tmp_path: Path) -> None:
    path = _readme_example(tmp_path, "both ends", "server only")
    documented = server_settings(_options(build_parser().parse_args(
        ["server", f"--config={path}"])), {})
    defaults = server_settings({}, {})
    for name in ServerSettings.__dataclass_fields__:
        if name not in ("secret", "http_token_file", "warnings"):
            assert getattr(documented, name) == getattr(defaults, name), name
    path = _readme_example(tmp_path, "both ends", "client only")
    c = client_settings(_options(build_parser().parse_args(["client", f"--config={path}"])), {})
    assert c.client_tun_name == "tun660" and c.mux == 1 and c.rescan_interval == 15
    assert c.backup_wans == ("lte0",) and c.link_rate_for("lte0") == LinkRateMbps(20, 20)


def test_secret_flag_overrides_the_files_secret_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("from-file")
    key.chmod(0o600)
    c = from_file(tmp_path, f'secret-file = "{key}"\n', "--secret=from-flag")
    assert c.secret is not None and c.secret.reveal() == b"from-flag"
    c = from_file(tmp_path, 'secret = "from-toml"\n', f"--secret-file={key}")
    assert c.secret is not None and c.secret.reveal() == b"from-file"
    with pytest.raises(ConfigError, match="give either --secret or --secret-file, not both"):
        from_file(tmp_path, "", "--secret=a", f"--secret-file={key}")

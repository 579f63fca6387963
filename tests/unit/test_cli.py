"""The command line: addresses, durations, new flags, help and unknown flags (exit code 2)."""

from __future__ import annotations

import pytest

from ratbond.cli import _options, build_parser, main
from ratbond.config import (
    DEFAULT_BALANCE,
    ClientSettings,
    ConfigError,
    HostPort,
    LinkRateMbps,
    client_settings,
    parse_host_port,
    server_settings,
)


def client(*flags: str) -> ClientSettings:
    return client_settings(_options(build_parser().parse_args(["client", *flags])), {})


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("flag", "text", "message"),
    [
        ("--connect-addr", "2001:db8::1",
         "--connect-addr: '2001:db8::1': an IPv6 address goes in brackets, followed by the "
         "port: [2001:db8::1]:12345"),
        ("--connect-addr", "2001:db8::1:", "--connect-addr: '2001:db8::1:': an IPv6 address "
         "goes in brackets, followed by the port: [2001:db8::1]:"),
        ("--connect-addr", "fe80::1%eth0:99", "an IPv6 address goes in brackets"),
        ("--listen-addr", "12345",
         "--listen-addr: '12345' has no host; expected HOST:PORT, e.g. 0.0.0.0:12345"),
        ("--connect-addr", "12345",
         "--connect-addr: '12345' has no host; expected HOST:PORT, e.g. vps.example.net:12345"),
        ("--connect-addr", "vps.example.net",
         "--connect-addr: 'vps.example.net' has no port; expected HOST:PORT, e.g. "
         "vps.example.net:12345"),
        ("--connect-addr", "vps.example.net:",
         "--connect-addr: 'vps.example.net:' has no port; expected HOST:PORT, e.g. "
         "vps.example.net:12345"),
        ("--connect-addr", ":12345",
         "--connect-addr: ':12345' has no host; expected HOST:PORT, e.g. vps.example.net:12345"),
        ("--connect-addr", "[2001:db8::1]",
         "--connect-addr: '[2001:db8::1]' has no port; expected [IPV6]:PORT, e.g. "
         "[2001:db8::1]:12345"),
        ("--connect-addr", "[vps]:1", "--connect-addr: 'vps' in '[vps]:1' is not an IPv6 "
         "address (only IPv6 addresses go in brackets)"),
        ("--connect-addr", "", "--connect-addr: empty; expected HOST:PORT, e.g. "
         "vps.example.net:12345"),
        ("--connect-addr", "h:0", "--connect-addr: port 0 in 'h:0' is outside 1..65535"),
        ("--connect-addr", "h:65536", "--connect-addr: port 65536 in 'h:65536' is outside "
         "1..65535"),
        ("--connect-addr", "h:-1", "--connect-addr: port '-1' in 'h:-1' is not a number"),
        ("--connect-addr", "bad/host:1", "--connect-addr: host 'bad/host' in 'bad/host:1' is "
         "not a host name or an IP address"),
    ],
)
def test_bad_addresses_say_what_is_missing(flag: str, text: str, message: str) -> None:
    default_host = "0.0.0.0" if flag == "--listen-addr" else None
    with pytest.raises(ConfigError) as info:
        parse_host_port(flag, text, default_host=default_host)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::]:12345", HostPort("::", 12345)),
        ("[2001:db8::1]:443", HostPort("2001:db8::1", 443)),
        ("0.0.0.0:12345", HostPort("0.0.0.0", 12345)),
        ("vps.example.net:1", HostPort("vps.example.net", 1)),
        ("localhost:65535", HostPort("localhost", 65535)),
        (" 192.0.2.1:99 ", HostPort("192.0.2.1", 99)),
    ],
)
def test_good_addresses_keep_working(text: str, expected: HostPort) -> None:
    assert parse_host_port("--x", text) == expected


def test_bad_address_via_main_is_exit_code_2_with_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "client", "--connect-addr=2001:db8::1")
    assert code == 2
    assert err == ("ratbond client: --connect-addr: '2001:db8::1': an IPv6 address goes in "
                   "brackets, followed by the port: [2001:db8::1]:12345\n")
    code, err = run_main(capsys, "server", "--listen-addr=12345")
    assert code == 2
    assert err == ("ratbond server: --listen-addr: '12345' has no host; expected HOST:PORT, "
                   "e.g. 0.0.0.0:12345\n")
    code, err = run_main(capsys, "server", "--http-listen-addr=8091")
    assert (code, err) == (2, "ratbond server: --http-listen-addr: '8091' has no host; "
                              "expected HOST:PORT, e.g. 127.0.0.1:8091\n")


# ----------------------------------------------------------------------------- durations


@pytest.mark.parametrize(("text", "seconds"), [("800ms", 0.8), ("2s", 2.0), ("1.5", 1.5),
                                               ("3", 3.0), (" 2.5S ", 2.5)])
def test_durations_accept_units(text: str, seconds: float) -> None:
    c = client("--connect-addr=h:1", f"--dead-after={text}", "--hello-interval=250ms",
               "--rescan-interval=1500ms")
    assert c.dead_after == pytest.approx(seconds)
    assert c.rescan_interval == pytest.approx(1.5)
    assert c.hello_interval == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--hello-interval", "fast", "--hello-interval: 'fast' is not a duration (e.g. 10, "
         "2.5s, 800ms)"),
        ("--hello-interval", "50ms", "--hello-interval: '50ms' is outside the allowed range "
         "0.1..60 s"),
        ("--dead-after", "nan", "--dead-after: 'nan' is outside the allowed range 0.5..600 s"),
        ("--rescan-interval", "2h", "--rescan-interval: '2h' is not a duration"),
    ],
)
def test_bad_durations(capsys: pytest.CaptureFixture[str], flag: str, value: str,
                       message: str) -> None:
    code, err = run_main(capsys, "client", "--connect-addr=h:1", f"{flag}={value}")
    assert code == 2
    assert message in err


# ----------------------------------------------------------------------------- new flags


def test_balance_flags_and_default() -> None:
    assert client("--connect-addr=h:1").balance == DEFAULT_BALANCE == "adaptive"
    assert client("--connect-addr=h:1", "--balance-adaptive").balance == "adaptive"
    assert client("--connect-addr=h:1", "--balance-redundant").balance == "redundant"
    assert client("--connect-addr=h:1", "--balance-roundrobin").balance == "roundrobin"
    assert client("--connect-addr=h:1", "--balance=adaptive").balance == "adaptive"
    assert server_settings(_options(build_parser().parse_args(
        ["server", "--balance-adaptive"])), {}).balance == "adaptive"


def test_two_balance_flags_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["client", "--connect-addr=h:1", "--balance-adaptive", "--balance-redundant"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_duplicate_flag() -> None:
    assert client("--connect-addr=h:1").duplicate == "none"
    assert client("--connect-addr=h:1", "--duplicate=ef").duplicate == "ef"
    assert client("--connect-addr=h:1", "--duplicate", "small").duplicate == "small"


def test_bad_duplicate_shows_the_subcommand_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["server", "--duplicate=all"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ratbond server ")
    assert "argument --duplicate: invalid choice: 'all'" in err


def test_backup_wans_and_wan_selection() -> None:
    c = client("--connect-addr=h:1", "--wan=wan*", "--backup-wan=lte*", "--backup-wan=wwan0")
    assert c.backup_wans == ("lte*", "wwan0")
    assert c.included_wans == ("wan*", "lte*", "wwan0")
    assert c.is_backup_wan("lte1") and c.is_backup_wan("wwan0")
    assert not c.is_backup_wan("wan1")
    assert client("--connect-addr=h:1", "--backup-wan=lte0").included_wans == ()  # every WAN


def test_backup_wan_cannot_be_excluded(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "client", "--connect-addr=h:1", "--backup-wan=lte0",
                         "--exclude-wan=lte0")
    assert (code, err) == (2, "ratbond client: --backup-wan: 'lte0' is also excluded by "
                              "--exclude-wan; a WAN cannot be both\n")


def test_link_rates() -> None:
    c = client("--connect-addr=h:1", "--link-rate", "wan1=30/10", "--link-rate=wan2=20",
               "--link-rate=lte*=5.5/0.5")
    assert dict(c.link_rates) == {"wan1": LinkRateMbps(30.0, 10.0),
                                  "wan2": LinkRateMbps(20.0, 20.0),
                                  "lte*": LinkRateMbps(5.5, 0.5)}
    assert c.link_rate_for("wan2") == (20.0, 20.0)
    assert c.link_rate_for("lte3") == LinkRateMbps(down_mbps=5.5, up_mbps=0.5)
    assert c.link_rate_for("eth9") is None
    with pytest.raises(TypeError):
        c.link_rates["x"] = LinkRateMbps(1, 1)  # type: ignore[index]
    assert hash(c) == hash(client("--connect-addr=h:1"))  # still hashable; rates excluded
    assert client("--connect-addr=h:1").link_rates == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("wan1", "--link-rate: 'wan1' is not IFNAME=DOWN/UP in Mbit/s (e.g. wan1=30/10, or "
         "wan1=30 for 30 both ways)"),
        ("wan1=fast", "--link-rate: 'wan1=fast': a rate must be a number of Mbit/s in "
         "0.01..100000"),
        ("wan1=30/0", "--link-rate: 'wan1=30/0': a rate must be a number of Mbit/s in "),
        ("wan1=30/10/5", "a rate must be a number of Mbit/s"),
        ("=30", "--link-rate: '' is not an interface name or glob"),
        ("wan1=inf", "a rate must be a number of Mbit/s"),
    ],
)
def test_bad_link_rates(capsys: pytest.CaptureFixture[str], value: str, message: str) -> None:
    code, err = run_main(capsys, "client", "--connect-addr=h:1", f"--link-rate={value}")
    assert code == 2
    assert message in err


def test_link_rate_given_twice(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "client", "--connect-addr=h:1", "--link-rate=wan1=3",
                         "--link-rate=wan1=4")
    assert (code, err) == (2, "ratbond client: --link-rate: wan1 is given twice\n")


# ----------------------------------------------------------------------------- help, unknown


def test_client_help_shows_connect_addr_required_and_durations(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["client", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ratbond client --connect-addr=HOST:PORT [options]\n")
    assert "required (on the command line or in --config):\n  --connect-addr HOST:PORT" in out
    for flag in ("--hello-interval DURATION", "--dead-after DURATION",
                 "--rescan-interval DURATION"):
        assert flag in out
    assert "SECONDS" not in out
    assert "1.5, 2s, 800ms" in " ".join(out.split())
    assert "--balance-consistent" in out and "(default)" in out


def test_unknown_flag_names_it_with_the_subcommand_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["server", "--listen-adr=0.0.0.0:1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ratbond server ")
    assert err.endswith("ratbond server: error: unknown flag --listen-adr (did you mean "
                        "--listen-addr?)\n")


def test_flag_of_the_other_end_says_where_it_belongs(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["server", "--mux", "3"])
    err = capsys.readouterr().err
    assert err.endswith("ratbond server: error: unknown flag --mux (it is a flag of "
                        "'ratbond client')\n")  # and '3' is not reported as a second problem


def test_stray_argument_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["client", "--connect-addr=h:1", "extra"])
    assert info.value.code == 2
    assert capsys.readouterr().err.endswith(
        "ratbond client: error: unexpected argument 'extra'\n")


def test_missing_connect_addr(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, "client")
    assert (code, err) == (2, "ratbond client: --connect-addr: required (the server's "
                              "HOST:PORT, e.g. --connect-addr=vps.example.net:12345)\n")

"""``ratbond doctor``'s verdicts without a network: formatting, exit codes, the policy
analysis on modelled kernel state, and the wording of each probe outcome (lab: e2e)."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from ratbond import doctor
from ratbond.cli import build_parser
from ratbond.config import server_settings
from ratbond.doctor import Check, exit_code, format_check, policy_checks, summary, wan_families
from ratbond.doctor_probe import ProbeResult
from ratbond.linux.policy import Route, Rule
from ratbond.linux.wan import AddrInfo, LinkInfo

V4, V6 = socket.AF_INET, socket.AF_INET6
NET = ipaddress.ip_network


def addr(index: int, text: str, prefixlen: int) -> AddrInfo:
    ip = ipaddress.ip_address(text)
    return AddrInfo(index, ip, prefixlen, V4 if ip.version == 4 else V6)


LINKS = [LinkInfo(1, "lo", True, True), LinkInfo(2, "wan1", True, True),
         LinkInfo(3, "wan2", True, True), LinkInfo(4, "tun660", True, True)]
ADDRS = [addr(1, "127.0.0.1", 8), addr(2, "10.201.1.2", 24), addr(3, "10.201.2.2", 24),
         addr(2, "fe80::1", 64), addr(4, "10.10.10.1", 30)]
ROUTES = [Route(254, NET("0.0.0.0/0"), 2, "10.201.1.1", proto=16, metric=101),
          Route(254, NET("0.0.0.0/0"), 3, "10.201.2.1", proto=16, metric=102),
          Route(100, NET("0.0.0.0/0"), 2, "10.201.1.1", "10.201.1.2"),
          Route(101, NET("0.0.0.0/0"), 3, "10.201.2.1", "10.201.2.2"),
          Route(254, NET("0.0.0.0/1"), 4, "10.10.10.2", proto=4)]
RULES = [Rule(V4, 0, 255), Rule(V4, 10000, 100, NET("10.201.1.2/32")),
         Rule(V4, 32766, 254), Rule(V4, 32767, 253)]


def test_one_line_per_check_status_first_fix_only_when_not_ok() -> None:
    assert format_check(Check("FAIL", "tun", "missing", "modprobe tun")) == \
        "FAIL tun: missing; fix: modprobe tun"
    assert format_check(Check("OK", "tun", "fine", "never shown")) == "OK   tun: fine"
    assert format_check(Check("WARN", "clock", "unknown")) == "WARN clock: unknown"
    assert "\n" not in format_check(Check("FAIL", "a", "b", "c"))


@pytest.mark.parametrize(("statuses", "code"), [
    ((), 0), (("OK", "OK"), 0), (("OK", "WARN"), 1), (("WARN", "FAIL", "OK"), 2),
    (("FAIL",), 2)])
def test_exit_code_is_the_worst_status(statuses: Sequence[str], code: int) -> None:
    checks = [Check(s, "x", "y") for s in statuses]  # type: ignore[arg-type]
    assert exit_code(checks) == code


def test_summary_counts() -> None:
    checks = [Check("OK", "a", ""), Check("WARN", "b", ""), Check("FAIL", "c", ""),
              Check("OK", "d", "")]
    assert summary(checks) == "4 checks: 2 OK, 1 warning(s), 1 failure(s)"


def test_wan_missing_its_rule_fails_with_the_exact_ip_rule_command() -> None:
    wans = wan_families(LINKS, ADDRS, ROUTES, RULES, ignore=["tun660"])
    assert [(w.name, w.version, w.tables, w.rule_tables) for w in wans] == [
        ("wan1", 4, (100,), (100,)), ("wan2", 4, (101,), ())]
    checks = policy_checks(wans, managed=False)
    assert checks[0].status == "OK" and "table 100" in checks[0].detail
    assert checks[1].status == "FAIL"
    assert checks[1].fix == "ip rule add pref 10000 from 10.201.2.2 lookup 101"


def test_fresh_router_points_at_apply_or_managed_mode() -> None:
    main_only = [r for r in ROUTES if r.table == 254]
    wans = wan_families(LINKS, ADDRS, main_only, RULES[:1], ignore=["tun660"])
    checks = policy_checks(wans, managed=False)
    assert {c.status for c in checks} == {"FAIL"}
    assert checks[0].fix.startswith("ratbond policy-routing apply --wan wan1 --wan wan2")
    assert "--manage-policy-routing" in checks[0].fix
    managed = policy_checks(wans, managed=True)
    assert {c.status for c in managed} == {"OK"}
    assert "makes it at start" in managed[0].detail


def test_globs_narrow_the_wans_and_no_wan_at_all_fails() -> None:
    assert [w.name for w in wan_families(LINKS, ADDRS, ROUTES, RULES, include=["wan2"])] == \
        ["wan2"]
    assert [w.name for w in wan_families(LINKS, ADDRS, ROUTES, RULES, exclude=["wan*"],
                                         ignore=["tun660"])] == []
    assert policy_checks([], managed=False)[0].status == "FAIL"


def test_ipv6_wan_without_rule_is_a_warning_not_a_failure() -> None:
    addrs = [*ADDRS, addr(2, "2001:db8:1::2", 64)]
    routes = [*ROUTES, Route(254, NET("::/0"), 2, "fe80::1", proto=16, metric=1024)]
    wans = wan_families(LINKS, addrs, routes, RULES, ignore=["tun660"], include=["wan1"])
    six = [c for c in policy_checks(wans, managed=False) if "IPv6" in c.name]
    assert [c.status for c in six] == ["WARN"]


@pytest.mark.parametrize(("result", "status", "words", "fix"), [
    (ProbeResult("accepted", rtt=0.012), "OK", "answered in 12 ms", ""),
    (ProbeResult("accepted", rtt=0.012, cookie=True), "OK", "cookie round", ""),
    (ProbeResult("refused", "the server refused the handshake: it runs encrypted, this client "
                 "plaintext: use the same --aes and --secret on both ends"), "FAIL",
     "reachable, but the server refused", "use the same --aes and --secret on both ends"),
    (ProbeResult("refused", "the server refused the handshake: this machine's clock differs: "
                 "fix NTP on the router", clock_skewed=True), "FAIL", "clock differs",
     "fix NTP on the router"),
    (ProbeResult("unreachable"), "FAIL", "nothing listens", "start 'ratbond server'"),
    (ProbeResult("silent"), "FAIL", "no answer within 3 s", "firewall"),
    (ProbeResult("error", "cannot bind"), "FAIL", "cannot bind", "WAN"),
])
def test_each_probe_outcome_reads_as_a_cause_and_a_fix(result: ProbeResult, status: str,
                                                       words: str, fix: str) -> None:
    check = doctor._reach_check("reach wan1 IPv4", "1.2.3.4 UDP 1 from 10.0.0.2", result, 3.0)
    assert check.status == status
    assert words in check.detail
    assert fix in check.fix


def test_mtu_and_clock_verdicts() -> None:
    assert doctor._mtu_check("mtu", 1500, 4).status == "OK"
    low = doctor._mtu_check("mtu", 1492, 6)
    assert low.status == "WARN" and "1492 < 1500" in low.detail
    assert doctor._mtu_check("mtu", None, 4).status == "WARN"
    assert doctor._clock_check(True, True, False, 300).status == "OK"
    assert doctor._clock_check(True, True, True, 300).status == "FAIL"
    assert "unknown" in doctor._clock_check(False, True, False, 300).detail
    assert doctor._clock_check(True, False, False, 300).status == "WARN"


def test_tun_check_names_the_missing_node_and_the_capability(tmp_path: Path) -> None:
    gone = doctor.check_tun(str(tmp_path / "nope"))
    assert gone.status == "FAIL" and "modprobe tun" in gone.fix
    node = tmp_path / "tun"
    node.write_text("")
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    weak = doctor.check_tun(str(node), str(status))
    assert weak.status == "FAIL" and "CAP_NET_ADMIN" in weak.detail
    status.write_text("CapEff:\t0000000000001000\n")  # bit 12
    assert doctor.check_tun(str(node), str(status)).status == "OK"


def test_nat_checks_read_the_ruleset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: "/usr/sbin/nft")
    monkeypatch.setattr("ratbond.linux.sysctl.read", lambda _key: 1)
    ruleset = ("table inet ratbond {\n chain post {\n"
               "  oifname \"eth0\" ip saddr 10.10.10.0/30 counter masquerade\n }\n}\n")

    def run(text: str) -> object:
        return lambda argv: subprocess.CompletedProcess(argv, 0, text, "")

    settings = server_settings({"nat": True}, {})
    found = doctor.nat_checks(settings, run=run(ruleset))  # type: ignore[arg-type]
    assert [c.status for c in found] == ["OK", "OK", "OK"]
    missing = doctor.nat_checks(settings, run=run(""))  # type: ignore[arg-type]
    assert missing[-1].status == "FAIL" and "not running with this config" in missing[-1].detail
    plain = doctor.nat_checks(server_settings({}, {}), run=run(""))  # type: ignore[arg-type]
    assert plain[-1].status == "WARN" and plain[-1].fix == "run the server with --nat"


def test_doctor_takes_each_roles_own_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["doctor", "client", "--connect-addr=vps:1", "--wan", "eth1",
                              "--probe-timeout", "1.5"])
    settings = doctor._settings(args)
    assert settings.connect.host == "vps" and settings.wans == ("eth1",)  # type: ignore[attr-defined]
    assert args.probe_timeout == 1.5
    server = doctor._settings(parser.parse_args(["doctor", "server", "--nat"]))
    assert server.nat  # type: ignore[attr-defined]
    with pytest.raises(SystemExit):
        parser.parse_args(["doctor", "server", "--connect-addr=vps:1"])

"""``ratbond doctor`` against the lab: all OK on a good setup, and the two mistakes users
make most -- a WAN without its rule, a firewall dropping the UDP port -- named with the fix.

Client side: the lab's client namespace made a fresh router, then ``policy-routing apply``;
the server runs ``--aes --nat`` in its namespace.  Every probe is a real handshake the real
server answers (or, with the nftables drop rule, does not).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ratbond.lab.bonded import SERVER_PORT, BondedTunnel, wait_until
from ratbond.lab.netns import Namespace
from ratbond.lab.spec import LinkSpec
from ratbond.lab.topology import Lab
from tests.e2e.test_deploy import _make_fresh_router

pytestmark = [pytest.mark.root]

DIRECT = LinkSpec(None, None, direct=True)


def _doctor(ns: Namespace, *args: str) -> tuple[int, list[str]]:
    done = ns.run(sys.executable, "-m", "ratbond", "doctor", *args, "--nosyslog",
                  "--probe-timeout=2", check=False, timeout=60)
    assert b"Traceback" not in done.stderr, done.stderr.decode()
    return done.returncode, done.stdout.decode().splitlines()


def _status(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.split(" ", 1)[-1].lstrip().startswith(name)]


def _serving(tunnel: BondedTunnel) -> bool:
    tunnel.check_alive()
    try:
        return bool(tunnel.server_status()["role"] == "server")
    except Exception:
        return False


@pytest.fixture
def lab_with_server(tmp_path: Path) -> Iterator[tuple[Lab, BondedTunnel, list[str]]]:
    secret = tmp_path / "secret"
    secret.write_text("doctor-lab-secret\n")
    secret.chmod(0o600)
    common = ["--aes", f"--secret-file={secret}"]
    lab = Lab.up([DIRECT, DIRECT])
    tunnel = BondedTunnel(lab.server, lab.client, lab.server_public_ip,
                          server_args=[*common, "--nat"], log_dir=tmp_path)
    try:
        _make_fresh_router(lab.client)
        assert lab.client.run(sys.executable, "-m", "ratbond", "policy-routing", "apply",
                              "--wan", "wan1", "--wan", "wan2").returncode == 0
        tunnel.start_server()
        wait_until(lambda: _serving(tunnel), 10, what="the server's status answers")
        client_flags = [f"--connect-addr={lab.server_public_ip}:{SERVER_PORT}", *common]
        yield lab, tunnel, client_flags
    finally:
        tunnel.stop()
        lab.down()


def test_good_setup_is_all_ok_then_a_missing_rule_and_a_blocked_port_fail(
        lab_with_server: tuple[Lab, BondedTunnel, list[str]]) -> None:
    lab, tunnel, flags = lab_with_server
    # The server end: bound by ratbond, answers this config, forwards and masquerades.
    code, lines = _doctor(lab.server, "server", f"--listen-addr=0.0.0.0:{SERVER_PORT}",
                          "--aes", flags[-1], "--nat")
    assert code == 0, "\n".join(lines)
    assert any(line.startswith("OK   answers:") for line in lines), lines
    assert any(line.startswith("OK   nat:") and "inet ratbond" in line for line in lines)

    code, lines = _doctor(lab.client, "client", *flags)
    assert code == 0, "\n".join(lines)
    for wan in ("wan1", "wan2"):
        assert _status(lines, f"policy {wan} IPv4")[0].startswith("OK"), lines
        reach = _status(lines, f"reach {wan} IPv4")[0]
        assert reach.startswith("OK") and "the server answered" in reach, reach
        assert _status(lines, f"mtu {wan} IPv4")[0].startswith("OK"), lines
    assert _status(lines, "clock")[0].startswith("OK"), lines
    assert lines[-1].endswith("0 warning(s), 0 failure(s)"), lines[-1]
    # The probes opened no session on the server: nothing was ever confirmed.
    assert tunnel.server_status()["sessions"] == []

    # A deliberately missing rule: wan2's table is there, its rule is not.
    lab.client.run("ip", "rule", "del", "pref", "10000", "from", "10.201.2.2", "lookup", "101")
    code, lines = _doctor(lab.client, "client", *flags)
    assert code == 2, "\n".join(lines)
    missing = _status(lines, "policy wan2 IPv4")[0]
    assert missing.startswith("FAIL") and "no rule 'from 10.201.2.2'" in missing, missing
    assert "fix: ip rule add pref 10000 from 10.201.2.2 lookup 101" in missing
    assert _status(lines, "policy wan1 IPv4")[0].startswith("OK")

    # A firewall on the VPS drops the port: every WAN says blocked, with the fix.
    lab.server.run("nft", "-f", "-", input_bytes=(
        b"table inet doctortest {\n chain input {\n  type filter hook input priority -10;\n"
        b"  udp dport " + str(SERVER_PORT).encode() + b" drop\n }\n}\n"))
    try:
        code, lines = _doctor(lab.client, "client", *flags)
    finally:
        lab.server.run("nft", "delete", "table", "inet", "doctortest")
    assert code == 2, "\n".join(lines)
    for wan in ("wan1", "wan2"):
        blocked = _status(lines, f"reach {wan} IPv4")[0]
        assert blocked.startswith("FAIL") and "no answer within 2 s" in blocked, blocked
        assert "firewall" in blocked
    assert _status(lines, "clock")[0].startswith("WARN")


def test_refusals_name_the_setting_that_differs(
        lab_with_server: tuple[Lab, BondedTunnel, list[str]], tmp_path: Path) -> None:
    lab, _tunnel, flags = lab_with_server
    # A narrower hop on the way (the ISP's link to the server): the path MTU drops to 1400.
    lab.isp.run("ip", "link", "set", "isp0", "mtu", "1400")
    lab.server.run("ip", "link", "set", "srv0", "mtu", "1400")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    wrong.chmod(0o600)
    code, lines = _doctor(lab.client, "client", flags[0], "--aes", f"--secret-file={wrong}",
                          "--wan", "wan1")
    assert code == 2, "\n".join(lines)
    refused = _status(lines, "reach wan1 IPv4")[0]
    assert refused.startswith("FAIL") and "reachable, but" in refused, refused
    assert "--secret differs" in refused and "fix: give both ends the same secret" in refused
    mtu = _status(lines, "mtu wan1 IPv4")[0]
    assert mtu.startswith("WARN") and "path MTU 1400 < 1480" in mtu, mtu
    assert not _status(lines, "reach wan2")  # --wan narrowed it to wan1
    # Another tunnel subnet: the server says which, and what it has itself.
    code, lines = _doctor(lab.client, "client", *flags, "--tunnel-ip=10.99.0.0/30",
                          "--wan", "wan1")
    mismatch = _status(lines, "reach wan1 IPv4")[0]
    assert code == 2 and "tunnel addressing differs" in mismatch, mismatch
    assert "fix: use the same --tunnel-ip and --tunnel-ip6 on both ends" in mismatch


def test_nothing_listening_is_told_apart_from_a_firewall(
        lab_with_server: tuple[Lab, BondedTunnel, list[str]]) -> None:
    lab, tunnel, flags = lab_with_server
    assert tunnel.stop_server() == 0
    code, lines = _doctor(lab.client, "client", *flags, "--wan", "wan1")
    assert code == 2
    closed = _status(lines, "reach wan1 IPv4")[0]
    assert closed.startswith("FAIL") and "nothing listens" in closed, closed
    code, lines = _doctor(lab.server, "server", f"--listen-addr=0.0.0.0:{SERVER_PORT}", "--aes",
                          flags[-1], "--nat")
    assert code == 2
    assert _status(lines, f"port UDP {SERVER_PORT}")[0].startswith("FAIL")

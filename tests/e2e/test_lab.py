"""The lab itself, end to end (root, network namespaces).

```
  [client] wan<i> ── [emu<i>] ── isp<i> [isp: SNAT -> 198.18.0.<10+i>] isp0 ── srv0 [server]
```

Each test builds its own lab (unique namespace prefix) and checks that teardown leaves
nothing: no namespace, no emulator process, no state under /run/ratbond-lab.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ratbond.lab.measure import iperf3, ping_rtt
from ratbond.lab.netns import list_namespaces
from ratbond.lab.spec import LinkSpec
from ratbond.lab.state import RUN_DIR, state_path
from ratbond.lab.topology import Lab, LabError
from tests.e2e.tunnel_util import LabFactory

pytestmark = pytest.mark.root


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (emulators name their lab's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_nothing_left(name: str, prefix: str) -> None:
    assert list_namespaces(prefix) == []
    assert processes_mentioning(str(RUN_DIR / name) + "/") == []
    assert not state_path(name).exists()
    assert not (RUN_DIR / name).exists()


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)


@pytest.mark.slow
def test_emulated_link_rate_and_rtt(lab: LabFactory) -> None:
    """A raw TCP flow over 20 Mbit/s, 20 ms each way gets 85-100 % and RTT 40 +- 3 ms."""
    built = lab(["20:20ms"])
    rtt = ping_rtt(built.client, built.server_public_ip, count=10, source=built.wan_address(1))
    assert rtt["received"] >= 10
    assert 37.0 <= rtt["median_ms"] <= 43.0
    result = iperf3(built.client, built.server, built.server_public_ip, seconds=4,
                    bind=built.wan_address(1))
    assert 0.85 * 20e6 <= result["bits_per_second"] <= 20e6
    counters = built.counters(1)
    assert counters["up"]["passed"] > 5000  # the data went through the emulator
    assert counters["down"]["passed"] > 1000  # and the ACKs came back through it


def test_policy_routing_layout_and_snat(lab: LabFactory) -> None:
    built = lab(["50:1ms", "direct"])
    assert built.wan_names == ["wan1", "wan2"]
    rules = built.client.output("ip", "rule", "show").splitlines()
    assert [r.split() for r in rules] == [
        ["0:", "from", "all", "lookup", "local"],
        ["10000:", "from", "10.201.1.2", "lookup", "101"],
        ["10000:", "from", "10.201.2.2", "lookup", "102"],
        ["32766:", "from", "all", "lookup", "main"],
        ["32767:", "from", "all", "lookup", "default"]]
    for i in (1, 2):
        table = built.client.output("ip", "route", "show", "table", str(100 + i))
        assert sorted(line.split() for line in table.strip().splitlines()) == sorted([
            f"default via 10.201.{i}.1 dev wan{i} proto static src 10.201.{i}.2".split(),
            f"10.201.{i}.0/24 dev wan{i} proto static scope link src 10.201.{i}.2".split()])
    assert built.client.output("ip", "route", "show", "table", "main").strip() == ""
    addrs = built.client.output("ip", "-br", "-4", "addr").split()
    assert "10.201.1.2/24" in addrs and "10.201.2.2/24" in addrs

    # The server sees each link as its own public address (the ISP's per-link SNAT).
    echo = built.server.popen(sys.executable, "-c", textwrap.dedent("""
        import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("198.18.0.100", 9999))
        print("ready", flush=True)
        for _ in range(2):
            data, addr = s.recvfrom(100)
            s.sendto(addr[0].encode(), addr)
        """), stdout=subprocess.PIPE)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == b"ready\n"
        seen = built.client.output(sys.executable, "-c", textwrap.dedent("""
            import socket
            for src in ("10.201.1.2", "10.201.2.2"):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.settimeout(5)
                s.bind((src, 0))
                s.sendto(b"who am i", ("198.18.0.100", 9999))
                print(s.recv(100).decode())
            """)).split()
    finally:
        echo.kill()
        echo.wait()
    assert seen == ["198.18.0.11", "198.18.0.12"]
    assert built.public_address(2) == "198.18.0.12"


def test_loss_blackhole_and_runtime_changes(lab: LabFactory) -> None:
    built = lab(["100:2ms"])
    link = built.link(1)
    server, source = built.server_public_ip, built.wan_address(1)
    before = ping_rtt(built.client, server, count=5, source=source, interval=0.05)
    assert before["received"] == 5 and before["median_ms"] < 10

    link.set(delay_ms=15.0)
    slower = ping_rtt(built.client, server, count=5, source=source, interval=0.05)
    assert 29.0 <= slower["median_ms"] <= 35.0

    link.set(loss=0.5, delay_ms=1.0)
    lossy = ping_rtt(built.client, server, count=40, source=source, interval=0.01)
    counters = built.counters(1)
    assert 0 < lossy["received"] < 40
    assert counters["up"]["lost"] + counters["down"]["lost"] > 0

    link.blackhole()
    dark = ping_rtt(built.client, server, count=5, source=source, interval=0.05)
    assert dark["received"] == 0
    assert built.counters(1)["up"]["blackholed"] >= 5

    link.restore()
    assert link.settings()["down"] == {"rate_mbit": 100.0, "delay_ms": 2.0, "jitter_ms": 0.0,
                                       "loss": 0.0, "queue_ms": 50.0, "blackhole": False}
    back = ping_rtt(built.client, server, count=5, source=source, interval=0.05)
    assert back["received"] == 5


def test_wan_interface_down_and_up(lab: LabFactory) -> None:
    built = lab(["direct", "50:1ms"])
    table = built.client.output("ip", "route", "show", "table", "102")
    built.set_wan_updown(2, False)
    assert "state DOWN" in built.client.output("ip", "link", "show", "wan2")
    assert built.client.output("ip", "route", "show", "table", "102").strip() == ""
    down = ping_rtt(built.client, built.server_public_ip, count=3, source=built.wan_address(2),
                    interval=0.05)
    assert down["received"] == 0
    built.set_wan_updown(2, True)
    wait_for(lambda: ping_rtt(built.client, built.server_public_ip, count=1,
                              source=built.wan_address(2))["received"] == 1)
    assert built.client.output("ip", "route", "show", "table", "102") == table
    with pytest.raises(LabError, match="direct"):
        built.link(1)
    with pytest.raises(LabError, match=r"1\.\.2"):
        built.link(3)


def test_down_is_idempotent_and_complete() -> None:
    built = Lab.up([LinkSpec.parse("10:5ms"), LinkSpec.parse("direct")])
    name, prefix = built.name, built.prefix
    assert len(list_namespaces(prefix)) == 4  # client, isp, server, emu1
    assert processes_mentioning(str(RUN_DIR / name) + "/")
    attached = Lab.attach(name)
    assert attached.is_alive()
    attached.down()  # another process's view removes everything, emulators included
    assert_nothing_left(name, prefix)
    built.down()
    assert_nothing_left(name, prefix)


def test_failed_build_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Lab] = []

    def broken(self: Lab, _i: int, _spec: LinkSpec) -> None:
        made.append(self)
        raise OSError("emulator refused to start")

    monkeypatch.setattr(Lab, "_start_emulator", broken)
    with pytest.raises(OSError, match="refused"):
        Lab.up([LinkSpec.parse("10:5ms")], name="rbtest-broken")
    assert made
    assert_nothing_left("rbtest-broken", made[0].prefix)


def test_name_taken_is_refused(lab: LabFactory) -> None:
    built = lab(["direct"])
    with pytest.raises(LabError, match="already exists"):
        Lab.up([LinkSpec.parse("direct")], name=built.name)


def _lab_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ratbond", "lab", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_sigint_mid_build_leaves_nothing() -> None:
    name = f"rbtest-int{os.getpid()}"
    child = subprocess.Popen([sys.executable, "-m", "ratbond", "lab", "up", "--name", name,
                              "--links", "10:5ms,10:5ms,10:5ms,10:5ms"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: state_path(name).exists(), timeout=10, interval=0.002)
        prefix = json.loads(state_path(name).read_text())["prefix"]
        wait_for(lambda: list_namespaces(prefix), timeout=10, interval=0.002)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert_nothing_left(name, prefix)


def _sigint_at_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_a_process_using_the_api_leaves_nothing() -> None:
    name = f"rbtest-api{os.getpid()}"
    script = textwrap.dedent(f"""
        import time
        from ratbond.lab.spec import LinkSpec
        from ratbond.lab.topology import Lab
        with Lab.up([LinkSpec.parse("10:5ms"), LinkSpec.parse("direct")], name={name!r}) as lab:
            print(lab.prefix, flush=True)
            time.sleep(60)
        """)
    # A program run from a terminal gets Ctrl-C at its default, whatever this test runner
    # inherited (CI may start it with SIGINT ignored, which children would inherit too).
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=_sigint_at_default)  # noqa: PLW1509 - no threads here
    try:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert prefix and list_namespaces(prefix)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0  # KeyboardInterrupt, after the with-block cleaned up
    assert_nothing_left(name, prefix)


def test_cli_round_trip() -> None:
    name = f"rbtest-cli{os.getpid()}"
    up = _lab_cli("up", "--name", name, "--links", "20/10:5ms,direct")
    prefix = ""
    try:
        assert up.returncode == 0, up.stderr
        prefix = json.loads(state_path(name).read_text())["prefix"]
        assert "wan1 10.201.1.2" in up.stdout

        status = _lab_cli("status", "--name", name, "--json")
        data = json.loads(status.stdout)
        assert data["alive"] and [link["spec"] for link in data["links"]] == [
            "20/10:5ms", "direct"]

        ex = _lab_cli("exec", "--name", name, "client", "--", "ip", "-br", "-4", "addr")
        assert ex.returncode == 0 and "10.201.1.2/24" in ex.stdout and "wan2" in ex.stdout

        loss = _lab_cli("link", "--name", name, "1", "--loss", "5%")
        assert loss.returncode == 0 and "loss 5%" in loss.stdout
        assert Lab.attach(name).link(1).settings()["up"]["loss"] == pytest.approx(0.05)
        hole = _lab_cli("link", "--name", name, "1", "--blackhole")
        assert "BLACKHOLE" in hole.stdout
        assert Lab.attach(name).link(1).settings()["down"]["blackhole"] is True
        restore = _lab_cli("link", "--name", name, "1", "--restore")
        assert restore.returncode == 0 and "BLACKHOLE" not in restore.stdout
        assert Lab.attach(name).link(1).settings()["up"]["loss"] == 0.0

        assert _lab_cli("wan", "--name", name, "1", "down").returncode == 0
        assert "state DOWN" in Lab.attach(name).client.output("ip", "link", "show", "wan1")
        assert _lab_cli("wan", "--name", name, "1", "up").returncode == 0

        direct = _lab_cli("link", "--name", name, "2", "--loss", "1%")
        assert direct.returncode == 1 and "direct" in direct.stderr
        text = _lab_cli("status", "--name", name)
        assert text.returncode == 0 and "wan1" in text.stdout and "tail-dropped" in text.stdout
    finally:
        down = _lab_cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(name, prefix)
    missing = _lab_cli("down", "--name", name)
    assert missing.returncode == 1 and "no lab named" in missing.stderr


@pytest.mark.parametrize("bad", ["20:fast", "0/10", "20:5ms:150%", "30,,20"])
def test_cli_bad_links_are_named(bad: str) -> None:
    result = _lab_cli("up", "--name", "rbtest-bad", "--links", bad)
    assert result.returncode == 2
    assert "argument --links" in result.stderr and repr(bad) in result.stderr
    assert not state_path("rbtest-bad").exists()

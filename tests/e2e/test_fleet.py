"""The fleet on MQTT against a real broker (Debian's mosquitto, started here, stopped by PID).

1. A lab tunnel publishing to a broker in the server namespace: a subscriber sees both
   ends' retained status and a path_down event when a link is blackholed; killing the
   broker leaves the tunnel passing traffic (ping), publishing resumes when it returns.
2. A router in ``connectaggregator`` mode gets its settings signed by ``ratbond fleet``
   from a settings directory and its tunnel comes up; a new version restarts it with the
   new settings.  The controller's ``/fleet.json`` and ``/metrics`` show the router and its
   client online, then offline once the router stops.
3. Forged settings (unsigned, signed by another key) are refused: no client is started.
   Runs on loopback, without root.

The client namespace has no route in main (the lab's "regular Linux" layout), so a /32 to
the broker via wan1 stands for the router's management route.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ratbond.lab.bonded import CLIENT_STATUS_PORT, SERVER_TUNNEL_IP, BondedTunnel, wait_until
from ratbond.lab.netns import Namespace, stop_process
from ratbond.lab.topology import isp_address, wan_address
from ratbond.mqtt.signing import SettingsDocument, sign, write_keypair
from tests.e2e.tunnel_util import LabFactory, ping

# Skipped only on a developer's machine without it: under CI a missing broker fails the run.
pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None and not os.environ.get("CI"),
                                reason="needs Debian's mosquitto (.ci/run installs it)")

BROKER_PORT = 1883

_TAP = """
import json, sys
import paho.mqtt.client as m
c = m.Client(m.CallbackAPIVersion.VERSION2)
def on_connect(c, u, f, rc, p):
    c.subscribe(sys.argv[3], qos=1)
def on_subscribe(c, u, mid, rc, p):
    print(json.dumps({"topic": "READY"}), flush=True)
def on_message(c, u, msg):
    print(json.dumps({"topic": msg.topic, "retain": bool(msg.retain),
                      "payload": msg.payload.decode(errors="replace")}), flush=True)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(sys.argv[1], int(sys.argv[2]))
c.loop_forever()
"""

_PUBLISH = """
import sys, base64
import paho.mqtt.publish as p
p.single(sys.argv[3], base64.b64decode(sys.argv[4]), qos=1, retain=True,
         hostname=sys.argv[1], port=int(sys.argv[2]))
"""


def _argv(ns: Namespace | None, *argv: str) -> list[str]:
    return ns.exec_argv(*argv) if ns is not None else list(argv)


def _popen(ns: Namespace | None, *argv: str, log: Path | None = None,
           **kwargs: Any) -> subprocess.Popen[bytes]:
    if log is not None:
        with log.open("ab") as handle:
            return subprocess.Popen(_argv(ns, *argv), start_new_session=True, stdout=handle,
                                    stderr=subprocess.STDOUT, **kwargs)
    return subprocess.Popen(_argv(ns, *argv), start_new_session=True, **kwargs)


class Broker:
    """mosquitto with a private config, no persistence; stopped by PID."""

    def __init__(self, ns: Namespace | None, port: int, tmp: Path, bind: str) -> None:
        self.ns, self.port, self.bind = ns, port, bind
        self.conf = tmp / f"mosquitto-{port}.conf"
        self.conf.write_text(f"listener {port} {bind}\nallow_anonymous true\n"
                             "persistence false\n")
        self.log = tmp / f"mosquitto-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = _popen(self.ns, "mosquitto", "-c", str(self.conf), log=self.log)
        probe = ("import socket,sys\n"
                 "s=socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)\n")
        host = "127.0.0.1"

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            return subprocess.run(_argv(self.ns, sys.executable, "-c", probe, host,
                                        str(self.port)), check=False, capture_output=True,
                                  timeout=10).returncode == 0
        wait_until(listening, 10, interval=0.1, what="mosquitto listening")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class Tap:
    """A subscriber process: every message as a dict, collected by a thread."""

    def __init__(self, ns: Namespace | None, host: str, port: int, pattern: str) -> None:
        self.proc = _popen(ns, sys.executable, "-c", _TAP, host, str(port), pattern,
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(lambda m: m["topic"] == "READY", 10, "subscriber ready")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                with self._lock:
                    self.messages.append(message)

    def wait_for(self, match: Callable[[dict[str, Any]], bool], timeout: float,
                 what: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            with self._lock:
                found[:] = [m for m in self.messages if match(m)]
            return bool(found)
        try:
            wait_until(seen, timeout, interval=0.1, what=what)
        except TimeoutError as exc:
            with self._lock:
                topics = sorted({str(m["topic"]) for m in self.messages})
            raise AssertionError(f"{exc}; topics seen: {topics}") from None
        return found[-1]

    def stop(self) -> None:
        stop_process(self.proc)


def json_of(message: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(message["payload"])
    return data


def is_status(role: str, name: str, *, paths_up: int | None = None,
              after: float = 0.0) -> Callable[[dict[str, Any]], bool]:
    def match(m: dict[str, Any]) -> bool:
        if m["topic"] != f"ratbond/{role}/{name}/status":
            return False
        body = json_of(m)
        return (body.get("published_at", 0) > after
                and (paths_up is None or body["totals"]["paths_up"] == paths_up))
    return match


def topic_is(topic: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: bool(m["topic"] == topic)


FLEET_HTTP_PORT = 8093
_GET = """
import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def fleet_get(ns: Namespace, path: str) -> str:
    """GET from the fleet controller's page in its namespace."""
    return ns.output(sys.executable, "-c", _GET, f"http://127.0.0.1:{FLEET_HTTP_PORT}{path}",
                     timeout=10)


def fleet_members(ns: Namespace) -> dict[str, dict[str, Any]]:
    doc = json.loads(fleet_get(ns, "/fleet.json"))
    return {f"{m['role']}/{m['name']}": m for m in doc["members"]}


def management_route(ns: Namespace, server_ip: str) -> None:
    """A /32 to the broker via wan1, in main: how the router reaches its fleet."""
    ns.run("ip", "route", "replace", f"{server_ip}/32", "via", isp_address(1), "dev", "wan1",
           "src", wan_address(1), "onlink")


@pytest.fixture
def cleanup() -> Iterator[list[Callable[[], object]]]:
    undo: list[Callable[[], object]] = []
    try:
        yield undo
    finally:
        for action in reversed(undo):
            with contextlib.suppress(Exception):
                action()


# --------------------------------------------------------------------------- 1. publishing


@pytest.mark.root
@pytest.mark.slow
def test_status_and_events_reach_the_broker_and_an_outage_leaves_the_tunnel_alone(
        lab: LabFactory, tmp_path: Path, cleanup: list[Callable[[], object]]) -> None:
    built = lab(["20:20ms", "20:30ms"])
    broker = Broker(built.server, BROKER_PORT, tmp_path, "0.0.0.0")
    broker.start()
    cleanup.append(broker.stop)
    management_route(built.client, built.server_public_ip)
    bonded = BondedTunnel(
        built.server, built.client, built.server_public_ip, log_dir=tmp_path,
        server_args=[f"--mqtt-broker-addr=127.0.0.1:{BROKER_PORT}", "--mqtt-name=vps"],
        client_args=[f"--mqtt-broker-addr={built.server_public_ip}:{BROKER_PORT}",
                     "--mqtt-name=site1"])
    cleanup.append(bonded.stop)
    bonded.start(paths=2)
    tap = Tap(built.server, "127.0.0.1", BROKER_PORT, "ratbond/#")
    cleanup.append(tap.stop)

    client = json_of(tap.wait_for(is_status("client", "site1", paths_up=2), 12,
                                  "client status with 2 paths up"))
    assert client["role"] == "client" and client["name"] == "site1"
    assert {p["wan"] for p in client["paths"]} == {"wan1", "wan2"}
    server = json_of(tap.wait_for(is_status("server", "vps"), 12, "server status"))
    assert server["role"] == "server" and server["totals"]["paths_up"] == 2
    for role, name in (("client", "site1"), ("server", "vps")):
        state_topic = f"ratbond/{role}/{name}/state"
        state = tap.wait_for(topic_is(state_topic), 5, f"{role} state")
        assert state["payload"] == "online" and state["retain"]

    built.link(2).blackhole()
    cut = time.monotonic()
    event = json_of(tap.wait_for(
        lambda m: m["topic"] == "ratbond/client/site1/events"
        and json_of(m)["event"] == "path_down", 8, "path_down event from the client"))
    print(f"path_down event {time.monotonic() - cut:.2f} s after the blackhole: {event}")
    assert event["reason"]
    tap.stop()

    # The broker dies: the tunnel does not notice.
    broker.stop()
    down_at = time.time()
    assert ping(built.client, SERVER_TUNNEL_IP, count=10), "tunnel stopped passing traffic"
    bonded.check_alive()
    broker.start()
    up_at = time.monotonic()
    tap = Tap(built.server, "127.0.0.1", BROKER_PORT, "ratbond/#")
    cleanup.append(tap.stop)
    tap.wait_for(is_status("client", "site1", after=down_at), 25, "client status resumed")
    tap.wait_for(is_status("server", "vps", after=down_at), 25, "server status resumed")
    print(f"publishing resumed {time.monotonic() - up_at:.1f} s after the broker returned")
    assert ping(built.client, SERVER_TUNNEL_IP, count=3)

    # A clean stop says "offline" (retained) on the state topic.
    bonded.stop_client()
    tap.wait_for(lambda m: m["topic"] == "ratbond/client/site1/state"
                 and m["payload"] == "offline", 5, "client offline after its stop")

    client_log = (tmp_path / f"{built.client.name}-client.log").read_text()
    assert client_log.count("connection lost") == 1, client_log[-2000:]
    assert client_log.count("unreachable") <= 1, client_log[-2000:]
    assert bonded.errors() == []


# --------------------------------------------------------------------------- 2. aggregator


@pytest.mark.root
@pytest.mark.slow
def test_a_router_in_connectaggregator_mode_gets_signed_settings_and_comes_up(
        lab: LabFactory, tmp_path: Path, cleanup: list[Callable[[], object]]) -> None:
    built = lab(["20:20ms"])
    broker = Broker(built.server, BROKER_PORT, tmp_path, "0.0.0.0")
    broker.start()
    cleanup.append(broker.stop)
    management_route(built.client, built.server_public_ip)
    secret = tmp_path / "tunnel.key"
    secret.write_text("fleet-lab-secret-0123456789\n")
    secret.chmod(0o600)
    bonded = BondedTunnel(built.server, built.client, built.server_public_ip, log_dir=tmp_path,
                          server_args=["--aes", f"--secret-file={secret}"])
    cleanup.append(bonded.stop)
    bonded.start_server()

    private = tmp_path / "fleet.key"
    public = write_keypair(private)
    settings_dir = tmp_path / "routers"
    settings_dir.mkdir()
    router_file = settings_dir / "lab-r1.toml"
    base = (f'connect-addr = "{built.server_public_ip}:12345"\n'
            f'http-listen-addr = "127.0.0.1:{CLIENT_STATUS_PORT}"\n'
            f'aes = true\nsecret-file = "{secret}"\nnosyslog = true\n')
    router_file.write_text(base)
    fleet = _popen(built.server, sys.executable, "-m", "ratbond", "fleet",
                   f"--mqtt-broker-addr=127.0.0.1:{BROKER_PORT}", "--mqtt-name=ctl",
                   f"--settings-dir={settings_dir}", f"--key={private}", "--nosyslog",
                   f"--http-listen-addr=127.0.0.1:{FLEET_HTTP_PORT}",
                   log=tmp_path / "fleet.log")
    cleanup.append(lambda: stop_process(fleet))
    aggregator = _popen(built.client, sys.executable, "-m", "ratbond", "connectaggregator",
                        f"--mqtt-broker-addr={built.server_public_ip}:{BROKER_PORT}",
                        f"--fleet-key={public}", "--router-id=lab-r1",
                        f"--state-dir={tmp_path / 'state'}", "--stats-interval=1",
                        "--nosyslog", log=tmp_path / "aggregator.log")
    cleanup.append(lambda: stop_process(aggregator, timeout=15))
    tap = Tap(built.server, "127.0.0.1", BROKER_PORT, "ratbond/#")
    cleanup.append(tap.stop)

    def logs() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
                         for p in (tmp_path / "aggregator.log", tmp_path / "fleet.log"))

    try:
        took = bonded.wait_paths_up(1, timeout=30)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None
    print(f"tunnel up {took:.1f} s after the aggregator started")
    hello = tap.wait_for(lambda m: m["topic"] == "ratbond/router/lab-r1/hello"
                         and json_of(m)["settings_version"] == 1, 10, "hello with v1")
    assert json_of(hello)["client"]["running"]
    tap.wait_for(is_status("client", "lab-r1", paths_up=1), 12, "the child's own status")

    # A new version: the client restarts with it (mux 2 -> two paths on the one link).
    router_file.write_text(base + "mux = 2\n")
    try:
        bonded.wait_paths_up(2, timeout=30)
    except Exception as exc:
        raise AssertionError(f"{exc}\n{logs()}") from None
    hello = tap.wait_for(lambda m: m["topic"] == "ratbond/router/lab-r1/hello"
                         and json_of(m)["settings_version"] == 2, 10, "hello with v2")
    assert json_of(hello)["client"]["starts"] == 2
    assert aggregator.poll() is None and fleet.poll() is None, logs()

    # The controller's page: the router and its client, online, with the paths and version.
    started = time.monotonic()
    seen: dict[str, dict[str, Any]] = {}

    def shown(**want: object) -> Callable[[], bool]:
        def check() -> bool:
            seen.clear()
            seen.update(fleet_members(built.server))
            router, client = seen.get("router/lab-r1", {}), seen.get("client/lab-r1", {})
            return all(router.get(k) == v for k, v in want.items()) and \
                client.get("mqtt") == want["mqtt"]
        return check
    try:
        wait_until(shown(mqtt="online", settings_version=2, client_running=True), 10,
                   interval=0.5, what="router and client online on /fleet.json")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {seen}\n{logs()}") from None
    assert seen["client/lab-r1"]["paths_known"] == 2 and not seen["router/lab-r1"]["attention"]
    metrics = fleet_get(built.server, "/metrics")
    assert 'ratbond_fleet_member_up{name="lab-r1",role="router"} 1.0' in metrics
    assert 'ratbond_fleet_paths_known{name="lab-r1",role="client"} 2.0' in metrics
    assert "lab-r1" in fleet_get(built.server, "/fleet.txt")

    # The router stops: its clean "offline" (and its client's) reaches the page.
    stop_process(aggregator, timeout=15)
    try:
        wait_until(shown(mqtt="offline"), 10, interval=0.5, what="router offline on the page")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}: {seen}\n{logs()}") from None
    assert seen["router/lab-r1"]["attention"] and seen["client/lab-r1"]["attention"]
    metrics = fleet_get(built.server, "/metrics")
    assert 'ratbond_fleet_member_up{name="lab-r1",role="router"} 0.0' in metrics
    assert 'ratbond_fleet_member_up{name="lab-r1",role="client"} 0.0' in metrics
    print(f"fleet page checks took {time.monotonic() - started:.1f} s")
    assert fleet.poll() is None, logs()
    assert "Traceback" not in logs()


# --------------------------------------------------------------------------- 3. forgeries


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_forged_settings_are_refused(tmp_path: Path,
                                     cleanup: list[Callable[[], object]]) -> None:
    port = _free_port()
    broker = Broker(None, port, tmp_path, "127.0.0.1")
    broker.start()
    cleanup.append(broker.stop)
    public = write_keypair(tmp_path / "fleet.key")
    state = tmp_path / "state"
    aggregator = _popen(None, sys.executable, "-m", "ratbond", "connectaggregator",
                        f"--mqtt-broker-addr=127.0.0.1:{port}", f"--fleet-key={public}",
                        "--router-id=r9", f"--state-dir={state}", "--stats-interval=1",
                        "--nosyslog", log=tmp_path / "aggregator.log",
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
    cleanup.append(lambda: stop_process(aggregator, timeout=10))
    tap = Tap(None, "127.0.0.1", port, "ratbond/router/r9/#")
    cleanup.append(tap.stop)
    tap.wait_for(lambda m: m["topic"] == "ratbond/router/r9/state"
                 and m["payload"] == "online", 10, "aggregator online")

    redirect = SettingsDocument("r9", 7, time.time(), time.time() + 3600,
                                {"connect-addr": "203.0.113.66:12345"})
    body = base64.b64encode(redirect.to_json()).decode()
    forgeries = [json.dumps({"document": body}).encode(),                 # unsigned
                 sign(redirect, Ed25519PrivateKey.generate())]            # another key
    for forged in forgeries:
        subprocess.run([sys.executable, "-c", _PUBLISH, "127.0.0.1", str(port),
                        "ratbond/router/r9/settings", base64.b64encode(forged).decode()],
                       check=True, timeout=10)
        time.sleep(0.3)  # retained: the second replaces the first, so one at a time
    hello = tap.wait_for(lambda m: m["topic"] == "ratbond/router/r9/hello"
                         and json_of(m)["refused"] == {"unsigned": 1, "bad-signature": 1},
                         10, "both forgeries counted as refused")
    assert json_of(hello)["settings_version"] is None
    assert not json_of(hello)["client"]["running"]
    assert aggregator.poll() is None
    assert not list(state.glob("client-*.toml")), "a forged document became a config file"
    text = (tmp_path / "aggregator.log").read_text()
    assert "settings refused (unsigned)" in text and "settings refused (bad-signature)" in text
    assert "203.0.113.66" not in text.split("refused")[0]

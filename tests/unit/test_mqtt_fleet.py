"""The fleet controller, the fleet view, the aggregator's pure parts and the TOML writer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ratbond.config import ConfigError
from ratbond.mqtt import aggregator as agg
from ratbond.mqtt.fleet import FleetController, FleetView
from ratbond.mqtt.options import MqttSettings
from ratbond.mqtt.outbox import Message
from ratbond.mqtt.signing import SettingsDocument, SettingsVerifier, sign
from ratbond.mqtt.tomlout import render

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NOW = 1_800_000_000.0
MQTT = MqttSettings("127.0.0.1", 1883, "r1", "user", "pw")


# --------------------------------------------------------------------------- TOML writer


def test_render_round_trips_through_the_toml_loader() -> None:
    settings = {"connect-addr": "192.0.2.1:12345", "mux": 2, "aes": True, "dead-after": 2.5,
                "wan": ["wan1", 'we"ird'], "link-rate": {"wan1": "30/10", "lte*": [20, 5.5]},
                "odd key": "é\n"}
    assert tomllib.loads(render(settings)) == settings


@pytest.mark.parametrize("bad", [{"k": None}, {"k": float("nan")}, {"k": [[1]]},
                                 {"k": {"a": {"b": 1}}}, {"": 1}])
def test_render_refuses_what_a_config_file_cannot_hold(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render(bad)


# --------------------------------------------------------------------------- controller


class Published(list[Message]):
    def last(self, topic: str) -> Message:
        return [m for m in self if m.topic == topic][-1]


def controller(tmp_path: Path, key: Ed25519PrivateKey, clock: list[float],
               validity: float = 3600) -> tuple[FleetController, Published]:
    sent = Published()
    return FleetController(key, tmp_path, sent.append, validity=validity,
                           wall=lambda: clock[0]), sent


def test_controller_signs_versions_and_reissues(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    clock = [NOW]
    (tmp_path / "r1.toml").write_text('connect-addr = "192.0.2.1:12345"\nmux = 2\n')
    ctl, sent = controller(tmp_path, key, clock)
    assert ctl.scan() == ["r1"]
    verifier = SettingsVerifier(key.public_key(), "r1")
    first = verifier.check(sent.last("ratbond/router/r1/settings").payload, NOW)
    assert isinstance(first, SettingsDocument) and first.version == 1
    assert first.settings == {"connect-addr": "192.0.2.1:12345", "mux": 2}
    msg = sent.last("ratbond/router/r1/settings")
    assert msg.retain and msg.qos == 1
    assert ctl.scan() == []  # nothing changed, nothing sent
    (tmp_path / "r1.toml").write_text('connect-addr = "192.0.2.1:12345"\nmux = 3\n')
    assert ctl.scan() == ["r1"]
    second = verifier.check(sent.last("ratbond/router/r1/settings").payload, NOW)
    assert isinstance(second, SettingsDocument) and second.version == 2
    clock[0] = NOW + 1801  # past half the validity: the same version, a new expiry
    assert ctl.scan() == ["r1"]
    third = verifier.check(sent.last("ratbond/router/r1/settings").payload, clock[0])
    assert isinstance(third, SettingsDocument) and third.version == 2
    assert third.expires > second.expires
    # Versions survive a controller restart.
    ctl2, sent2 = controller(tmp_path, key, clock)
    (tmp_path / "r1.toml").write_text('connect-addr = "192.0.2.1:12345"\nmux = 4\n')
    ctl2.scan()
    fourth = verifier.check(sent2.last("ratbond/router/r1/settings").payload, clock[0])
    assert isinstance(fourth, SettingsDocument) and fourth.version == 3


def test_controller_refuses_an_invalid_file_and_clears_a_removed_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "r1.toml").write_text('connect-addr = "192.0.2.1:12345"\n')
    (tmp_path / "r2.toml").write_text('connect-addr = "192.0.2.1:12345"\nmux = 99\n')
    ctl, sent = controller(tmp_path, key, [NOW])
    assert ctl.scan() == ["r1"]
    assert "r2.toml: mux: 99 is outside" in caplog.text
    caplog.clear()
    ctl.scan()
    assert "r2.toml" not in caplog.text  # one line per problem, not one per scan
    (tmp_path / "r1.toml").unlink()
    ctl.scan()
    assert sent[-1] == Message("ratbond/router/r1/settings", b"", retain=True, qos=1)


def test_controller_accepts_router_side_secret_files_and_warns_on_inline_secrets(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "r1.toml").write_text('connect-addr = "192.0.2.1:1"\naes = true\n'
                                      'secret-file = "/etc/ratbond.key"\n')
    (tmp_path / "r2.toml").write_text('connect-addr = "192.0.2.1:1"\naes = true\n'
                                      'secret = "s3cret"\n')
    ctl, _sent = controller(tmp_path, Ed25519PrivateKey.generate(), [NOW])
    assert ctl.scan() == ["r1", "r2"]
    assert "r2.toml: secret: the secret travels signed but readable" in caplog.text


# --------------------------------------------------------------------------- view


def test_view_shows_each_end_with_paths_rates_and_last_seen() -> None:
    view = FleetView()
    status = {"state": "degraded", "totals": {"paths_up": 1, "paths_known": 2,
                                              "rates": {"rx_10s": 1_250_000, "tx_10s": 125_000}}}
    view.update("ratbond/client/site7/status", json.dumps(status).encode(), NOW)
    view.update("ratbond/client/site7/state", b"online", NOW)
    view.update("ratbond/client/site7/events", b'{"event": "path_down", "path_id": 2}', NOW + 5)
    view.update("ratbond/server/vps/state", b"offline", NOW)
    view.update("ratbond/router/ab12/hello", json.dumps(
        {"settings_version": 4, "client": {"running": True}}).encode(), NOW)
    view.update("ratbond/client/site7/status", b"{not json", NOW)  # ignored, counted
    view.update("elsewhere/x/y/status", b"{}", NOW)
    rows = view.rows(NOW + 65)
    assert rows[0] == ["client", "site7", "online", "degraded", "1/2", "10.00", "1.00", "60s",
                       "path_down 2"]
    assert rows[1][:5] == ["router", "ab12", "?", "client running", "v4"]
    assert rows[2][:3] == ["server", "vps", "offline"] and rows[2][7] == "never"
    assert view.ignored == 1
    table = view.render(NOW + 65)
    assert table.splitlines()[0].split()[:3] == ["ROLE", "NAME", "MQTT"]
    assert len(table.splitlines()) == 4


# --------------------------------------------------------------------------- aggregator


def test_router_id_is_stable_and_hides_the_machine_id(tmp_path: Path) -> None:
    machine = tmp_path / "machine-id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    first = agg.router_id(machine, tmp_path / "none")
    assert first == agg.router_id(machine, tmp_path / "none") and len(first) == 16
    assert "0123456789" not in first
    net = tmp_path / "net"
    for name, mac in (("lo", "00:00:00:00:00:00"), ("eth0", "52:54:00:12:34:56")):
        (net / name).mkdir(parents=True)
        (net / name / "address").write_text(mac + "\n")
    by_mac = agg.router_id(tmp_path / "missing", net)
    assert by_mac != first and len(by_mac) == 16
    with pytest.raises(RuntimeError, match="--router-id"):
        agg.router_id(tmp_path / "missing", tmp_path / "none")


def document(version: int, **settings: object) -> SettingsDocument:
    return SettingsDocument("r1", version, NOW, NOW + 3600,
                            {"connect-addr": "192.0.2.1:12345", **settings})


def test_client_config_keeps_the_routers_own_broker(tmp_path: Path) -> None:
    doc = document(3, mux=2, mqtt_broker_addr="203.0.113.66:1883")
    path, settings = agg.write_client_config(doc, MQTT, tmp_path)
    assert path.name == "client-v3.toml" and path.stat().st_mode & 0o777 == 0o600
    assert settings.mux == 2 and settings.mqtt == MQTT
    assert "203.0.113.66" not in path.read_text()


def test_invalid_settings_name_the_document_and_leave_no_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"client-v4.toml: mux: 99 is outside"):
        agg.write_client_config(document(4, mux=99), MQTT, tmp_path)
    with pytest.raises(ConfigError, match="unknown client setting"):
        agg.write_client_config(document(5, listen_hack=1), MQTT, tmp_path)
    assert list(tmp_path.iterdir()) == []


class FakeChild(agg.ClientProcess):
    def __init__(self) -> None:
        super().__init__([])
        self.started: list[Path] = []

    def start(self, config: Path) -> None:
        self.started.append(config)
        self.config = config
        self.starts += 1


def test_aggregator_starts_restarts_and_refuses(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    key = Ed25519PrivateKey.generate()
    a = agg.Aggregator(MQTT, SettingsVerifier(key.public_key(), "r1"), tmp_path, [])
    child = FakeChild()
    a.child = child
    assert a.handle(sign(document(1), key), NOW) is True
    assert [p.name for p in child.started] == ["client-v1.toml"]
    assert a.handle(sign(document(1), key), NOW) is False  # the same again: no restart
    assert a.handle(sign(document(2, mux=2), key), NOW) is True
    assert a.handle(sign(document(1), key), NOW) is False  # older
    assert a.handle(sign(document(3), Ed25519PrivateKey.generate()), NOW) is False
    assert a.handle(sign(document(3), Ed25519PrivateKey.generate()), NOW) is False
    assert a.handle(sign(document(4, mux=99), key), NOW) is False  # invalid
    assert [p.name for p in child.started] == ["client-v1.toml", "client-v2.toml"]
    assert a.state.refused == {"older-version": 1, "bad-signature": 2}
    assert a.state.invalid == 1
    assert caplog.text.count("settings refused (bad-signature)") == 1  # rate-limited
    hello = a.hello()
    assert hello["settings_version"] == 2 and hello["refused"]["bad-signature"] == 2

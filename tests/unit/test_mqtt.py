"""MQTT publishing: the topic tree, payloads, the bounded outbox, the --mqtt-* flags."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from ratbond.cli import _options, build_parser
from ratbond.config import ConfigError, client_settings, server_settings
from ratbond.connection import (
    HandshakeStarted,
    KeysRotated,
    PathDown,
    PathUp,
    SessionEnded,
    SessionStarted,
    TunnelDown,
    TunnelUp,
)
from ratbond.mqtt import topics
from ratbond.mqtt.options import MqttSettings
from ratbond.mqtt.outbox import Message, Outbox
from ratbond.mqtt.payloads import encode, event_payload
from ratbond.mqtt.publisher import MqttPublisher


def parse(argv: list[str]) -> dict[str, object]:
    return _options(build_parser().parse_args(argv))


# --------------------------------------------------------------------------- topics


def test_topic_tree() -> None:
    assert topics.status_topic("client", "r1") == "ratbond/client/r1/status"
    assert topics.events_topic("server", "vps") == "ratbond/server/vps/events"
    assert topics.state_topic("client", "r1") == "ratbond/client/r1/state"
    assert topics.settings_topic("ab12") == "ratbond/router/ab12/settings"
    assert topics.hello_topic("ab12") == "ratbond/router/ab12/hello"
    assert topics.parse("ratbond/server/vps/status") == topics.Topic("server", "vps", "status")
    assert topics.parse("ratbond/router/ab/settings") == topics.Topic("router", "ab", "settings")


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "x\0y", "n" * 129])
def test_a_name_with_wildcards_or_separators_is_no_topic_level(bad: str) -> None:
    with pytest.raises(topics.TopicError):
        topics.status_topic("client", bad)


@pytest.mark.parametrize("text", ["ratbond/client/r1", "other/client/r1/status",
                                  "ratbond/nobody/r1/status", "ratbond/client/r1/nothing",
                                  "ratbond/client//status", "ratbond/client/r1/status/x"])
def test_foreign_topics_do_not_parse(text: str) -> None:
    assert topics.parse(text) is None


# --------------------------------------------------------------------------- payloads


def test_event_payloads() -> None:
    assert event_payload(PathUp(0xAB, 3), 100.0) == {
        "event": "path_up", "session": "000000ab", "path_id": 3, "time": 100.0}
    down = event_payload(PathDown(0xAB, 3, "silent"), 101.25)
    assert down == {"event": "path_down", "session": "000000ab", "path_id": 3,
                    "reason": "silent", "time": 101.25}
    assert event_payload(SessionStarted(1, ("192.0.2.1", 5)), 1.0)["peer"] == "192.0.2.1:5"  # type: ignore[index]
    assert event_payload(SessionEnded(1, "closed"), 1.0)["event"] == "session_down"  # type: ignore[index]
    assert event_payload(TunnelUp(), 1.0) == {"event": "tunnel_up", "time": 1.0}
    assert event_payload(TunnelDown(), 1.0) == {"event": "tunnel_down", "time": 1.0}
    assert event_payload(KeysRotated(1), 1.0) is None
    assert event_payload(HandshakeStarted(1, "start"), 1.0) is None


def test_encode_is_compact_json_and_survives_odd_values() -> None:
    assert encode({"a": [1, 2]}) == b'{"a":[1,2]}'
    assert json.loads(encode({"p": Path("/x")})) == {"p": "/x"}


# --------------------------------------------------------------------------- outbox


def test_outbox_drops_the_oldest_event_and_counts_it() -> None:
    box = Outbox(capacity=3)
    for i in range(5):
        box.put(Message("t/e", str(i).encode()))
    assert box.dropped == 2
    assert [m.payload for m in box.take(0)] == [b"2", b"3", b"4"]
    assert len(box) == 0


def test_outbox_keeps_only_the_newest_retained_value_per_topic() -> None:
    box = Outbox(capacity=2)
    box.put(Message("s", b"old", retain=True))
    box.put(Message("e", b"event"))
    box.put(Message("s", b"new", retain=True))
    taken = box.take(0)
    assert [(m.topic, m.payload) for m in taken] == [("s", b"new"), ("e", b"event")]
    assert box.dropped == 0


def test_outbox_give_back_keeps_order_and_newer_values_win() -> None:
    box = Outbox(capacity=3)
    box.put(Message("s", b"v1", retain=True))
    box.put(Message("e", b"1"))
    box.put(Message("e", b"2"))
    taken = box.take(0)
    box.put(Message("s", b"v2", retain=True))
    box.put(Message("e", b"3"))
    box.give_back(taken)
    again = box.take(0)
    assert [m.payload for m in again] == [b"v2", b"1", b"2", b"3"]


def test_outbox_give_back_respects_the_capacity() -> None:
    box = Outbox(capacity=2)
    box.put(Message("e", b"1"))
    box.put(Message("e", b"2"))
    taken = box.take(0)
    box.put(Message("e", b"3"))
    box.put(Message("e", b"4"))
    box.give_back(taken)
    assert [m.payload for m in box.take(0)] == [b"3", b"4"]
    assert box.dropped == 2


def test_outbox_take_waits_and_close_wakes_it() -> None:
    box = Outbox()
    got: list[list[Message]] = []
    thread = threading.Thread(target=lambda: got.append(box.take(5.0)))
    thread.start()
    box.close()
    thread.join(2.0)
    assert not thread.is_alive() and got == [[]]


def test_outbox_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Outbox(0)


# --------------------------------------------------------------------------- flags


def test_mqtt_flags_on_client_and_server(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("hunter2\n")
    password.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    c = client_settings(parse(["client", "--connect-addr=192.0.2.1:12345",
                               "--mqtt-broker-addr=broker.example.net:8883",
                               "--mqtt-username=r1", f"--mqtt-password-file={password}",
                               f"--mqtt-ca={ca}", "--mqtt-name=site-7"]), {})
    assert c.mqtt == MqttSettings("broker.example.net", 8883, "site-7", "r1", "hunter2", ca)
    s = server_settings(parse(["server", "--mqtt-broker-addr=127.0.0.1:1883"]), {})
    assert s.mqtt is not None and s.mqtt.port == 1883 and s.mqtt.name
    assert server_settings(parse(["server"]), {}).mqtt is None


def test_mqtt_password_is_not_in_repr() -> None:
    s = server_settings(parse(["server", "--mqtt-broker-addr=127.0.0.1:1883",
                               "--mqtt-username=u", "--mqtt-password=topsecret"]), {})
    assert s.mqtt is not None and s.mqtt.password == "topsecret"
    assert "topsecret" not in repr(s)


@pytest.mark.parametrize(("argv", "message"), [
    (["--mqtt-username=u"], "--mqtt-username: needs --mqtt-broker-addr"),
    (["--mqtt-broker-addr=broker"], "--mqtt-broker-addr: 'broker' has no port"),
    (["--mqtt-broker-addr=b:1883", "--mqtt-password=p"], "--mqtt-password: needs "
                                                           "--mqtt-username"),
    (["--mqtt-broker-addr=b:1883", "--mqtt-name=a/b"], "--mqtt-name: 'a/b' is not a name"),
    (["--mqtt-broker-addr=b:1883", "--mqtt-ca=/nonexistent"], "--mqtt-ca: '/nonexistent'"),
    (["--mqtt-broker-addr=b:1883", "--mqtt-username=u", "--mqtt-password-file=/nonexistent"],
     "--mqtt-password-file: cannot read"),
])
def test_bad_mqtt_flags_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        server_settings(parse(["server", *argv]), {})
    assert str(err.value).startswith(message), str(err.value)


def test_mqtt_keys_in_a_config_file_are_named_with_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('mqtt-broker-addr = "127.0.0.1:1883"\nmqtt_name = "bad name"\n')
    with pytest.raises(ConfigError, match=r"c.toml: mqtt_name: 'bad name'"):
        server_settings(parse(["server", f"--config={conf}"]), {})


def test_without_paho_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from ratbond.mqtt import broker

    monkeypatch.setattr(broker, "mqtt_available", lambda: False)
    with pytest.raises(ConfigError, match=r"ratbond\[mqtt\]"):
        server_settings(parse(["server", "--mqtt-broker-addr=127.0.0.1:1883"]), {})


# --------------------------------------------------------------------------- publisher


def test_publisher_queues_status_and_events_without_a_broker() -> None:
    loop = asyncio.new_event_loop()
    try:
        settings = MqttSettings("127.0.0.1", 1, "r1")
        model = {"role": "client", "state": "up", "paths": []}
        pub = MqttPublisher(settings, "client", lambda: model, loop, wall=lambda: 50.0)
        pub.publish_status()
        pub.on_event(PathDown(1, 2, "silent"))
        pub.on_event(KeysRotated(1))  # not published
        taken = pub.outbox.take(0)
    finally:
        loop.close()
    assert [(m.topic, m.retain) for m in taken] == [("ratbond/client/r1/status", True),
                                                    ("ratbond/client/r1/events", False)]
    status = json.loads(taken[0].payload)
    assert status["state"] == "up" and status["name"] == "r1" and status["published_at"] == 50.0
    assert json.loads(taken[1].payload)["event"] == "path_down"
    assert pub.link.will is not None and pub.link.will.payload == b"offline"
    assert pub.link.will.retain and pub.link.will.topic == "ratbond/client/r1/state"


def test_a_failing_status_model_is_counted_not_raised() -> None:
    loop = asyncio.new_event_loop()
    try:
        def broken() -> dict[str, object]:
            raise KeyError("x")

        pub = MqttPublisher(MqttSettings("127.0.0.1", 1, "r1"), "server", broken, loop)
        pub.publish_status()
        pub.publish_status()
    finally:
        loop.close()
    assert pub.model_failures == 2 and len(pub.outbox) == 0


def test_the_publisher_and_its_link_share_one_outbox() -> None:
    loop = asyncio.new_event_loop()
    try:
        pub = MqttPublisher(MqttSettings("127.0.0.1", 1, "r1"), "client", dict, loop)
    finally:
        loop.close()
    assert pub.link.outbox is pub.outbox


def test_stop_is_bounded_when_the_broker_never_answers() -> None:
    import socket
    import time

    from ratbond.mqtt.broker import BrokerLink

    with socket.socket() as silent:  # accepts TCP, never says CONNACK
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        link = BrokerLink(MqttSettings("127.0.0.1", port, "r1"), "t")
        link.start()
        link.outbox.put(Message("ratbond/client/r1/events", b"{}"))
        time.sleep(0.3)
        started = time.monotonic()
        link.stop(last=[Message("ratbond/client/r1/state", b"offline", retain=True)],
                  timeout=0.5)
        took = time.monotonic() - started
    assert not link.connected.is_set()
    assert took < 1.5, took

"""BondConfig validation names the field, the value and what is allowed."""

from __future__ import annotations

import pytest

from ratbond.bond import BondConfig


def test_defaults_are_valid_and_documented_values() -> None:
    config = BondConfig()
    assert (config.balance, config.hello_interval, config.dead_after) == ("adaptive", 2.0, 10.0)
    assert (config.kcp_mtu, config.kcp_interval_ms, config.snd_wnd) == (1400, 10, 1024)
    assert config.reorder_timeout is None
    assert config.queue_limit == 2048
    assert BondConfig(send_queue_limit=100).queue_limit == 100


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("balance", "random", "one of consistent, roundrobin"),
        ("kcp_engine", "rust", "one of auto, python, c"),
        ("hello_interval", 0.0, "seconds > 0"),
        ("hello_interval", float("inf"), "seconds > 0"),
        ("dead_after", -1.0, "seconds > 0"),
        ("dead_after", True, "seconds > 0"),
        ("kcp_mtu", 64, "[128, 65535]"),
        ("kcp_interval_ms", 0, "[1, 5000]"),
        ("snd_wnd", 70000, "[1, 65535]"),
        ("rcv_wnd", 1.5, "[1, 65535]"),
        ("kcp_dead_link", 0, "[1, 1000]"),
        ("send_queue_limit", 0, "[1, 1048576]"),
        ("reorder_timeout", -0.1, "None (adaptive) or seconds in [0, 60]"),
        ("reorder_timeout", "fast", "None (adaptive) or seconds in [0, 60]"),
        ("reorder_max_packets", 0, "[1, 1048576]"),
        ("reorder_max_bytes", 0, "[1, 2147483648]"),
    ],
)
def test_invalid_values_are_refused_with_field_value_and_allowed(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ValueError) as caught:
        BondConfig(**{field: value})  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"BondConfig.{field}={value!r}" in message
    assert allowed in message


def test_dead_after_must_exceed_hello_interval() -> None:
    with pytest.raises(ValueError, match=r"dead_after=2\.0.*hello_interval"):
        BondConfig(hello_interval=2.0, dead_after=2.0)
